"""The VAD evaluation set, built deterministically from ../shared/audio by code.

Tracks (16 kHz mono float32):

* `clean`: every speech file once, in a seeded order, joined with silences of varied length
  (0.3 to 4 s, digital zero) and framed by 1 s of leading and 2 s of trailing silence.
* `white_20db` ... `tones_5db`: the clean track plus white noise, pink noise or music-like
  tones (harmonic notes of a pentatonic melody over a held chord) at 20, 10 and 5 dB SNR
  (speech power measured over the reference speech of the clean track).
* `noise_white`, `noise_pink`, `noise_tones`, `noise_clicks`, `noise_silence`: noise only,
  no speech at all; the first three at the level of the 10 dB SNR tracks, clicks are 20-60 ms
  bursts and knocks at -20 to -3 dBFS peak over digital silence.

Reference speech: inside each placed file, speech is marked from the CLEAN source by its
own energy (10 ms frames, webrtcvad-independent): frames well above the file's noise floor
start a run, the run extends outward while energy stays above a lower threshold, gaps under
150 ms are bridged and runs under 60 ms dropped. Everything outside the placed files is
non-speech. `files` keeps each placed file's span and reference text (for WER).

Errors: `VadSetError` (the shared audio is missing or not 16 kHz mono 16-bit).
"""

from __future__ import annotations

import functools
import math
import os
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from vad.framing import frames_dbfs

SAMPLE_RATE_HZ = 16_000
REF_FRAME_SAMPLES = 160  # 10 ms: the resolution of the reference speech marks
SEED = 20_240_607
GAPS_S = (0.3, 0.6, 1.0, 1.5, 2.5, 4.0)
SNRS_DB = (20, 10, 5)
NOISES = ("white", "pink", "tones")
NOISE_ONLY = ("white", "pink", "tones", "clicks", "silence")
NOISE_ONLY_S = 15.0
NOISE_ONLY_SNR_DB = 10  # noise-only tracks carry the noise level of the 10 dB tracks

Spans = list[tuple[int, int]]


class VadSetError(Exception):
    """The shared speech audio cannot be used to build the set."""


@dataclass(frozen=True)
class PlacedFile:
    """One source file inside a track: [start, end) in samples and its reference text."""

    name: str
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Track:
    """One evaluation track with its reference speech spans (samples, [start, end))."""

    name: str
    noise: str  # "none", "white", "pink", "tones", "clicks", "silence"
    snr_db: int | None
    samples: npt.NDArray[np.float32]
    speech: Spans
    files: tuple[PlacedFile, ...]

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE_HZ

    @property
    def text(self) -> str:
        return " ".join(f.text for f in self.files)

    @property
    def noise_only(self) -> bool:
        return not self.files

    def speech_mask(self, frame_samples: int) -> npt.NDArray[np.bool_]:
        """Per frame of `frame_samples`: True when at least half of it is reference speech."""
        n_frames = len(self.samples) // frame_samples
        per_sample = spans_to_mask(self.speech, n_frames * frame_samples)
        counts = per_sample.reshape(n_frames, frame_samples).sum(axis=1)
        result: npt.NDArray[np.bool_] = counts * 2 >= frame_samples
        return result


def default_audio_dir() -> Path:
    shared = os.environ.get("STREAMSCRIBE_SHARED")
    root = Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared"
    return root / "audio"


def spans_to_mask(spans: Spans, length: int) -> npt.NDArray[np.bool_]:
    mask = np.zeros(length, dtype=bool)
    for start, end in spans:
        mask[max(0, start) : min(length, end)] = True
    return mask


def mask_to_spans(mask: npt.NDArray[np.bool_]) -> Spans:
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def read_wav(path: Path) -> npt.NDArray[np.float32]:
    try:
        with wave.open(str(path)) as wav:
            if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (
                SAMPLE_RATE_HZ,
                1,
                2,
            ):
                raise VadSetError(f"{path} must be 16 kHz mono 16-bit PCM WAV")
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    except (OSError, wave.Error) as exc:
        raise VadSetError(f"cannot read {path}: {exc}") from exc
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


def reference_texts(audio_dir: Path) -> dict[str, str]:
    refs: dict[str, str] = {}
    path = audio_dir / "refs.tsv"
    if not path.is_file():
        raise VadSetError(f"{path} not found; point STREAMSCRIBE_SHARED at the shared folder")
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            name, text = line.split("\t", 1)
            refs[name] = text
    return refs


def energy_speech_spans(samples: npt.NDArray[np.float32]) -> Spans:
    """Speech runs of a clean recording, in samples, from its own 10 ms frame energies."""
    energy = frames_dbfs(samples, REF_FRAME_SAMPLES)
    n = len(energy)
    floor = float(np.percentile(energy, 5))
    loud = float(np.percentile(energy, 99))
    high = max(loud - 30.0, floor + 10.0)
    low = max(loud - 40.0, floor + 5.0)
    core = energy > high
    above_low = energy > low
    mask = np.zeros(n, dtype=bool)
    for start, end in mask_to_spans(core):
        while start > 0 and above_low[start - 1]:
            start -= 1
        while end < n and above_low[end]:
            end += 1
        mask[start:end] = True
    # bridge short gaps (stop closures, between-word pauses) and drop tiny islands
    spans = mask_to_spans(mask)
    merged: Spans = []
    for start, end in spans:
        if merged and start - merged[-1][1] < 15:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return [(s * REF_FRAME_SAMPLES, e * REF_FRAME_SAMPLES) for s, e in merged if e - s >= 6]


def _unit_power(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    result: npt.NDArray[np.float64] = x / math.sqrt(float(np.mean(x**2)))
    return result


def white_noise(n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    return _unit_power(rng.standard_normal(n))


def pink_noise(n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    return _unit_power(np.fft.irfft(spectrum / np.sqrt(freqs), n))


def music_tones(n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """A melody of harmonic notes (pentatonic, 0.2-0.6 s each) over a held two-note chord."""
    scale_hz = [220.0 * 2 ** (k / 12) for k in (0, 2, 4, 7, 9, 12, 14, 16, 19, 21, 24)]
    out = np.zeros(n)
    t_all = np.arange(n) / SAMPLE_RATE_HZ
    pos = 0
    while pos < n:
        length = int(rng.uniform(0.2, 0.6) * SAMPLE_RATE_HZ)
        end = min(n, pos + length)
        t = t_all[: end - pos]
        f0 = float(rng.choice(scale_hz))
        note = sum((0.6**h) * np.sin(2 * np.pi * f0 * (h + 1) * t) for h in range(4))
        envelope = np.minimum(1.0, t / 0.01) * np.exp(-t / 0.35)
        out[pos:end] += note * envelope
        pos = end
    chord = 0.3 * (np.sin(2 * np.pi * 110.0 * t_all) + np.sin(2 * np.pi * 164.8 * t_all))
    return _unit_power(out + chord)


def clicks(n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """20-60 ms bursts every 0.3-1.5 s: noise bursts, knocks (decaying low tones), pops."""
    out = np.zeros(n)
    pos = int(0.5 * SAMPLE_RATE_HZ)
    kind = 0
    while pos < n:
        length = int(rng.uniform(0.02, 0.06) * SAMPLE_RATE_HZ)
        t = np.arange(length) / SAMPLE_RATE_HZ
        decay = np.exp(-t / (length / SAMPLE_RATE_HZ / 4))
        if kind % 3 == 0:
            burst = rng.standard_normal(length) * decay
        elif kind % 3 == 1:
            burst = np.sin(2 * np.pi * rng.uniform(150, 400) * t) * decay
        else:
            burst = np.zeros(length)
            burst[:8] = np.array([1.0, -0.8, 0.6, -0.4, 0.3, -0.2, 0.1, -0.05])
        peak_dbfs = rng.uniform(-20.0, -3.0)
        burst = burst / max(1e-9, float(np.max(np.abs(burst)))) * 10 ** (peak_dbfs / 20)
        end = min(n, pos + length)
        out[pos:end] += burst[: end - pos]
        pos += length + int(rng.uniform(0.3, 1.5) * SAMPLE_RATE_HZ)
        kind += 1
    return out


def _noise(kind: str, n: int, seed: int) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    if kind == "white":
        return white_noise(n, rng)
    if kind == "pink":
        return pink_noise(n, rng)
    if kind == "tones":
        return music_tones(n, rng)
    if kind == "clicks":
        return clicks(n, rng)
    return np.zeros(n)


def _clean_track(audio_dir: Path) -> Track:
    refs = reference_texts(audio_dir)
    names = sorted(refs)
    rng = np.random.default_rng(SEED)
    order = [names[i] for i in rng.permutation(len(names))]
    pieces: list[npt.NDArray[np.float32]] = [np.zeros(SAMPLE_RATE_HZ, dtype=np.float32)]
    pos = SAMPLE_RATE_HZ
    speech: Spans = []
    files: list[PlacedFile] = []
    for i, name in enumerate(order):
        source = read_wav(audio_dir / name)
        speech.extend((pos + s, pos + e) for s, e in energy_speech_spans(source))
        files.append(PlacedFile(name, pos, pos + len(source), refs[name]))
        pieces.append(source)
        pos += len(source)
        gap_s = 2.0 if i == len(order) - 1 else GAPS_S[int(rng.integers(len(GAPS_S)))]
        gap = int(gap_s * SAMPLE_RATE_HZ)
        pieces.append(np.zeros(gap, dtype=np.float32))
        pos += gap
    samples = np.concatenate(pieces)
    return Track("clean", "none", None, samples, speech, tuple(files))


def speech_power(track: Track) -> float:
    mask = spans_to_mask(track.speech, len(track.samples))
    return float(np.mean(track.samples[mask].astype(np.float64) ** 2))


@functools.lru_cache(maxsize=2)
def build(audio_dir: Path | None = None) -> tuple[Track, ...]:
    """Every track of the set, in a fixed order; identical on every call and machine."""
    clean = _clean_track(audio_dir or default_audio_dir())
    power = speech_power(clean)
    tracks = [clean]
    n = len(clean.samples)
    for k, kind in enumerate(NOISES):
        base = _noise(kind, n, SEED + k)
        for snr in SNRS_DB:
            noise = base * math.sqrt(power / 10 ** (snr / 10))
            mixed = np.clip(clean.samples + noise, -1.0, 1.0).astype(np.float32)
            tracks.append(Track(f"{kind}_{snr}db", kind, snr, mixed, clean.speech, clean.files))
    only_n = int(NOISE_ONLY_S * SAMPLE_RATE_HZ)
    level = math.sqrt(power / 10 ** (NOISE_ONLY_SNR_DB / 10))
    for k, kind in enumerate(NOISE_ONLY):
        noise = _noise(kind, only_n, SEED + 100 + k)
        if kind in NOISES:
            noise = noise * level
        samples = np.clip(noise, -1.0, 1.0).astype(np.float32)
        tracks.append(Track(f"noise_{kind}", kind, None, samples, [], ()))
    return tuple(tracks)
