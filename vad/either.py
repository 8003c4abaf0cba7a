"""Speech when either detector says so: WebRTC (20 ms frames) or Silero (its own 32 ms frames).

The two fail differently. WebRTC's detector, with its SNR gate, hears whispered and quiet
speech that Silero scores low (a whispered "Please close" at -40 dBFS: WebRTC voiced,
Silero under 0.25), while Silero keeps speech that WebRTC's gate drops in noise (5 dB SNR:
16 s missed against 7 s on the bench.vad set). Neither calls noise-only tracks speech,
so their union misses the least and invents no speech where neither does.

Silero's decision for a 20 ms frame is the latest one it made: its frames lag by at most
32 ms, well inside the segmenter's 300 ms pre-roll.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vad.framing import Framer
from vad.silero import SILERO_FRAME_MS, SileroClassifier
from vad.webrtc import WebRtcClassifier


class EitherClassifier:
    """WebRTC or Silero; one instance per stream (both keep stream state)."""

    def __init__(
        self,
        webrtc: WebRtcClassifier | None = None,
        silero: SileroClassifier | None = None,
    ) -> None:
        self._webrtc = webrtc or WebRtcClassifier()
        self._silero = silero or SileroClassifier()
        self._silero_frames = Framer(SILERO_FRAME_MS)
        self._silero_says = False

    @property
    def frame_ms(self) -> int:
        return self._webrtc.frame_ms

    def is_speech(self, frame: npt.NDArray[np.float32]) -> bool:
        for silero_frame in self._silero_frames.push(frame):
            self._silero_says = self._silero.is_speech(silero_frame)
        # Both see every frame: each adapts its own state (noise floor, recurrent state).
        webrtc_says = self._webrtc.is_speech(frame)
        return webrtc_says or self._silero_says
