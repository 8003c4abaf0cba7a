"""The accuracy benchmark's evaluation sets, built in memory from ../shared by seeded code.

Sets (`SET_NAMES`); every item is 16 kHz mono int16 with its reference text:

* `audio`, `dev`: each file of ../shared/audio and ../shared/speech-dev as it is.
* `long`: long same-speaker streams: the clips of one speaker joined with pauses of digital
  silence (seeded, 0.4-1.2 s), and the long takes of ../shared kept whole. The reference is
  the clips' references joined in order.
* `long-snr20`, `long-snr10`, `long-snr5`: `long` plus white Gaussian noise at that SNR,
  everywhere (pauses included); the signal power is measured over the speech spans.
* `quiet`: `long` scaled so its speech spans are at -45 dBFS RMS.
* `telephone`: `long` through a phone line: 8 kHz (soxr), G.711 mu-law, back to 16 kHz.
* `unrelated`: streams of ~35 s of unrelated clips from ../shared/audio, adjacent clips of
  different speakers, 1.0 s of silence between them (context carried across them can harm).

Each item keeps its reference speech spans, found by `bench.workload.speech_spans` on each
clean source clip and placed where the clip sits; the derived sets keep those of `long`.
Everything is deterministic: same bytes on every call and machine.

`python -m bench evalsets [--sets ...] [--out DIR]` writes the sets as WAVs for listening.

Errors: `EvalSetError` (an unknown set name); `bench.workload.WorkloadError` (a missing or
unusable file of ../shared) propagates.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

from bench.metrics_calc import Span
from bench.workload import SAMPLE_RATE_HZ, read_references, read_wav, speech_spans
from tests.support.paths import REPO_ROOT, SHARED_DIR

SEED = 20_260_512
FULL_SCALE = 32_768.0
PAUSE_RANGE_S = (0.4, 1.2)
SNR_SETS_DB = {"long-snr20": 20.0, "long-snr10": 10.0, "long-snr5": 5.0}
QUIET_DBFS = -45.0
TELEPHONE_RATE_HZ = 8_000
UNRELATED_STREAMS = 3
UNRELATED_TARGET_S = 35.0
UNRELATED_MAX_CLIP_S = 20.0  # leaves out the 51 s sonnet: a stream is made of several talkers
UNRELATED_GAP_S = 1.0
MULAW_BIAS = 0x84
MULAW_CLIP = 32_635

# (item name, its clips in order as "dir/file.wav"); one clip = a long take kept whole.
LONG_STREAMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ljspeech_LJ001-0001-0005", tuple(f"audio/ljspeech_LJ001-000{k}.wav" for k in range(1, 6))),
    ("speechbrain_spk1", tuple(f"speech-dev/speechbrain_spk1_snt{k}.wav" for k in range(1, 5))),
    ("speechbrain_spk2", tuple(f"speech-dev/speechbrain_spk2_snt{k}.wav" for k in range(1, 5))),
    ("arctic_aew", ("speech-dev/arctic_aew_a0001.wav", "speech-dev/arctic_aew_a0002.wav")),
    ("arctic_axb", ("speech-dev/arctic_axb_a0004.wav", "speech-dev/arctic_axb_a0006.wav")),
    ("lucier_sitting_in_a_room", ("speech-dev/lucier_sitting_in_a_room.wav",)),
    ("librivox_sonnet002", ("speech-dev/librivox_sonnet002.wav",)),
    ("librivox_sonnet001", ("audio/librivox_sonnet001.wav",)),
    ("osr_harvard_list02_8k", ("speech-dev/osr_harvard_list02_8k.wav",)),
    ("osr_harvard_list72_8k", ("speech-dev/osr_harvard_list72_8k.wav",)),
)


class EvalSetError(Exception):
    """An evaluation set that does not exist."""


@dataclass(frozen=True)
class EvalItem:
    """One stream of an evaluation set: its audio, reference text and where it came from."""

    name: str
    samples: npt.NDArray[np.int16]  # 16 kHz mono
    reference: str
    sources: tuple[str, ...]  # "dir/file.wav" of each clip, in order
    speech: tuple[Span, ...]  # reference speech spans, seconds from the item's start

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE_HZ

    def content_sha256(self) -> str:
        """A digest of the samples: the same audio has the same digest in every set."""
        return hashlib.sha256(self.samples.tobytes()).hexdigest()


@dataclass(frozen=True)
class EvalSet:
    """A named tuple of items, with a line saying what it measures."""

    name: str
    description: str
    items: tuple[EvalItem, ...]

    @property
    def duration_s(self) -> float:
        return sum(item.duration_s for item in self.items)


def speaker_of(source: str) -> str:
    """The talker of a ../shared/audio clip: its corpus prefix (one talker per corpus there)."""
    return Path(source).name.split("_", 1)[0]


def _read_clip(shared_dir: Path, source: str, refs: dict[str, dict[str, str]]) -> EvalItem:
    """One source file as a one-clip item (`refs` caches each directory's refs.tsv)."""
    folder, _, file_name = source.partition("/")
    if folder not in refs:
        refs[folder] = read_references(shared_dir / folder)
    samples = read_wav(shared_dir / folder / file_name)
    samples.setflags(write=False)
    return EvalItem(
        name=Path(file_name).stem,
        samples=samples,
        reference=refs[folder][file_name],
        sources=(source,),
        speech=speech_spans(samples),
    )


def _join(name: str, clips: Sequence[EvalItem], gaps_s: Sequence[float]) -> EvalItem:
    """The clips in order with `gaps_s[i]` of digital silence after clip i."""
    if len(gaps_s) != len(clips) - 1:
        raise ValueError("one gap between each pair of clips is needed")
    pieces: list[npt.NDArray[np.int16]] = []
    speech: list[Span] = []
    cursor = 0
    for k, clip in enumerate(clips):
        if k:
            gap = np.zeros(round(gaps_s[k - 1] * SAMPLE_RATE_HZ), dtype=np.int16)
            pieces.append(gap)
            cursor += len(gap)
        offset_s = cursor / SAMPLE_RATE_HZ
        speech += [
            Span(offset_s + s.start_stream_s, offset_s + s.end_stream_s) for s in clip.speech
        ]
        pieces.append(clip.samples)
        cursor += len(clip.samples)
    samples = np.concatenate(pieces)
    samples.setflags(write=False)
    return EvalItem(
        name=name,
        samples=samples,
        reference=" ".join(clip.reference for clip in clips),
        sources=tuple(s for clip in clips for s in clip.sources),
        speech=tuple(speech),
    )


def _whole_dir(shared_dir: Path, folder: str) -> tuple[EvalItem, ...]:
    refs = {folder: read_references(shared_dir / folder)}
    return tuple(_read_clip(shared_dir, f"{folder}/{name}", refs) for name in sorted(refs[folder]))


def long_items(shared_dir: Path) -> tuple[EvalItem, ...]:
    """The `long` set: one same-speaker stream per entry of `LONG_STREAMS`."""
    refs: dict[str, dict[str, str]] = {}
    items = []
    for index, (name, sources) in enumerate(LONG_STREAMS):
        rng = np.random.default_rng([SEED, 1, index])
        clips = [_read_clip(shared_dir, source, refs) for source in sources]
        gaps_s = [float(rng.uniform(*PAUSE_RANGE_S)) for _ in clips[1:]]
        items.append(_join(name, clips, gaps_s))
    return tuple(items)


def _pick_unrelated(pool: Sequence[EvalItem], rng: np.random.Generator) -> list[EvalItem]:
    """Clips drawn at random until `UNRELATED_TARGET_S`; no repeats, no talker twice in a row."""
    chosen: list[EvalItem] = []
    while sum(c.duration_s for c in chosen) < UNRELATED_TARGET_S:
        used = {c.name for c in chosen}
        last = speaker_of(chosen[-1].sources[0]) if chosen else None
        candidates = [c for c in pool if c.name not in used and speaker_of(c.sources[0]) != last]
        if not candidates:
            break
        chosen.append(candidates[int(rng.integers(len(candidates)))])
    return chosen


def unrelated_items(shared_dir: Path) -> tuple[EvalItem, ...]:
    """The `unrelated` set: `UNRELATED_STREAMS` concatenations of different talkers' clips."""
    pool = [c for c in _whole_dir(shared_dir, "audio") if c.duration_s <= UNRELATED_MAX_CLIP_S]
    items = []
    for k in range(UNRELATED_STREAMS):
        clips = _pick_unrelated(pool, np.random.default_rng([SEED, 2, k]))
        items.append(_join(f"unrelated-{k + 1}", clips, [UNRELATED_GAP_S] * (len(clips) - 1)))
    return tuple(items)


def to_float(samples: npt.NDArray[np.int16]) -> npt.NDArray[np.float64]:
    """int16 samples as float64 in [-1, 1)."""
    return samples.astype(np.float64) / FULL_SCALE


def to_int16(audio: npt.NDArray[np.float64]) -> npt.NDArray[np.int16]:
    """float audio in [-1, 1) as int16, rounded and clipped at full scale."""
    scaled = np.clip(np.round(audio * FULL_SCALE), -FULL_SCALE, FULL_SCALE - 1)
    result = scaled.astype(np.int16)
    result.setflags(write=False)
    return result


def speech_mask(item: EvalItem) -> npt.NDArray[np.bool_]:
    """True on the samples inside the item's speech spans."""
    mask = np.zeros(len(item.samples), dtype=np.bool_)
    for span in item.speech:
        start = round(span.start_stream_s * SAMPLE_RATE_HZ)
        mask[start : round(span.end_stream_s * SAMPLE_RATE_HZ)] = True
    return mask


def power_dbfs(audio: npt.NDArray[np.float64]) -> float:
    """Mean power of float audio in dB relative to full scale (a full-scale square is 0)."""
    return 10.0 * math.log10(max(float(np.mean(np.square(audio))), 1e-20))


def speech_level_dbfs(item: EvalItem) -> float:
    """RMS level of the item's speech spans in dBFS."""
    return power_dbfs(to_float(item.samples)[speech_mask(item)])


def with_noise(item: EvalItem, snr_db: float, rng: np.random.Generator) -> EvalItem:
    """The item plus white Gaussian noise `snr_db` below its speech level, on every sample."""
    noise_rms = 10 ** ((speech_level_dbfs(item) - snr_db) / 20)
    noisy = to_float(item.samples) + rng.standard_normal(len(item.samples)) * noise_rms
    return dataclasses.replace(item, samples=to_int16(noisy))


def at_level(item: EvalItem, level_dbfs: float) -> EvalItem:
    """The item scaled so its speech spans are at `level_dbfs` RMS."""
    gain = 10 ** ((level_dbfs - speech_level_dbfs(item)) / 20)
    return dataclasses.replace(item, samples=to_int16(to_float(item.samples) * gain))


def shifted(item: EvalItem, shift_ms: int) -> EvalItem:
    """`item` without its first `shift_ms` of audio: the same speech, framed differently by
    a VAD and by Whisper's 10 ms hop. The reference is unchanged."""
    if shift_ms == 0:
        return item
    return dataclasses.replace(item, samples=item.samples[shift_ms * SAMPLE_RATE_HZ // 1000 :])


def mulaw_encode(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """G.711 mu-law codes of 16-bit PCM (the segmented 8-bit law, 14-bit magnitude range)."""
    x = pcm.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), MULAW_CLIP) + MULAW_BIAS
    exponent = np.floor(np.log2(magnitude >> 7)).astype(np.int32)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    code = ~(sign | (exponent << 4) | mantissa) & 0xFF
    codes: npt.NDArray[np.uint8] = code.astype(np.uint8)
    return codes


def mulaw_decode(codes: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    """16-bit PCM of G.711 mu-law codes."""
    code = ~codes.astype(np.int32) & 0xFF
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = (((mantissa << 3) + MULAW_BIAS) << exponent) - MULAW_BIAS
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


def through_phone(item: EvalItem) -> EvalItem:
    """The item resampled to 8 kHz, mu-law coded and decoded, and resampled back to 16 kHz."""
    narrow = soxr.resample(to_float(item.samples), SAMPLE_RATE_HZ, TELEPHONE_RATE_HZ)
    line = mulaw_decode(mulaw_encode(to_int16(narrow)))
    wide = soxr.resample(to_float(line), TELEPHONE_RATE_HZ, SAMPLE_RATE_HZ)
    n = len(item.samples)
    wide = np.pad(wide[:n], (0, max(0, n - len(wide))))
    return dataclasses.replace(item, samples=to_int16(wide))


def _noisy_set(snr_db: float) -> Callable[[Path], tuple[EvalItem, ...]]:
    def build(shared_dir: Path) -> tuple[EvalItem, ...]:
        return tuple(
            with_noise(item, snr_db, np.random.default_rng([SEED, 3, round(snr_db), k]))
            for k, item in enumerate(long_items(shared_dir))
        )

    return build


BUILDERS: dict[str, tuple[str, Callable[[Path], tuple[EvalItem, ...]]]] = {
    "audio": ("each file of ../shared/audio", lambda d: _whole_dir(d, "audio")),
    "dev": ("each file of ../shared/speech-dev", lambda d: _whole_dir(d, "speech-dev")),
    "long": ("same-speaker clips joined with pauses, and the long takes", long_items),
    **{
        name: (f"long with white noise at {snr_db:g} dB SNR", _noisy_set(snr_db))
        for name, snr_db in SNR_SETS_DB.items()
    },
    "quiet": (
        f"long with speech at {QUIET_DBFS:g} dBFS RMS",
        lambda d: tuple(at_level(item, QUIET_DBFS) for item in long_items(d)),
    ),
    "telephone": (
        "long through 8 kHz G.711 mu-law",
        lambda d: tuple(through_phone(item) for item in long_items(d)),
    ),
    "unrelated": ("~35 s of unrelated talkers' clips, 1 s apart", unrelated_items),
}
SET_NAMES: tuple[str, ...] = tuple(BUILDERS)


def build_set(name: str, shared_dir: Path) -> EvalSet:
    """The evaluation set `name` (one of `SET_NAMES`), built from `shared_dir`."""
    if name not in BUILDERS:
        raise EvalSetError(f"unknown evaluation set {name!r}; choose from {', '.join(SET_NAMES)}")
    description, builder = BUILDERS[name]
    return EvalSet(name=name, description=description, items=builder(shared_dir))


def write_wavs(eval_set: EvalSet, out_dir: Path) -> Path:
    """Write each item as `out_dir/SET/ITEM.wav` with a refs.tsv beside them; returns the folder."""
    folder = out_dir / eval_set.name
    folder.mkdir(parents=True, exist_ok=True)
    for item in eval_set.items:
        with wave.open(str(folder / f"{item.name}.wav"), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(SAMPLE_RATE_HZ)
            wav.writeframes(item.samples.astype("<i2").tobytes())
    lines = [f"{item.name}.wav\t{item.reference}\n" for item in eval_set.items]
    (folder / "refs.tsv").write_text("".join(lines), encoding="utf-8")
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench evalsets", description="Write the evaluation sets as WAVs."
    )
    parser.add_argument("--sets", default=",".join(SET_NAMES), help="comma-separated set names")
    parser.add_argument("--shared-dir", type=Path, default=SHARED_DIR)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/evalsets")
    args = parser.parse_args(argv)
    for name in (n.strip() for n in args.sets.split(",") if n.strip()):
        eval_set = build_set(name, args.shared_dir)
        folder = write_wavs(eval_set, args.out)
        print(f"{name}: {len(eval_set.items)} items, {eval_set.duration_s:.0f} s -> {folder}")
    return 0
