"""Cut a stream of any-size 16 kHz mono float32 chunks into exact fixed-length frames."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from vad.base import SAMPLE_RATE_HZ, VadConfigError

SILENCE_FLOOR_DBFS = -100.0


def frame_dbfs(frame: npt.NDArray[np.float32]) -> float:
    """RMS level of a frame in dB relative to full scale (1.0), floored at -100 dBFS."""
    if frame.size == 0:
        return SILENCE_FLOOR_DBFS
    mean_square = float(np.mean(np.square(frame, dtype=np.float64)))
    if mean_square <= 1e-10:
        return SILENCE_FLOOR_DBFS
    return max(SILENCE_FLOOR_DBFS, 10.0 * math.log10(mean_square))


def frames_dbfs(audio: npt.NDArray[np.float32], frame_samples: int) -> npt.NDArray[np.float64]:
    """`frame_dbfs` of each whole `frame_samples` frame of `audio` (a partial tail is
    ignored), computed in one pass."""
    frames = len(audio) // frame_samples
    if frames == 0:
        return np.zeros(0, dtype=np.float64)
    whole = audio[: frames * frame_samples].reshape(frames, frame_samples)
    mean_square = np.mean(np.square(whole, dtype=np.float64), axis=1)
    db: npt.NDArray[np.float64] = 10.0 * np.log10(np.maximum(mean_square, 1e-10))
    return db


class Framer:
    """Any-size float32 16 kHz mono chunks in, exact frames of frame_ms out.

    The frames produced depend only on the concatenated input, never on how it was chunked:
    a remainder shorter than one frame is kept for the next `push`.
    """

    def __init__(self, frame_ms: int = 30, sample_rate_hz: int = SAMPLE_RATE_HZ) -> None:
        if frame_ms <= 0 or sample_rate_hz <= 0:
            raise VadConfigError(
                f"frame_ms ({frame_ms}) and sample_rate_hz ({sample_rate_hz}) must be positive"
            )
        if (frame_ms * sample_rate_hz) % 1000:
            raise VadConfigError(
                f"frame_ms={frame_ms} is not a whole number of samples at {sample_rate_hz} Hz; "
                "use e.g. 10, 20, 30 (webrtc) or 32 (silero)"
            )
        self._frame_ms = frame_ms
        self._frame_samples = frame_ms * sample_rate_hz // 1000
        self._pending: npt.NDArray[np.float32] = np.zeros(0, dtype=np.float32)

    @property
    def frame_ms(self) -> int:
        return self._frame_ms

    @property
    def frame_samples(self) -> int:
        return self._frame_samples

    @property
    def pending_samples(self) -> int:
        """Samples held back until the next frame is complete."""
        return int(self._pending.shape[0])

    def push(self, samples: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
        """Append samples; return every frame completed by them (the remainder is kept)."""
        chunk = np.asarray(samples, dtype=np.float32)
        if chunk.ndim != 1:
            raise VadConfigError(
                f"Framer.push takes 1-D mono samples, got shape {chunk.shape}; downmix first"
            )
        if self._pending.shape[0]:
            chunk = np.concatenate((self._pending, chunk))
        whole = chunk.shape[0] // self._frame_samples
        cut = whole * self._frame_samples
        self._pending = chunk[cut:].copy()
        if whole == 0:
            return []
        block = chunk[:cut].reshape(whole, self._frame_samples).copy()
        return list(block)

    def flush(self) -> npt.NDArray[np.float32] | None:
        """Return the held-back remainder zero-padded to one frame (None when empty)."""
        if self._pending.shape[0] == 0:
            return None
        frame = np.zeros(self._frame_samples, dtype=np.float32)
        frame[: self._pending.shape[0]] = self._pending
        self._pending = np.zeros(0, dtype=np.float32)
        return frame
