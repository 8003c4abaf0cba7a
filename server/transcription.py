"""Transcription requests and results exchanged by sessions and the engine (plain data, numpy only).

A request is one utterance of one stream. It may carry context from the same stream: audio
that came before the utterance (`context_s` seconds at the start of `audio`) and the tokens
the engine produced for that audio (`prefix_tokens`, forced at the start of the decoder's
output). The engine then returns only what it heard after the prefix, with word times from
the start of `audio`. Token ids are opaque to sessions: they hand back what the engine gave.
A request whose language is detected drops its context when the utterance is decoded in a
language other than `expected_language` (the context's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from server.protocol import Task

SAMPLE_RATE_HZ = 16_000


@dataclass(frozen=True)
class AsrRequest:
    """One utterance (16 kHz float32 mono, at most 30 s with its context) to transcribe."""

    audio: npt.NDArray[np.float32]
    language: str | None = None
    """None: detect it (multilingual models only)."""
    hotwords: str | None = None
    final: bool = True
    """Finals use beam search and word alignment; interims are greedy and skip alignment."""
    context_s: float = 0.0
    """Seconds at the start of `audio` that came before the utterance (already transcribed)."""
    prefix_tokens: tuple[int, ...] = ()
    """The engine's tokens for the context audio, forced as the start of the output."""
    task: Task = "transcribe"
    """translate: English text whatever the language heard (multilingual models only)."""
    expected_language: str | None = None
    """With `language` None: the stream's language so far, which detection must clearly
    outweigh to be left (server.language); `prefix_tokens` are in this language."""

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE_HZ

    @property
    def utterance_s(self) -> float:
        """Seconds of the utterance itself (without its context)."""
        return max(0.0, self.duration_s - self.context_s)


@dataclass(frozen=True)
class AsrWord:
    text: str
    """As in the transcript, with its leading space and attached punctuation."""
    start_s: float
    end_s: float
    probability: float
    tokens: tuple[int, ...] = ()
    """The engine's token ids for this word (what a later request may use as its prefix)."""


@dataclass(frozen=True)
class AsrResult:
    text: str
    words: tuple[AsrWord, ...] = ()
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0
    temperature: float = 0.0
    language: str = "en"
    """The language decoded in: the request's, or the one chosen from detection."""
    language_probability: float = 1.0
    """The detector's probability of `language` (1.0 when the request named it)."""
    rejected: str | None = None
    """Why the text was judged invented (and blanked), or None."""
