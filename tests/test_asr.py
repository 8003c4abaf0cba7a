"""The engine on real speech: output budgets, context prefixes, short interim windows, padding."""

from __future__ import annotations

import contextlib
import wave
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from faster_whisper.feature_extractor import FeatureExtractor

from server.asr import DecodeOptions, WhisperEngine
from server.transcription import AsrRequest
from tests.support.paths import SHARED_DIR

pytestmark = pytest.mark.integration  # the real tiny.en model

DEV = SHARED_DIR / "speech-dev"


def read(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> WhisperEngine:
    return WhisperEngine(model_dir, name="tiny.en", device="cpu", cpu_threads=2, workers=1)


@contextlib.contextmanager
def decoding(engine: WhisperEngine, **changes: object) -> Iterator[WhisperEngine]:
    """The engine with some decode options changed, for the duration of a block."""
    saved = engine.decode
    engine.decode = replace(saved, **changes)  # type: ignore[arg-type]
    try:
        yield engine
    finally:
        engine.decode = saved


def words(text: str) -> list[str]:
    return [w.strip(".,!?;:'\"").lower() for w in text.split()]


def test_a_final_gets_its_whole_output_budget(engine: WhisperEngine) -> None:
    """CTranslate2 ends an output at half of generate's max_length: a budget of 4 tokens a
    second plus 16 must still hold this 11.7 s sentence (35 words, about 45 tokens)."""
    audio = read(DEV / "librispeech_2412-153948-0000.wav")
    with decoding(engine, tokens_per_audio_s=4.0):
        (result,) = engine.transcribe_batch([AsrRequest(audio)])
    assert words(result.text)[-3:] == ["painful", "to", "myself"], result.text


def test_a_context_prefix_is_forced_and_only_new_words_come_back(
    engine: WhisperEngine,
) -> None:
    audio = read(DEV / "osr_harvard_list02_8k.wav")
    first_s, second_s = 3.6, 6.8  # the first sentence ends before 3.6 s, the second by 6.8 s
    (first,) = engine.transcribe_batch([AsrRequest(audio[: int(first_s * 16000)])])
    assert "sun rose" in first.text.lower()
    prefix = tuple(t for w in first.words for t in w.tokens)
    assert prefix, "words carry their tokens, for the next request's prefix"
    request = AsrRequest(audio[: int(second_s * 16000)], context_s=first_s, prefix_tokens=prefix)
    (second,) = engine.transcribe_batch([request])
    assert "sun" not in second.text.lower(), "the context is not transcribed again"
    assert "salmon" in second.text.lower(), second.text
    assert second.words and second.words[0].start_s >= first_s - 0.5, "times include the context"


def test_interims_use_a_shorter_window_with_nearly_the_same_text(engine: WhisperEngine) -> None:
    audio = read(DEV / "vctk_p240_rainbow.wav")  # 5 s
    request = AsrRequest(audio, final=False)
    assert engine.window_s(request) == 15
    assert engine.window_s(replace(request, final=True)) == 30
    long = np.concatenate([audio, audio, audio, audio])  # 20 s: window 25 s
    assert engine.window_s(AsrRequest(long, final=False)) == 25
    (interim,) = engine.transcribe_batch([request])
    with decoding(engine, interim_window_s=30):
        (reference,) = engine.transcribe_batch([request])
    shared = set(words(interim.text)) & set(words(reference.text))
    assert len(shared) >= 0.8 * len(words(reference.text)), (interim.text, reference.text)


def test_decode_options_default_to_short_interim_windows() -> None:
    assert DecodeOptions().interim_window_s == 15


@pytest.mark.parametrize("gain_db", [0.0, -25.0])
def test_the_window_past_the_audio_is_what_whisper_hears_for_silence(
    engine: WhisperEngine, gain_db: float
) -> None:
    """Whisper's front end pads the waveform with zeros, which sets the rest of the window
    to its log-mel floor. The engine's features (computed on the audio alone, then padded)
    must match that, at a normal level and for a quiet talker, and not read the padding as
    sound (0 in the normalised log-mel is 40 dB above that floor)."""
    audio = read(DEV / "vctk_p240_rainbow.wav") * np.float32(10 ** (gain_db / 20))
    features, frames = engine._features(audio)
    extractor = FeatureExtractor()
    reference = extractor(np.pad(audio, (0, 30 * 16000 - len(audio))))[..., :3000]
    assert features.shape == reference.shape
    edge = slice(frames - 2, frames + 2)  # frames that straddle the end of the audio differ
    keep = np.ones(3000, dtype=bool)
    keep[edge] = False
    assert np.abs(features[:, keep] - reference[:, keep]).max() < 1e-3
    assert features[:, frames + 2 :].max() < features[:, :frames].mean()
