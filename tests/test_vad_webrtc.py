"""WebRTC classifier on real speech versus digital silence and faint white noise."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vad.base import FrameError, VadConfigError
from vad.framing import Framer
from vad.noisefloor import NoiseFloor
from vad.webrtc import WebRtcClassifier


def load_wav(path: Path) -> npt.NDArray[np.float32]:
    with wave.open(str(path)) as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


def voiced_fraction(classifier: WebRtcClassifier, samples: npt.NDArray[np.float32]) -> float:
    frames = Framer(classifier.frame_ms).push(samples)
    return sum(classifier.is_speech(frame) for frame in frames) / len(frames)


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
@pytest.mark.parametrize(
    "name", ["jfk_inaugural.wav", "ljspeech_LJ001-0001.wav", "cmuarctic_a0024.wav"]
)
def test_real_speech_is_mostly_voiced(audio_dir: Path, name: str, frame_ms: int) -> None:
    assert voiced_fraction(WebRtcClassifier(frame_ms=frame_ms), load_wav(audio_dir / name)) > 0.5


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_digital_silence_is_never_voiced(frame_ms: int) -> None:
    silence = np.zeros(16_000 * 3, dtype=np.float32)
    assert voiced_fraction(WebRtcClassifier(frame_ms=frame_ms), silence) == 0.0


@pytest.mark.parametrize("level_dbfs", [-70.0, -60.0, -50.0])
def test_faint_white_noise_is_not_voiced(level_dbfs: float) -> None:
    rng = np.random.default_rng(3)
    noise = (rng.standard_normal(16_000 * 5) * 10 ** (level_dbfs / 20)).astype(np.float32)
    assert voiced_fraction(WebRtcClassifier(), noise) < 0.02


def test_energy_gate_overrides_webrtc(audio_dir: Path) -> None:
    speech = load_wav(audio_dir / "jfk_inaugural.wav")
    assert voiced_fraction(WebRtcClassifier(energy_gate_dbfs=-200.0), speech) > 0.5
    assert voiced_fraction(WebRtcClassifier(energy_gate_dbfs=-5.0), speech) == 0.0


def test_bad_settings_and_frames_are_refused() -> None:
    with pytest.raises(VadConfigError, match="aggressiveness"):
        WebRtcClassifier(aggressiveness=4)
    with pytest.raises(VadConfigError, match="frame_ms"):
        WebRtcClassifier(frame_ms=32)
    with pytest.raises(FrameError, match="480 samples"):
        WebRtcClassifier(frame_ms=30).is_speech(np.zeros(320, dtype=np.float32))


def test_loud_steady_noise_is_voiced_without_the_snr_gate_and_not_with_it() -> None:
    rng = np.random.default_rng(6)
    noise = (rng.standard_normal(16_000 * 5) * 0.1).astype(np.float32)  # -20 dBFS hiss
    assert voiced_fraction(WebRtcClassifier(snr_gate_db=None), noise) > 0.9
    assert voiced_fraction(WebRtcClassifier(snr_gate_db=6.0), noise) < 0.02


def test_speech_in_noise_passes_the_snr_gate(audio_dir: Path) -> None:
    speech = load_wav(audio_dir / "jfk_inaugural.wav")
    rng = np.random.default_rng(8)
    speech_power = float(np.mean(np.square(speech[np.abs(speech) > 0.01])))
    noise = rng.standard_normal(len(speech)) * np.sqrt(speech_power / 100)  # about 20 dB SNR
    noisy = (speech + noise).astype(np.float32)
    gated = WebRtcClassifier(snr_gate_db=6.0, snr_hold_ms=300)
    assert voiced_fraction(gated, noisy) > 0.5


@settings(max_examples=100, deadline=None)
@given(
    energies=st.lists(st.floats(min_value=-100, max_value=0), min_size=1, max_size=300),
    window_frames=st.integers(min_value=1, max_value=40),
)
def test_noise_floor_is_the_window_minimum(energies: list[float], window_frames: int) -> None:
    floor = NoiseFloor(frame_ms=30, window_ms=30 * window_frames)
    for i, energy in enumerate(energies):
        assert floor.update(energy) == min(energies[max(0, i - window_frames + 1) : i + 1])
