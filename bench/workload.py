"""The benchmark's audio: reference files, their speech spans, and one stream per client.

Each client streams the chosen files in its own rotated order, with silence between them,
as 16 kHz mono PCM16. Where every file (and every utterance in it) sits in stream time is
known, so latencies and WER can be scored against the references.

Errors: `WorkloadError` (missing or unusable audio; the message says which file).
"""

from __future__ import annotations

import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import webrtcvad

from bench.metrics_calc import Span

SAMPLE_RATE_HZ = 16_000
VAD_FRAME_MS = 30


class WorkloadError(Exception):
    """The audio directory or one of its files cannot be used."""


@dataclass(frozen=True)
class AudioFile:
    """One reference recording: samples, reference text and where its speech is."""

    name: str
    samples: npt.NDArray[np.int16]
    reference: str
    speech: tuple[Span, ...]  # utterances, in seconds from the file's start

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE_HZ


@dataclass(frozen=True)
class Placement:
    """A file placed in a client's stream: its span and its utterances in stream time."""

    name: str
    reference: str
    start_stream_s: float
    end_stream_s: float
    utterances: tuple[Span, ...]

    @property
    def speech(self) -> Span:
        """From the first utterance's start to the last one's end."""
        if not self.utterances:
            return Span(self.start_stream_s, self.end_stream_s)
        return Span(self.utterances[0].start_stream_s, self.utterances[-1].end_stream_s)


@dataclass(frozen=True)
class ClientStream:
    """Everything one client sends, with where each reference file sits in it."""

    index: int
    samples: npt.NDArray[np.int16]
    placements: tuple[Placement, ...]

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE_HZ


def read_references(audio_dir: Path) -> dict[str, str]:
    """File name -> reference text, from refs.tsv."""
    refs_path = audio_dir / "refs.tsv"
    try:
        lines = refs_path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise WorkloadError(f"cannot read {refs_path}: {exc}; pass --audio-dir") from exc
    refs: dict[str, str] = {}
    for line in lines:
        if line.strip():
            name, _, text = line.partition("\t")
            refs[name.strip()] = text.strip()
    return refs


def read_wav(path: Path) -> npt.NDArray[np.int16]:
    """Samples of a 16 kHz mono 16-bit WAV file."""
    try:
        with wave.open(str(path), "rb") as wav:
            if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (
                SAMPLE_RATE_HZ,
                1,
                2,
            ):
                raise WorkloadError(f"{path}: expected 16 kHz mono 16-bit PCM WAV")
            data = wav.readframes(wav.getnframes())
    except (OSError, wave.Error) as exc:
        raise WorkloadError(f"cannot read {path}: {exc}") from exc
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def speech_spans(
    samples: npt.NDArray[np.int16],
    aggressiveness: int = 2,
    min_gap_s: float = 0.5,
    min_speech_s: float = 0.15,
) -> tuple[Span, ...]:
    """Utterances in a recording: webrtcvad speech, gaps shorter than `min_gap_s` bridged."""
    vad = webrtcvad.Vad(aggressiveness)
    frame_len = SAMPLE_RATE_HZ * VAD_FRAME_MS // 1000
    frame_s = VAD_FRAME_MS / 1000
    spans: list[list[float]] = []
    for i in range(len(samples) // frame_len):
        frame = samples[i * frame_len : (i + 1) * frame_len]
        if not vad.is_speech(frame.tobytes(), SAMPLE_RATE_HZ):
            continue
        start = i * frame_s
        if spans and start - spans[-1][1] < min_gap_s:
            spans[-1][1] = start + frame_s
        else:
            spans.append([start, start + frame_s])
    return tuple(Span(a, b) for a, b in spans if b - a >= min_speech_s)


def load_files(audio_dir: Path, names: Sequence[str] | None = None) -> list[AudioFile]:
    """The reference files (all of refs.tsv, or `names`), sorted by name."""
    refs = read_references(audio_dir)
    chosen = sorted(refs) if not names else list(names)
    files: list[AudioFile] = []
    for name in chosen:
        if name not in refs:
            raise WorkloadError(f"{name} has no line in {audio_dir / 'refs.tsv'}")
        samples = read_wav(audio_dir / name)
        speech = speech_spans(samples)
        files.append(AudioFile(name=name, samples=samples, reference=refs[name], speech=speech))
    if not files:
        raise WorkloadError(f"no reference files in {audio_dir}")
    return files


def rotated(files: Sequence[AudioFile], client_index: int) -> list[AudioFile]:
    """The files in client `client_index`'s order: the list rotated by the client's index."""
    shift = client_index % len(files)
    return [*files[shift:], *files[:shift]]


def limit_duration(files: Sequence[AudioFile], duration_s: float | None) -> list[AudioFile]:
    """The leading files whose audio fits in `duration_s` (always at least one file)."""
    if duration_s is None:
        return list(files)
    kept: list[AudioFile] = []
    total_s = 0.0
    for f in files:
        if kept and total_s + f.duration_s > duration_s:
            break
        kept.append(f)
        total_s += f.duration_s
    return kept


def build_stream(
    index: int,
    files: Sequence[AudioFile],
    gap_s: float = 1.0,
    lead_s: float = 0.5,
    tail_s: float = 3.0,
) -> ClientStream:
    """Concatenate files with `gap_s` of silence between them, `lead_s` before, `tail_s` after."""
    pieces: list[npt.NDArray[np.int16]] = []
    placements: list[Placement] = []
    cursor = 0

    def silence(seconds: float) -> None:
        nonlocal cursor
        n = round(seconds * SAMPLE_RATE_HZ)
        pieces.append(np.zeros(n, dtype=np.int16))
        cursor += n

    silence(lead_s)
    for i, f in enumerate(files):
        if i:
            silence(gap_s)
        offset_s = cursor / SAMPLE_RATE_HZ
        placements.append(
            Placement(
                name=f.name,
                reference=f.reference,
                start_stream_s=offset_s,
                end_stream_s=offset_s + f.duration_s,
                utterances=tuple(
                    Span(offset_s + s.start_stream_s, offset_s + s.end_stream_s) for s in f.speech
                ),
            )
        )
        pieces.append(f.samples)
        cursor += len(f.samples)
    silence(tail_s)
    return ClientStream(index=index, samples=np.concatenate(pieces), placements=tuple(placements))


def client_streams(
    files: Sequence[AudioFile],
    clients: int,
    duration_s: float | None = None,
    gap_s: float = 1.0,
) -> list[ClientStream]:
    """One stream per client, each with its rotated file order, cut to `duration_s` of audio."""
    return [
        build_stream(i, limit_duration(rotated(files, i), duration_s), gap_s=gap_s)
        for i in range(clients)
    ]
