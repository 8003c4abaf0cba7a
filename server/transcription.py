"""Transcription requests and results exchanged by sessions and the engine (plain data, numpy only).

A request is one utterance of one stream. It may carry context from the same stream: audio
that came before the utterance (`context_s` seconds at the start of `audio`) and the tokens
the engine produced for that audio (`prefix_tokens`, forced at the start of the decoder's
output). The engine then returns only what it heard after the prefix, with word times from
the start of `audio`. Token ids are opaque to sessions: they hand back what the engine gave.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

SAMPLE_RATE_HZ = 16_000

Task = Literal["transcribe", "translate"]


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
    language_probability: float = 1.0
    rejected: str | None = None
    """Why the text was judged invented (and blanked), or None."""
