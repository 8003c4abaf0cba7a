"""Random-weight CTranslate2 Whisper models of any shape (128 mel bins too): tests, benchmarks.

What such a model writes is meaningless; its shapes, config and cost are the architecture's:
faster-whisper loads it, computes `n_mels` features (from preprocessor_config.json), encodes,
generates, aligns and detects languages with it. Weights are seeded and drawn with a standard
deviation of 0.5/sqrt(fan_in), so activations stay finite in float16 through 32 layers.

Such output is rejected by any hallucination filter (its log probability is about -10 a
token). With `answer` (one vocabulary token, e.g. "Ġhello") the decoder says that token and
then stops, confidently, whatever it hears: the token's and end-of-text's embeddings point
along two unit directions that the final layer norm's bias favours (end-of-text 30, the
answer 25 logits above the rest; a first step may not end, so the answer comes first).

The vocabulary, tokenizer and special token ids are those of the multilingual Whisper base
(`python -m cache fetch whisper-base`): 51,865 tokens. large-v3 and its descendants have
51,866 (`<|yue|>` added), one output row more; nothing that matters for cost changes.

    python -m tests.support.random_whisper OUT_DIR --preset large-v3-turbo [--tokenizer-dir BASE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from ctranslate2.specs import WhisperSpec, attention_spec, common_spec, transformer_spec

from cache.registry import fetch
from cache.store import default_cache_dir

ENCODER_POSITIONS = 1500  # 3000 mel frames of 10 ms after the stride-2 convolution
DECODER_POSITIONS = 448
FFN_FACTOR = 4
WEIGHT_GAIN = 0.5
EMBEDDING_STD = 0.02
SAMPLE_RATE_HZ = 16_000
HOP_LENGTH = 160
N_FFT = 400
CHUNK_LENGTH_S = 30
EOT = "<|endoftext|>"
EOT_LOGIT = 30.0
ANSWER_LOGIT = 25.0

Array = npt.NDArray[np.float16]


@dataclass(frozen=True)
class WhisperShape:
    """The architecture of a Whisper model: what `build_random_whisper` needs besides a seed."""

    n_mels: int
    encoder_layers: int
    encoder_heads: int
    decoder_layers: int
    decoder_heads: int
    d_model: int

    def build(
        self, out_dir: Path, *, seed: int, tokenizer_dir: Path, answer: str | None = None
    ) -> Path:
        return build_random_whisper(
            out_dir,
            **dataclasses.asdict(self),
            seed=seed,
            tokenizer_dir=tokenizer_dir,
            answer=answer,
        )


# For CI: builds in about a second, runs on any CPU.
TINY_128 = WhisperShape(
    n_mels=128, encoder_layers=2, encoder_heads=2, decoder_layers=2, decoder_heads=2, d_model=64
)
# large-v3-turbo's architecture (809 M parameters, 1.6 GB in float16): for the GPU machine.
LARGE_V3_TURBO = WhisperShape(
    n_mels=128,
    encoder_layers=32,
    encoder_heads=20,
    decoder_layers=4,
    decoder_heads=20,
    d_model=1280,
)
PRESETS = {"tiny-128": TINY_128, "large-v3-turbo": LARGE_V3_TURBO}


def build_random_whisper(
    out_dir: Path,
    *,
    n_mels: int,
    encoder_layers: int,
    encoder_heads: int,
    decoder_layers: int,
    decoder_heads: int,
    d_model: int,
    seed: int,
    tokenizer_dir: Path,
    answer: str | None = None,
) -> Path:
    """Write a faster-whisper model directory with random weights into `out_dir`; returns it.

    `tokenizer_dir` is a multilingual faster-whisper model directory (whisper-base) whose
    vocabulary.json, tokenizer.json and config.json token ids are reused. `answer`: the
    vocabulary token the decoder always says (see the module docstring).
    """
    if d_model % encoder_heads or d_model % decoder_heads:
        raise ValueError(f"d_model {d_model} is not divisible by the number of heads")
    tokens: list[str] = json.loads((tokenizer_dir / "vocabulary.json").read_text("utf-8"))
    reference = json.loads((tokenizer_dir / "config.json").read_text("utf-8"))
    weights = _Weights(np.random.default_rng(seed))

    spec = WhisperSpec(encoder_layers, encoder_heads, decoder_layers, decoder_heads)
    encoder = spec.encoder
    _set_linear(encoder.conv1, weights.matrix((d_model, n_mels, 3), fan_in=n_mels * 3))
    _set_linear(encoder.conv2, weights.matrix((d_model, d_model, 3), fan_in=d_model * 3))
    encoder.position_encodings.encodings = _sinusoids(ENCODER_POSITIONS, d_model)
    _set_layer_norm(encoder.layer_norm, d_model)
    for layer in encoder.layer:
        _set_self_attention(layer.self_attention, weights, d_model)
        _set_ffn(layer.ffn, weights, d_model)

    decoder = spec.decoder
    embeddings = weights.normal((len(tokens), d_model), EMBEDDING_STD)
    decoder.embeddings.weight = embeddings
    decoder.position_encodings.encodings = weights.normal((DECODER_POSITIONS, d_model), 0.01)
    _set_layer_norm(decoder.layer_norm, d_model)
    if answer is not None:
        _make_answer(decoder.layer_norm, embeddings, tokens.index(answer), tokens.index(EOT))
    for layer in decoder.layer:
        _set_self_attention(layer.self_attention, weights, d_model)
        cross = layer.attention
        _set_layer_norm(cross.layer_norm, d_model)
        _set_linear(cross.linear[0], weights.matrix((d_model, d_model), fan_in=d_model))
        _set_linear(cross.linear[1], weights.matrix((2 * d_model, d_model), fan_in=d_model))
        _set_linear(cross.linear[2], weights.matrix((d_model, d_model), fan_in=d_model))
        _set_ffn(layer.ffn, weights, d_model)
    decoder.projection.weight = embeddings  # tied, as in Whisper; saved once (aliased)

    spec.register_vocabulary(tokens)
    spec.register_file(str(tokenizer_dir / "tokenizer.json"))
    config = spec.config
    config.suppress_ids = reference["suppress_ids"]
    config.suppress_ids_begin = reference["suppress_ids_begin"]
    config.lang_ids = reference["lang_ids"]
    config.alignment_heads = [
        [layer, head]
        for layer in range(decoder_layers // 2, decoder_layers)
        for head in range(decoder_heads)
    ]
    spec.validate()
    spec.optimize()
    out_dir.mkdir(parents=True, exist_ok=True)
    spec.save(str(out_dir))
    preprocessor = {
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": n_mels,
        "sampling_rate": SAMPLE_RATE_HZ,
        "hop_length": HOP_LENGTH,
        "n_fft": N_FFT,
        "chunk_length": CHUNK_LENGTH_S,
    }
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    return out_dir


def _make_answer(
    final_norm: common_spec.LayerNormSpec, embeddings: Array, answer: int, eot: int
) -> None:
    """Bias the output so that `answer` comes first, then end-of-text."""
    d_model = embeddings.shape[1]
    eot_direction = np.zeros(d_model, dtype=np.float16)
    eot_direction[0] = 1.0
    answer_direction = np.zeros(d_model, dtype=np.float16)
    answer_direction[1] = 1.0
    embeddings[eot] = eot_direction
    embeddings[answer] = answer_direction
    final_norm.beta = (EOT_LOGIT * eot_direction + ANSWER_LOGIT * answer_direction).astype(
        np.float16
    )


class _Weights:
    """Seeded float16 random arrays."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng

    def normal(self, shape: tuple[int, ...], std: float) -> Array:
        return (self._rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float16)

    def matrix(self, shape: tuple[int, ...], *, fan_in: int) -> Array:
        return self.normal(shape, WEIGHT_GAIN / float(np.sqrt(fan_in)))


def _set_linear(spec: common_spec.LinearSpec | common_spec.Conv1DSpec, weight: Array) -> None:
    spec.weight = weight
    spec.bias = np.zeros(weight.shape[0], dtype=np.float16)


def _set_layer_norm(spec: common_spec.LayerNormSpec, d_model: int) -> None:
    spec.gamma = np.ones(d_model, dtype=np.float16)
    spec.beta = np.zeros(d_model, dtype=np.float16)


def _set_self_attention(
    spec: attention_spec.MultiHeadAttentionSpec, weights: _Weights, d_model: int
) -> None:
    """Fused query/key/value projection, then the output projection."""
    _set_layer_norm(spec.layer_norm, d_model)
    _set_linear(spec.linear[0], weights.matrix((3 * d_model, d_model), fan_in=d_model))
    _set_linear(spec.linear[1], weights.matrix((d_model, d_model), fan_in=d_model))


def _set_ffn(spec: transformer_spec.FeedForwardSpec, weights: _Weights, d_model: int) -> None:
    hidden_size = FFN_FACTOR * d_model
    _set_layer_norm(spec.layer_norm, d_model)
    _set_linear(spec.linear_0, weights.matrix((hidden_size, d_model), fan_in=d_model))
    _set_linear(spec.linear_1, weights.matrix((d_model, hidden_size), fan_in=hidden_size))


def _sinusoids(length: int, channels: int) -> Array:
    """Whisper's encoder position table."""
    increment = np.log(10_000) / (channels // 2 - 1)
    inv_timescales = np.exp(-increment * np.arange(channels // 2))
    scaled = np.arange(length)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float16)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.random_whisper", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny-128")
    parser.add_argument(
        "--tokenizer-dir",
        type=Path,
        help="whisper-base directory (default: `python -m cache fetch whisper-base`'s)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        parser.error(f"{args.out_dir} is not empty")
    tokenizer_dir = args.tokenizer_dir or fetch("whisper-base", default_cache_dir())
    print(PRESETS[args.preset].build(args.out_dir, seed=args.seed, tokenizer_dir=tokenizer_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
