"""Pure utterance segmenter: per-frame speech decisions in, SpeechStarted / SpeechEnded out.

Rules, applied to one frame at a time (frame indices count frames pushed since creation):

* idle -> speech: when the current frame is voiced and at least `start_ratio` of the last
  `start_window_ms` of frames are voiced. `onset_frame` is the first voiced frame of that
  window; `start_frame` is back-dated by `pre_roll_ms` (never before the end of the previous
  utterance or a flush, never below 0).
* speech -> idle, "endpoint": trailing non-voiced frames reach `endpointing_ms`;
  `end_frame` (exclusive) is the frame after the one where that happened.
* speech -> speech, "max_length": the utterance reached `max_utterance_ms`; it is cut at
  the quietest point of the last `cut_search_ms` (low energy, not voiced) and, when the
  audio after the cut holds voiced frames, a new utterance starts exactly at the cut.
* "flush": `flush()` ends the open utterance at the current frame.

Every SpeechStarted is followed by exactly one SpeechEnded before the next SpeechStarted.
An utterance with fewer than `min_speech_ms` of voiced frames ends with `discard=True`
(a click or a cough, nothing to transcribe). Work per frame is O(1) (a cut scans a bounded
window once per `max_utterance_ms`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

from vad.base import VadConfigError

EndReason = Literal["endpoint", "max_length", "flush"]

# A voiced frame counts as this many dB louder when choosing where to cut a long utterance.
_VOICED_CUT_PENALTY_DB = 40.0
# Frames on each side of a candidate cut that are averaged to rate its quietness.
_CUT_NEIGHBOURHOOD_FRAMES = 2


@dataclass(frozen=True)
class SegmenterConfig:
    """Segmenter settings; durations are rounded up to whole frames.

    Defaults, from `python -m bench.vad --tune`: 300 ms of pre-roll keeps clipped onsets p95
    at 0-20 ms even at 10 dB SNR (150 ms clips more in noise); a 150 ms onset window with
    60% voiced frames starts no utterance on most clicks (fewer false SpeechStarted);
    utterances with under 150 ms of voiced frames are dropped (clicks and knocks: 0 s sent
    on the clicks track, where 90 ms lets some through and 250 ms loses short words).
    """

    frame_ms: int = 30
    pre_roll_ms: int = 300
    start_window_ms: int = 150
    start_ratio: float = 0.6
    endpointing_ms: int | None = 500
    max_utterance_ms: int = 25_000
    cut_search_ms: int = 3_000
    min_speech_ms: int = 150
    hangover_ms: int = 150

    def __post_init__(self) -> None:
        if self.frame_ms <= 0:
            raise VadConfigError(f"frame_ms must be positive, got {self.frame_ms}")
        for name in ("pre_roll_ms", "min_speech_ms", "hangover_ms"):
            if getattr(self, name) < 0:
                raise VadConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.start_window_ms < self.frame_ms:
            raise VadConfigError(
                f"start_window_ms ({self.start_window_ms}) must be at least one frame "
                f"({self.frame_ms} ms)"
            )
        if not 0.0 < self.start_ratio <= 1.0:
            raise VadConfigError(f"start_ratio must be in (0, 1], got {self.start_ratio}")
        if self.endpointing_ms is not None and self.endpointing_ms < 0:
            raise VadConfigError(
                f"endpointing_ms must be >= 0 or None (off), got {self.endpointing_ms}"
            )
        if self.cut_search_ms < self.frame_ms:
            raise VadConfigError(f"cut_search_ms ({self.cut_search_ms}) must be at least one frame")
        if self.max_utterance_ms <= self.cut_search_ms:
            raise VadConfigError(
                f"max_utterance_ms ({self.max_utterance_ms}) must be longer than "
                f"cut_search_ms ({self.cut_search_ms})"
            )

    def frames(self, duration_ms: int) -> int:
        """Whole frames covering `duration_ms` (rounded up)."""
        return math.ceil(duration_ms / self.frame_ms)

    @property
    def max_backdate_frames(self) -> int:
        """How far before the current frame a SpeechStarted's start_frame can lie.

        A caller that keeps only recent audio must keep at least this many frames (plus
        the current one) while idle. After a max-length cut the new start lies inside the
        open utterance, whose audio the caller keeps anyway.
        """
        return self.frames(self.start_window_ms) + self.frames(self.pre_roll_ms)


@dataclass(frozen=True)
class SpeechStarted:
    """An utterance began: its audio starts at `start_frame` (pre-roll included)."""

    start_frame: int
    onset_frame: int


@dataclass(frozen=True)
class SpeechEnded:
    """The open utterance ended; its span is [start_frame, end_frame).

    `speech_end_frame` (<= end_frame) is where its voiced audio plus `hangover_ms` ends:
    the rest up to `end_frame` is the trailing silence that triggered endpointing.
    """

    end_frame: int
    reason: EndReason
    voiced_ms: int
    discard: bool
    start_frame: int
    speech_end_frame: int


SegmentEvent = SpeechStarted | SpeechEnded


class Segmenter:
    """Turns one (is_speech, energy_dbfs) pair per frame into utterance events."""

    def __init__(self, config: SegmenterConfig) -> None:
        self._config = config
        self._start_window_frames = config.frames(config.start_window_ms)
        self._start_needed = max(1, math.ceil(config.start_ratio * self._start_window_frames))
        self._pre_roll_frames = config.frames(config.pre_roll_ms)
        self._endpoint_frames = (
            None if config.endpointing_ms is None else max(1, config.frames(config.endpointing_ms))
        )
        self._max_frames = max(2, config.frames(config.max_utterance_ms))
        self._hangover_frames = config.frames(config.hangover_ms)
        # (is_speech, energy_dbfs) of the most recent frames, for choosing a cut point.
        self._recent: deque[tuple[bool, float]] = deque(maxlen=config.frames(config.cut_search_ms))
        self._window: deque[bool] = deque(maxlen=self._start_window_frames)
        self._frames_seen = 0
        self._floor = 0
        self._in_speech = False
        self._start = 0
        self._voiced = 0
        self._silence_run = 0
        self._last_voiced = 0

    @property
    def config(self) -> SegmenterConfig:
        return self._config

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def frames_seen(self) -> int:
        return self._frames_seen

    def push(self, is_speech: bool, energy_dbfs: float) -> list[SegmentEvent]:
        """Feed the next frame's decision and level; return the events it causes, in order."""
        index = self._frames_seen
        self._frames_seen += 1
        self._recent.append((is_speech, energy_dbfs))
        if not self._in_speech:
            return self._push_idle(index, is_speech)
        if is_speech:
            self._voiced += 1
            self._silence_run = 0
            self._last_voiced = index
        else:
            self._silence_run += 1
        if self._endpoint_frames is not None and self._silence_run >= self._endpoint_frames:
            return [self._end(self._frames_seen, "endpoint")]
        if self._frames_seen - self._start >= self._max_frames:
            return self._cut()
        return []

    def set_endpointing_ms(self, endpointing_ms: int | None) -> None:
        """Change the trailing silence that ends utterances, from the next frame on.

        For adaptive endpointing: a caller that sees the open utterance's text end with a
        complete sentence may shorten it, and restore the configured value afterwards
        (`config.endpointing_ms`). Silence already counted still counts, so a shorter value
        can end the utterance on the very next frame.
        """
        if endpointing_ms is not None and endpointing_ms < 0:
            raise VadConfigError(f"endpointing_ms must be >= 0 or None, got {endpointing_ms}")
        self._endpoint_frames = (
            None if endpointing_ms is None else max(1, self._config.frames(endpointing_ms))
        )

    def flush(self) -> SpeechEnded | None:
        """End the open utterance at the current frame (Finalize / CloseStream)."""
        self._window.clear()
        self._floor = self._frames_seen
        if not self._in_speech:
            return None
        return self._end(self._frames_seen, "flush")

    def _push_idle(self, index: int, is_speech: bool) -> list[SegmentEvent]:
        self._window.append(is_speech)
        if not is_speech or sum(self._window) < self._start_needed:
            return []
        first_in_window = index - len(self._window) + 1
        onset = first_in_window + list(self._window).index(True)
        start = max(self._floor, onset - self._pre_roll_frames, 0)
        self._begin(start, voiced=sum(self._window), last_voiced=index, silence_run=0)
        return [SpeechStarted(start_frame=start, onset_frame=onset)]

    def _begin(self, start: int, *, voiced: int, last_voiced: int, silence_run: int) -> None:
        self._in_speech = True
        self._start = start
        self._voiced = voiced
        self._last_voiced = last_voiced
        self._silence_run = silence_run
        self._window.clear()

    def _end(self, end_frame: int, reason: EndReason) -> SpeechEnded:
        self._in_speech = False
        self._floor = end_frame
        self._window.clear()
        return self._ended(end_frame, reason, self._voiced, self._last_voiced)

    def _ended(
        self, end_frame: int, reason: EndReason, voiced: int, last_voiced: int
    ) -> SpeechEnded:
        voiced_ms = voiced * self._config.frame_ms
        speech_end = min(end_frame, max(self._start, last_voiced + 1 + self._hangover_frames))
        return SpeechEnded(
            end_frame=end_frame,
            reason=reason,
            voiced_ms=voiced_ms,
            discard=voiced_ms < self._config.min_speech_ms,
            start_frame=self._start,
            speech_end_frame=speech_end,
        )

    def _cut(self) -> list[SegmentEvent]:
        """Cut the over-long utterance at the quietest recent point; continue after it."""
        recent = list(self._recent)
        first = self._frames_seen - len(recent)
        cut = self._quietest_boundary(recent, first)
        tail = recent[cut - first :]
        tail_voiced = [cut + i for i, (speech, _) in enumerate(tail) if speech]
        head_last_voiced = self._last_voiced
        if tail_voiced:
            head_last_voiced = max(
                (first + i for i, (speech, _) in enumerate(recent[: cut - first]) if speech),
                default=max(self._start, first - 1),
            )
        ended = self._ended(cut, "max_length", self._voiced - len(tail_voiced), head_last_voiced)
        self._floor = cut
        if not tail_voiced:
            self._in_speech = False
            self._window.clear()
            return [ended]
        self._begin(
            cut,
            voiced=len(tail_voiced),
            last_voiced=tail_voiced[-1],
            silence_run=self._frames_seen - 1 - tail_voiced[-1],
        )
        return [ended, SpeechStarted(start_frame=cut, onset_frame=tail_voiced[0])]

    def _quietest_boundary(self, recent: list[tuple[bool, float]], first: int) -> int:
        """The frame index (in `recent`, offset by `first`) that should start the next piece."""
        costs = [energy + (_VOICED_CUT_PENALTY_DB if speech else 0.0) for speech, energy in recent]
        best_cost = math.inf
        best = len(recent) - 1
        lowest = max(1, self._start + 1 - first)
        for i in range(lowest, len(recent)):
            lo = max(0, i - _CUT_NEIGHBOURHOOD_FRAMES)
            hi = min(len(recent), i + _CUT_NEIGHBOURHOOD_FRAMES)
            cost = sum(costs[lo:hi]) / (hi - lo)
            if cost <= best_cost:
                best_cost = cost
                best = i
        return first + best
