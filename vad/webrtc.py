"""The WebRTC VAD classifier (the only webrtcvad import), with an energy gate for faint noise."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import webrtcvad

from vad.base import SAMPLE_RATE_HZ, VadConfigError, check_frame
from vad.framing import frame_dbfs
from vad.noisefloor import NoiseFloor

WEBRTC_FRAME_MS = (10, 20, 30)


class WebRtcClassifier:
    """WebRTC's GMM voice detector on 10/20/30 ms frames of 16 kHz float32 audio.

    Frames quieter than `energy_gate_dbfs` are called non-speech whatever webrtcvad says
    (it can call faint hum or hiss speech). With `snr_gate_db`, so are frames less than that
    many dB above the stream's noise floor (the quietest frame of the last `noise_window_ms`):
    webrtcvad alone calls steady loud noise speech; within `snr_hold_ms` after a frame that
    cleared that gate, voiced frames need not clear it (weak syllables inside speech).
    `aggressiveness` 0 (keeps the most speech) to 3 (rejects the most noise).

    Defaults, from `python -m bench.vad --tune` on the generated evaluation set: 20 ms
    frames and aggressiveness 2 split the fewest utterances in clean speech; without the
    SNR gate webrtcvad calls music-like tones and 5-10 dB noise speech throughout (whole
    tracks sent to Whisper, 15 s of 15 on the tones-only track); a 9 dB gate over a 3 s
    noise floor removes that (0 s sent on every noise-only track) and the 500 ms hold keeps
    weak syllables inside speech, at the price of some missed quiet speech at 10 dB SNR.
    The absolute gate (-60 dBFS) only matters for near-silent input.
    """

    def __init__(
        self,
        *,
        aggressiveness: int = 2,
        frame_ms: int = 20,
        energy_gate_dbfs: float = -60.0,
        snr_gate_db: float | None = 9.0,
        noise_window_ms: int = 3_000,
        snr_hold_ms: int = 500,
    ) -> None:
        if aggressiveness not in (0, 1, 2, 3):
            raise VadConfigError(
                f"webrtc aggressiveness must be 0, 1, 2 or 3, got {aggressiveness}"
            )
        if frame_ms not in WEBRTC_FRAME_MS:
            raise VadConfigError(f"webrtc frame_ms must be 10, 20 or 30, got {frame_ms}")
        self._vad = webrtcvad.Vad(aggressiveness)
        self._frame_ms = frame_ms
        self._frame_samples = SAMPLE_RATE_HZ * frame_ms // 1000
        self.aggressiveness = aggressiveness
        self.energy_gate_dbfs = energy_gate_dbfs
        self.snr_gate_db = snr_gate_db
        self.noise_window_ms = noise_window_ms
        self.snr_hold_ms = snr_hold_ms
        self._floor = NoiseFloor(frame_ms=frame_ms, window_ms=noise_window_ms)
        self._hold_frames = snr_hold_ms // frame_ms
        self._since_loud = self._hold_frames + 1  # frames since one cleared the SNR gate

    @property
    def frame_ms(self) -> int:
        return self._frame_ms

    def is_speech(self, frame: npt.NDArray[np.float32]) -> bool:
        check_frame(frame, self._frame_samples)
        pcm = (np.clip(frame, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        # webrtcvad adapts its noise model on every frame it sees, so it sees them all,
        # gated or not: skipping quiet frames would skew that model.
        voiced = bool(self._vad.is_speech(pcm, SAMPLE_RATE_HZ))
        energy = frame_dbfs(frame)
        floor = self._floor.update(energy)
        if energy < self.energy_gate_dbfs:
            voiced = False
        if self.snr_gate_db is None:
            return voiced
        if voiced and energy >= floor + self.snr_gate_db:
            self._since_loud = 0
            return True
        self._since_loud += 1
        return voiced and self._since_loud <= self._hold_frames
