"""Window packing: several short utterances share one 30 s Whisper window (pure functions).

On CPU every Whisper call pays for a full 30 s encoder window whatever the audio length,
so K utterances laid end to end with silence between them cost about one call instead of
K. Members are brought to one loudness first: Whisper skips a quiet talker (a -41 dBFS
recording) that shares a window with a loud one. The decoded window is split back by
aligned word times: each word goes to the utterance whose span holds (or is nearest to)
the word's midpoint. Whisper sometimes
stops before the end of a long window; `needs_redo` spots members whose speech got no
words (or lost its tail) so the engine can transcribe them on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vad.framing import frames_dbfs

SAMPLE_RATE_HZ = 16_000
_ENERGY_FRAME_SAMPLES = 320  # 20 ms
_SPEECH_BELOW_PEAK_DB = 30.0
_SPEECH_FLOOR_DBFS = -55.0
TARGET_LEVEL_DBFS = -20.0
MAX_GAIN_DB = 30.0
MIN_GAIN_DB = -20.0


@dataclass(frozen=True)
class Span:
    """Where one member's audio sits in the packed window, in seconds."""

    start_s: float
    end_s: float

    def distance_s(self, t_s: float) -> float:
        if t_s < self.start_s:
            return self.start_s - t_s
        return max(0.0, t_s - self.end_s)


def plan_windows(durations_s: Sequence[float], *, window_s: float, gap_s: float) -> list[list[int]]:
    """Group item indices, in order, into windows of at most `window_s` (each member
    followed by `gap_s` of silence, the last one's gap may overhang); an item too long
    to share a window gets one of its own."""
    windows: list[list[int]] = []
    current: list[int] = []
    used_s = 0.0
    for index, duration_s in enumerate(durations_s):
        if current and used_s + duration_s > window_s:
            windows.append(current)
            current, used_s = [], 0.0
        current.append(index)
        used_s += duration_s + gap_s
    if current:
        windows.append(current)
    return windows


def lay_out(
    audios: Sequence[npt.NDArray[np.float32]], gap_s: float
) -> tuple[npt.NDArray[np.float32], list[Span]]:
    """Concatenate member audio, each levelled (`levelled`), with `gap_s` of digital
    silence between members."""
    gap = np.zeros(round(gap_s * SAMPLE_RATE_HZ), dtype=np.float32)
    pieces: list[npt.NDArray[np.float32]] = []
    spans: list[Span] = []
    offset = 0
    for i, audio in enumerate(audios):
        if i:
            pieces.append(gap)
            offset += len(gap)
        pieces.append(levelled(audio))
        spans.append(Span(offset / SAMPLE_RATE_HZ, (offset + len(audio)) / SAMPLE_RATE_HZ))
        offset += len(audio)
    return np.concatenate(pieces).astype(np.float32, copy=False), spans


def assign(midpoints_s: Sequence[float], spans: Sequence[Span]) -> list[int]:
    """The member index each word (given by its midpoint) belongs to."""
    return [min(range(len(spans)), key=lambda i: spans[i].distance_s(t)) for t in midpoints_s]


def levelled(audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """`audio` scaled so that its loud frames (within 30 dB of its loudest) average
    `TARGET_LEVEL_DBFS`, by at most +30/-20 dB; silence is left alone."""
    db = frames_dbfs(audio, _ENERGY_FRAME_SAMPLES)
    if len(db) == 0 or db.max() < _SPEECH_FLOOR_DBFS:
        return audio
    loud = db[db >= db.max() - _SPEECH_BELOW_PEAK_DB]
    level_db = 10.0 * np.log10(np.mean(np.power(10.0, loud / 10.0)))
    gain_db = float(np.clip(TARGET_LEVEL_DBFS - level_db, MIN_GAIN_DB, MAX_GAIN_DB))
    scaled = audio * np.float32(10.0 ** (gain_db / 20.0))
    clipped: npt.NDArray[np.float32] = np.clip(scaled, -1.0, 1.0).astype(np.float32)
    return clipped


def speech_extent_s(audio: npt.NDArray[np.float32]) -> tuple[float, float] | None:
    """First and last 20 ms frame within 30 dB of the loudest one (and above -55 dBFS),
    in seconds from the start; None for silence."""
    db = frames_dbfs(audio, _ENERGY_FRAME_SAMPLES)
    if len(db) == 0:
        return None
    threshold = max(float(db.max()) - _SPEECH_BELOW_PEAK_DB, _SPEECH_FLOOR_DBFS)
    loud = np.flatnonzero(db >= threshold)
    if len(loud) == 0:
        return None
    frame_s = _ENERGY_FRAME_SAMPLES / SAMPLE_RATE_HZ
    return float(loud[0]) * frame_s, float(loud[-1] + 1) * frame_s


def needs_redo(
    word_times_s: Sequence[tuple[float, float]],
    extent_s: tuple[float, float] | None,
    *,
    min_speech_s: float = 1.0,
    max_missing_s: float = 1.5,
    max_word_s: float = 2.5,
) -> bool:
    """Whether a member's share of a packed window looks wrong: a word stretched over
    `max_word_s` (the aligner spreading text over speech the decoder skipped; aligned words
    last at most 1.6 s in packed shared audio), or at least `min_speech_s` of loud audio
    with no words, or words that end (or start) more than `max_missing_s` inside that
    loud stretch. Times are relative to the member's audio."""
    if any(end_s - start_s > max_word_s for start_s, end_s in word_times_s):
        return True
    if extent_s is None or extent_s[1] - extent_s[0] < min_speech_s:
        return False
    if not word_times_s:
        return True
    first_start_s = word_times_s[0][0]
    last_end_s = word_times_s[-1][1]
    return last_end_s < extent_s[1] - max_missing_s or first_start_s > extent_s[0] + max_missing_s
