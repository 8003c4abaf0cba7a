"""Silero classifier (faster-whisper's bundled ONNX model) on real speech, silence and noise."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from vad.base import FrameError, VadConfigError
from vad.framing import Framer
from vad.silero import SileroClassifier, bundled_model_path


def load_wav(path: Path) -> npt.NDArray[np.float32]:
    with wave.open(str(path)) as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


def voiced_fraction(classifier: SileroClassifier, samples: npt.NDArray[np.float32]) -> float:
    frames = Framer(classifier.frame_ms).push(samples)
    return sum(classifier.is_speech(frame) for frame in frames) / len(frames)


def test_the_bundled_model_is_found() -> None:
    assert bundled_model_path().name.startswith("silero_vad")
    assert SileroClassifier().frame_ms == 32


@pytest.mark.parametrize(
    "name", ["jfk_inaugural.wav", "ljspeech_LJ001-0001.wav", "timit_LDC93S1.wav"]
)
def test_real_speech_is_mostly_voiced(audio_dir: Path, name: str) -> None:
    assert voiced_fraction(SileroClassifier(), load_wav(audio_dir / name)) > 0.5


def test_silence_and_noise_are_not_voiced() -> None:
    rng = np.random.default_rng(5)
    silence = np.zeros(16_000 * 3, dtype=np.float32)
    white = (rng.standard_normal(16_000 * 5) * 0.03).astype(np.float32)
    assert voiced_fraction(SileroClassifier(), silence) == 0.0
    assert voiced_fraction(SileroClassifier(), white) < 0.02


def test_state_is_carried_between_frames(audio_dir: Path) -> None:
    """Probabilities of a frame depend on what came before it: the state is really kept."""
    speech = load_wav(audio_dir / "jfk_inaugural.wav")
    frames = Framer(32).push(speech)
    warm = SileroClassifier()
    for frame in frames[:100]:
        warm.probability(frame)
    fresh = SileroClassifier()
    later = frames[100:110]
    assert [round(warm.probability(f), 4) for f in later] != [
        round(fresh.probability(f), 4) for f in later
    ]


def test_two_streams_do_not_share_state(audio_dir: Path) -> None:
    speech = load_wav(audio_dir / "jfk_inaugural.wav")
    frames = Framer(32).push(speech)[:60]
    alone = [SileroClassifier().probability(f) for f in frames[:1]]
    first, second = SileroClassifier(), SileroClassifier()
    together = []
    for frame in frames:
        together.append(first.probability(frame))
        second.probability(np.zeros(512, dtype=np.float32))
    assert together[0] == pytest.approx(alone[0])
    solo = SileroClassifier()
    assert together == pytest.approx([solo.probability(f) for f in frames])


def test_bad_settings_and_frames_are_refused() -> None:
    with pytest.raises(VadConfigError, match="threshold"):
        SileroClassifier(threshold=1.5)
    with pytest.raises(FrameError, match="512 samples"):
        SileroClassifier().is_speech(np.zeros(480, dtype=np.float32))
