"""Speaker diarization for live streams: a numpy speaker encoder and online speaker assignment.

Modules: `weights` (read a PyTorch checkpoint without torch), `encoder` (resemblyzer's
VoiceEncoder in numpy: mel spectrogram, 3-layer LSTM, embeddings of 1.6 s windows) and
`cluster` (one session's streaming speaker labels for the words of each final utterance).

Errors:

    SpeakerError                  anything this package raises on purpose
    ├── WeightsError              the weight file is missing, malformed or not allowed
    └── SpeakerConfigError        a setting is out of range (also a ValueError)
"""

from __future__ import annotations


class SpeakerError(Exception):
    """Base of the errors raised on purpose by `server.speakers`."""


class WeightsError(SpeakerError):
    """The speaker model's weight file cannot be read, or holds something it must not."""


class SpeakerConfigError(SpeakerError, ValueError):
    """A speaker setting is out of its valid range."""
