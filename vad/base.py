"""The per-frame speech classifier protocol shared by the VAD backends, and the vad errors."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

SAMPLE_RATE_HZ = 16_000


class VadError(Exception):
    """Base of every error raised by the vad package."""


class VadConfigError(VadError, ValueError):
    """A VAD setting is invalid; the message names the setting and the allowed values."""


class FrameError(VadError, ValueError):
    """A frame handed to a classifier has the wrong shape or length."""


class BackendUnavailableError(VadError):
    """A classifier backend cannot run here (missing runtime or model file)."""


class SpeechClassifier(Protocol):
    """Says whether one frame of 16 kHz mono float32 audio in [-1, 1] holds speech."""

    @property
    def frame_ms(self) -> int:
        """The frame length, in milliseconds, that `is_speech` needs."""
        ...

    def is_speech(self, frame: npt.NDArray[np.float32]) -> bool:
        """Classify one frame of exactly `frame_ms` of audio."""
        ...


def check_frame(frame: npt.NDArray[np.float32], frame_samples: int) -> None:
    """Raise FrameError unless `frame` is a 1-D array of exactly `frame_samples` samples."""
    if frame.ndim != 1 or frame.shape[0] != frame_samples:
        raise FrameError(
            f"expected a 1-D frame of {frame_samples} samples, got shape {frame.shape}; "
            "cut audio with vad.framing.Framer using the classifier's frame_ms"
        )
