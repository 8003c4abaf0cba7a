"""`python -m bench diarize`: speaker labels on conversations composed from the shared speakers.

Conversations (seeded, deterministic): 2, 3 or 4 speakers drawn from `SPEAKERS` (the distinct
people of ../shared/speech-dev and ../shared/audio, grouped by their SOURCES.md; files whose
speaker is unclear are left out), with odds growing as the square root of each one's material
(3.4 s to 104 s), so that most conversations hold several turns per speaker. Each speaker's
files are joined (0.25 s apart) and cut at low-energy points into turns of 3-10 s; turns
alternate between speakers (the one with the fewest turns so far goes first, ties at random)
until about `SPEECH_PER_SPEAKER_S` of speech per speaker or the material runs out; gaps of
0.3-1.5 s, and about 10 % of turns start 0.3-1 s before the previous one ends (overlap).
Every speaker's level is set to -26 dBFS of active speech +-4 dB; white noise at -65 dBFS
runs underneath.

Pipeline per conversation, as the server runs it: WebRTC VAD frames -> Segmenter utterances
(the session's defaults, fixed 500 ms endpointing) -> words from the real tiny.en engine ->
`SpeakerTracker.assign` per final utterance, in order.

Metrics: word accuracy (a word's truth is the speaker active at its midpoint, either one in
an overlap) under the best one-to-one label mapping; frame-level DER (10 ms, 0.25 s collar
around reference speech boundaries; missed, false alarm, confusion; hypothesis = words
joined when under 0.5 s apart); CPU seconds (process time) of the speaker part (encoder +
clustering) per audio second; speakers found vs true.

`--tune` sweeps the tracker's thresholds on the tuning seeds (ASR and embeddings computed
once) and prints the best settings; the default run reports the held-out seeds.
"""

from __future__ import annotations

import os
import sys

# The encoder's small matrix products run best on one BLAS thread: OpenBLAS's extra threads
# spin on them (about 7 times the CPU for the same work). Set only for the CLI run (numpy is
# not loaded yet there); importing this module elsewhere changes no environment.
if sys.argv[1:2] == ["diarize"] and "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import hashlib
import itertools
import json
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.vadset import energy_speech_spans, read_wav
from tests.support.paths import SHARED_DIR
from vad.framing import Framer, frame_dbfs
from vad.segmenter import Segmenter, SegmenterConfig, SpeechEnded

SAMPLE_RATE_HZ = 16_000
WEIGHTS_ENV = "STREAMSCRIBE_SPEAKER_WEIGHTS"

TUNE_SEEDS = tuple(range(10))
HELD_OUT_SEEDS = tuple(range(100, 110))
SPEAKER_COUNTS = (2, 3, 4)

# speaker -> its files (folder/name); one person each, by SOURCES.md. Left out:
# cmuarctic_a0024 (an ARCTIC speaker, probably axb), speechbrain_example1 (maybe spk1),
# timit_LDC93S1 and uberi_one_two_three (under 3 s). The two LibriVox sonnet files are one
# reader (their embeddings agree as closely as one file's halves do).
SPEAKERS: dict[str, tuple[str, ...]] = {
    "lucier": ("speech-dev/lucier_sitting_in_a_room.wav",),
    "librivox_sonnets": ("audio/librivox_sonnet001.wav", "speech-dev/librivox_sonnet002.wav"),
    "osr_list02": ("speech-dev/osr_harvard_list02_8k.wav",),
    "osr_list72": ("speech-dev/osr_harvard_list72_8k.wav",),
    "ljspeech": tuple(f"audio/ljspeech_LJ001-000{i}.wav" for i in range(1, 6)),
    "jfk": ("audio/jfk_inaugural.wav",),
    "libri_2412": ("speech-dev/librispeech_2412-153948-0000.wav",),
    "libri_1995": ("speech-dev/librispeech_1995-1837-0001.wav",),
    "libri_1272": ("speech-dev/librispeech_1272-128104-0000.wav",),
    "libri_6930": ("speech-dev/librispeech_6930-75918-0000.wav",),
    "an4": ("speech-dev/an4_10001-90210-01803.wav",),
    "arctic_aew": ("speech-dev/arctic_aew_a0001.wav", "speech-dev/arctic_aew_a0002.wav"),
    "arctic_axb": ("speech-dev/arctic_axb_a0004.wav", "speech-dev/arctic_axb_a0006.wav"),
    "sb_spk1": tuple(f"speech-dev/speechbrain_spk1_snt{i}.wav" for i in range(1, 5)),
    "sb_spk2": tuple(f"speech-dev/speechbrain_spk2_snt{i}.wav" for i in range(1, 5)),
    "pocketsphinx_cards": tuple(f"speech-dev/pocketsphinx_cards_00{i}.wav" for i in range(1, 4)),
    "vctk_p240": ("speech-dev/vctk_p240_rainbow.wav",),
    "voices_sp0307": ("speech-dev/voices_farfield_sp0307.wav",),
    "deepspeech_new_home": ("audio/deepspeech_new_home.wav",),
}

JOIN_GAP_S = 0.25
TURN_MIN_S, TURN_MAX_S = 3.0, 10.0
GAP_MIN_S, GAP_MAX_S = 0.3, 1.5
OVERLAP_P = 0.10
OVERLAP_MIN_S, OVERLAP_MAX_S = 0.3, 1.0
SPEECH_PER_SPEAKER_S = 30.0
LEVEL_DBFS, LEVEL_SPREAD_DB = -26.0, 4.0
NOISE_DBFS = -65.0
LEAD_S, TAIL_S = 0.5, 1.0
COLLAR_S = 0.25
HYP_JOIN_S = 0.5
FRAME_S = 0.01

Audio = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Turn:
    speaker: str
    start_s: float
    end_s: float
    speech_s: tuple[tuple[float, float], ...]
    """Reference speech spans inside the turn (absolute times), from its own energy."""


@dataclass(frozen=True)
class Conversation:
    name: str
    seed: int
    audio: Audio
    turns: tuple[Turn, ...]

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE_HZ

    @property
    def speakers(self) -> list[str]:
        return sorted({t.speaker for t in self.turns})


@dataclass(frozen=True)
class Word:
    text: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Utterance:
    start_sample: int
    end_sample: int
    words: tuple[Word, ...]
    """Times relative to the utterance start."""


@dataclass
class Scored:
    name: str
    speakers: int
    duration_s: float
    words: int
    word_accuracy: float
    der: float
    missed: float
    false_alarm: float
    confusion: float
    found: int
    cpu_s: float
    labels: list[int] = field(default_factory=list)

    @property
    def cpu_ms_per_audio_s(self) -> float:
        return 1000.0 * self.cpu_s / self.duration_s


# ---------------------------------------------------------------- composing conversations


def speaker_stream(shared: Path, files: Sequence[str]) -> Audio:
    gap = np.zeros(round(JOIN_GAP_S * SAMPLE_RATE_HZ), dtype=np.float32)
    parts: list[Audio] = []
    for name in files:
        parts += [read_wav(shared / name), gap]
    return np.concatenate(parts[:-1])


def cut_turns(stream: Audio, rng: np.random.Generator) -> list[Audio]:
    """Pieces of 3-10 s, each cut at the quietest 30 ms near a random target length."""
    frame = SAMPLE_RATE_HZ // 100
    energy = np.array([frame_dbfs(stream[i : i + frame]) for i in range(0, len(stream), frame)])
    smooth = np.convolve(energy, np.ones(3) / 3, mode="same")
    pieces: list[Audio] = []
    pos = 0
    total = len(energy)
    while total - pos >= TURN_MIN_S * 100:
        if total - pos <= TURN_MAX_S * 100:
            cut = total
        else:
            target = pos + int(rng.uniform(TURN_MIN_S, TURN_MAX_S) * 100)
            hi = min(pos + int(TURN_MAX_S * 100), target + 100, total - int(TURN_MIN_S * 100))
            lo = min(max(pos + int(TURN_MIN_S * 100), target - 100), hi - 1)
            cut = lo + int(np.argmin(smooth[lo:hi]))
        pieces.append(stream[pos * frame : cut * frame])
        pos = cut
    if not pieces and total >= 2.5 * 100:  # a speaker with just under 3 s: one whole turn
        pieces.append(stream)
    return pieces


def active_level_dbfs(audio: Audio) -> float:
    frame = SAMPLE_RATE_HZ // 100
    levels = np.array([frame_dbfs(audio[i : i + frame]) for i in range(0, len(audio), frame)])
    loud = levels[levels > levels.max() - 30.0]
    return float(10 * np.log10(np.mean(10 ** (loud / 10))))


def compose(shared: Path, n_speakers: int, seed: int) -> Conversation:
    rng = np.random.default_rng([seed, n_speakers, 17])
    names = sorted(SPEAKERS)
    streams = {name: speaker_stream(shared, SPEAKERS[name]) for name in names}
    odds = np.sqrt([len(streams[name]) for name in names])
    picks = rng.choice(len(names), size=n_speakers, replace=False, p=odds / odds.sum())
    chosen = [names[i] for i in picks]
    pools: dict[str, list[Audio]] = {}
    for name in chosen:
        files = list(SPEAKERS[name])
        rng.shuffle(files)
        stream = speaker_stream(shared, files)
        gain_db = LEVEL_DBFS + rng.uniform(-LEVEL_SPREAD_DB, LEVEL_SPREAD_DB)
        gain_db -= active_level_dbfs(stream)
        stream = (stream * 10 ** (gain_db / 20)).astype(np.float32)
        pieces = cut_turns(stream, rng)
        order = rng.permutation(len(pieces))
        pools[name] = [pieces[i] for i in order]
    placed: list[tuple[str, float, Audio]] = []
    counts = dict.fromkeys(chosen, 0)
    speech_s = 0.0
    cursor_s = LEAD_S
    previous: str | None = None
    last_start_s = 0.0
    while speech_s < SPEECH_PER_SPEAKER_S * n_speakers:
        options = [n for n in chosen if n != previous and pools[n]]
        if not options:
            break
        fewest = min(counts[n] for n in options)
        options = [n for n in options if counts[n] == fewest]
        speaker = options[int(rng.integers(len(options)))]
        piece = pools[speaker].pop()
        if previous is not None and rng.random() < OVERLAP_P:
            start_s = cursor_s - rng.uniform(OVERLAP_MIN_S, OVERLAP_MAX_S)
            start_s = max(start_s, last_start_s + 1.0)
        elif previous is not None:
            start_s = cursor_s + rng.uniform(GAP_MIN_S, GAP_MAX_S)
        else:
            start_s = cursor_s
        placed.append((speaker, start_s, piece))
        counts[speaker] += 1
        speech_s += len(piece) / SAMPLE_RATE_HZ
        cursor_s = max(cursor_s, start_s + len(piece) / SAMPLE_RATE_HZ)
        last_start_s = start_s
        previous = speaker
    length = round((cursor_s + TAIL_S) * SAMPLE_RATE_HZ)
    noise = rng.standard_normal(length) * 10 ** (NOISE_DBFS / 20)
    mix = noise.astype(np.float64)
    turns: list[Turn] = []
    for speaker, start_s, piece in placed:
        offset = round(start_s * SAMPLE_RATE_HZ)
        mix[offset : offset + len(piece)] += piece
        spans = tuple(
            ((offset + a) / SAMPLE_RATE_HZ, (offset + b) / SAMPLE_RATE_HZ)
            for a, b in energy_speech_spans(piece)
        )
        turns.append(
            Turn(speaker, offset / SAMPLE_RATE_HZ, (offset + len(piece)) / SAMPLE_RATE_HZ, spans)
        )
    audio = np.clip(mix, -1.0, 1.0).astype(np.float32)
    return Conversation(f"{n_speakers}spk-seed{seed}", seed, audio, tuple(turns))


# ---------------------------------------------------------------- VAD and ASR


def utterance_spans(audio: Audio) -> list[tuple[int, int]]:
    """[start, end) samples of each utterance the server's VAD and segmenter would cut."""
    from vad.webrtc import WebRtcClassifier

    classifier = WebRtcClassifier()
    framer = Framer(classifier.frame_ms)
    segmenter = Segmenter(SegmenterConfig(frame_ms=classifier.frame_ms))
    frame_samples = framer.frame_samples
    spans: list[tuple[int, int]] = []
    frames = framer.push(audio)
    for frame in frames:
        for event in segmenter.push(classifier.is_speech(frame), frame_dbfs(frame)):
            if isinstance(event, SpeechEnded) and not event.discard:
                spans.append((event.start_frame * frame_samples, event.end_frame * frame_samples))
    ended = segmenter.flush()
    if ended is not None and not ended.discard:
        spans.append((ended.start_frame * frame_samples, ended.end_frame * frame_samples))
    return spans


def transcribe(conversation: Conversation, cache_dir: Path | None) -> list[Utterance]:
    """The conversation's utterances with tiny.en words (cached by audio hash if asked)."""
    digest = hashlib.sha256(conversation.audio.tobytes()).hexdigest()[:16]
    cache = cache_dir / f"{conversation.name}-{digest}.json" if cache_dir else None
    if cache is not None and cache.is_file():
        raw = json.loads(cache.read_text())
        return [Utterance(u["start"], u["end"], tuple(Word(**w) for w in u["words"])) for u in raw]
    from server.transcription import AsrRequest

    engine = _engine()
    spans = utterance_spans(conversation.audio)
    utterances: list[Utterance] = []
    for first in range(0, len(spans), 8):
        batch = spans[first : first + 8]
        requests = [AsrRequest(conversation.audio[a:b]) for a, b in batch]
        for (a, b), result in zip(batch, engine.transcribe_batch(requests), strict=True):
            words = tuple(Word(w.text, w.start_s, w.end_s) for w in result.words)
            utterances.append(Utterance(a, b, words))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        payload = [
            {"start": u.start_sample, "end": u.end_sample, "words": [asdict(w) for w in u.words]}
            for u in utterances
        ]
        cache.write_text(json.dumps(payload))
    return utterances


_ENGINE: list[Any] = []


def _engine() -> Any:
    if not _ENGINE:
        from server.app import builtin_model_dir
        from server.asr import WhisperEngine

        engine = WhisperEngine(builtin_model_dir(), name="tiny.en", cpu_threads=2, workers=1)
        _ENGINE.append(engine)
    return _ENGINE[0]


# ---------------------------------------------------------------- speaker pass and scoring


def label_words(
    conversation: Conversation,
    utterances: Sequence[Utterance],
    make_tracker: Callable[[], Any],
) -> tuple[list[tuple[float, float, int]], int, float]:
    """(abs start, abs end, speaker) per word, speakers found, CPU seconds of the speaker part."""
    tracker = make_tracker()
    out: list[tuple[float, float, int]] = []
    cpu_s = 0.0
    for utt in utterances:
        audio = conversation.audio[utt.start_sample : utt.end_sample]
        spans = [(w.start_s, w.end_s) for w in utt.words]
        began = time.process_time()
        labels = tracker.assign(audio, spans)
        cpu_s += time.process_time() - began
        base = utt.start_sample / SAMPLE_RATE_HZ
        out += [
            (base + s, base + e, lab.speaker) for (s, e), lab in zip(spans, labels, strict=True)
        ]
    return out, int(tracker.speakers), cpu_s


def word_truth(conversation: Conversation, start_s: float, end_s: float) -> frozenset[str]:
    mid = (start_s + end_s) / 2
    speaking = {t.speaker for t in conversation.turns if any(a <= mid < b for a, b in t.speech_s)}
    if not speaking:
        speaking = {t.speaker for t in conversation.turns if t.start_s <= mid < t.end_s}
    if not speaking:
        nearest = min(
            conversation.turns, key=lambda t: min(abs(mid - t.start_s), abs(mid - t.end_s))
        )
        speaking = {nearest.speaker}
    return frozenset(speaking)


def best_mapping(
    hyps: Sequence[int], refs: Sequence[str], score: Callable[[dict[int, str]], float]
) -> tuple[dict[int, str], float]:
    """The one-to-one hyp -> ref mapping with the highest score (the 7 most used hyps)."""
    counts: dict[int, int] = {}
    for h in hyps:
        counts[h] = counts.get(h, 0) + 1
    labels = sorted(counts, key=lambda h: -counts[h])[:7]
    slots: list[int | None] = [*labels, *([None] * len(refs))]
    best: dict[int, str] = {}
    best_score = -1.0
    for chosen in itertools.permutations(slots, len(refs)):
        mapping = {h: r for h, r in zip(chosen, refs, strict=True) if h is not None}
        value = score(mapping)
        if value > best_score:
            best, best_score = mapping, value
    return best, best_score


def word_accuracy(conversation: Conversation, words: Sequence[tuple[float, float, int]]) -> float:
    if not words:
        return 0.0
    truths = [word_truth(conversation, s, e) for s, e, _ in words]
    labels = [lab for _, _, lab in words]
    single: dict[tuple[int, str], int] = {}
    multi: list[tuple[int, frozenset[str]]] = []
    for lab, truth in zip(labels, truths, strict=True):
        if len(truth) == 1:
            key = (lab, next(iter(truth)))
            single[key] = single.get(key, 0) + 1
        else:
            multi.append((lab, truth))

    def score(mapping: dict[int, str]) -> float:
        hits = sum(single.get((h, r), 0) for h, r in mapping.items())
        return hits + sum(1 for lab, truth in multi if mapping.get(lab) in truth)

    _, correct = best_mapping(labels, conversation.speakers, score)
    return correct / len(words)


def diarization_error(
    conversation: Conversation, words: Sequence[tuple[float, float, int]]
) -> tuple[float, float, float, float]:
    """(DER, missed, false alarm, confusion), each a fraction of scored reference speech."""
    n = int(conversation.duration_s / FRAME_S) + 1
    refs = conversation.speakers
    ref = np.zeros((len(refs), n), dtype=bool)
    scored = np.ones(n, dtype=bool)
    collar = int(COLLAR_S / FRAME_S)
    for turn in conversation.turns:
        row = refs.index(turn.speaker)
        for a, b in turn.speech_s:
            i, j = int(a / FRAME_S), int(b / FRAME_S)
            ref[row, i:j] = True
            for edge in (i, j):
                scored[max(0, edge - collar) : edge + collar] = False
    labels = sorted({lab for _, _, lab in words})
    hyp = np.zeros((len(labels), n), dtype=bool)
    last_end: dict[int, float] = {}
    for start, end, lab in sorted(words):
        row = labels.index(lab)
        begin = start
        if lab in last_end and start - last_end[lab] < HYP_JOIN_S:
            begin = last_end[lab]
        hyp[row, int(begin / FRAME_S) : int(end / FRAME_S) + 1] = True
        last_end[lab] = max(end, last_end.get(lab, end))
    ref_s, hyp_s = ref[:, scored], hyp[:, scored]
    overlap = {
        (h, r): int(np.sum(hyp_s[i] & ref_s[j]))
        for i, h in enumerate(labels)
        for j, r in enumerate(refs)
    }

    def score(mapping: dict[int, str]) -> float:
        return float(sum(overlap[(h, r)] for h, r in mapping.items()))

    mapping, _ = best_mapping([lab for _, _, lab in words], refs, score)
    n_ref = ref_s.sum(axis=0)
    n_hyp = hyp_s.sum(axis=0)
    correct = np.zeros_like(n_ref)
    for h, r in mapping.items():
        correct += hyp_s[labels.index(h)] & ref_s[refs.index(r)]
    total = max(1, int(n_ref.sum()))
    missed = float(np.maximum(0, n_ref - n_hyp).sum()) / total
    false_alarm = float(np.maximum(0, n_hyp - n_ref).sum()) / total
    confusion = float((np.minimum(n_ref, n_hyp) - correct).sum()) / total
    return missed + false_alarm + confusion, missed, false_alarm, confusion


def score_conversation(
    conversation: Conversation, utterances: Sequence[Utterance], make_tracker: Callable[[], Any]
) -> Scored:
    words, found, cpu_s = label_words(conversation, utterances, make_tracker)
    der, missed, false_alarm, confusion = diarization_error(conversation, words)
    return Scored(
        name=conversation.name,
        speakers=len(conversation.speakers),
        duration_s=conversation.duration_s,
        words=len(words),
        word_accuracy=word_accuracy(conversation, words),
        der=der,
        missed=missed,
        false_alarm=false_alarm,
        confusion=confusion,
        found=found,
        cpu_s=cpu_s,
        labels=[lab for _, _, lab in words],
    )


# ---------------------------------------------------------------- reporting


def summary(rows: Sequence[Scored]) -> dict[str, Any]:
    words = sum(r.words for r in rows)
    return {
        "conversations": len(rows),
        "audio_s": round(sum(r.duration_s for r in rows), 1),
        "words": words,
        "word_accuracy_mean": round(statistics.fmean(r.word_accuracy for r in rows), 4),
        "word_accuracy_min": round(min(r.word_accuracy for r in rows), 4),
        "word_accuracy_pooled": round(
            sum(r.word_accuracy * r.words for r in rows) / max(1, words), 4
        ),
        "der": round(statistics.fmean(r.der for r in rows), 4),
        "missed": round(statistics.fmean(r.missed for r in rows), 4),
        "false_alarm": round(statistics.fmean(r.false_alarm for r in rows), 4),
        "confusion": round(statistics.fmean(r.confusion for r in rows), 4),
        "found_mean": round(statistics.fmean(r.found for r in rows), 2),
        "found_exact": round(statistics.fmean(r.found == r.speakers for r in rows), 2),
        "cpu_ms_per_audio_s": round(
            1000 * sum(r.cpu_s for r in rows) / sum(r.duration_s for r in rows), 2
        ),
    }


def table(by_count: dict[int, dict[str, Any]]) -> str:
    head = (
        "| speakers | convs | audio s | words | word acc mean / pooled (min) "
        "| DER (miss / FA / conf) "
        "| found (exact) | CPU ms per audio s |"
    )
    lines = [head, "|" + "---|" * 8]
    for count, s in by_count.items():
        lines.append(
            f"| {count} | {s['conversations']} | {s['audio_s']:.0f} | {s['words']} "
            f"| {100 * s['word_accuracy_mean']:.1f} / {100 * s['word_accuracy_pooled']:.1f} %"
            f" ({100 * s['word_accuracy_min']:.1f} %) "
            f"| {100 * s['der']:.1f} % ({100 * s['missed']:.1f} / {100 * s['false_alarm']:.1f}"
            f" / {100 * s['confusion']:.1f}) | {s['found_mean']:.1f}"
            f" ({100 * s['found_exact']:.0f} %) | {s['cpu_ms_per_audio_s']:.1f} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- tuning


class CachingEmbedder:
    """Wraps the encoder: the same audio piece is embedded once (for threshold sweeps)."""

    def __init__(self, encoder: Any) -> None:
        self._encoder = encoder
        self._cache: dict[tuple[int, str, float, float, bool], Any] = {}

    def embed_windows(
        self,
        audio: Audio,
        window_s: float = 1.6,
        hop_s: float = 0.8,
        min_coverage: float = 0.75,
        *,
        fit_tail: bool = False,
    ) -> Any:
        key = (len(audio), hashlib.sha1(audio.tobytes()).hexdigest(), window_s, hop_s, fit_tail)
        if key not in self._cache:
            self._cache[key] = self._encoder.embed_windows(
                audio, window_s, hop_s, min_coverage, fit_tail=fit_tail
            )
        return self._cache[key]


def tune_grid() -> Iterator[dict[str, Any]]:
    for new, split, found_s, context in itertools.product(
        (0.65, 0.7, 0.75, 0.8), (0.55, 0.6, 0.65, 0.7, 0.75), (1.5, 2.5, 4.0), (2, 3)
    ):
        yield {
            "new_speaker_similarity": new,
            "split_similarity": split,
            "min_new_speaker_s": found_s,
            "change_context_windows": context,
        }


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench diarize", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--weights", type=Path, default=os.environ.get(WEIGHTS_ENV))
    parser.add_argument("--shared", type=Path, default=SHARED_DIR)
    parser.add_argument("--speakers", type=int, nargs="+", default=list(SPEAKER_COUNTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--tune", action="store_true", help="sweep thresholds on the tuning seeds")
    parser.add_argument("--cache", type=Path, default=None, help="cache ASR words in this folder")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--hop-s", type=float, default=None)
    args = parser.parse_args(argv)
    if args.weights is None:
        from cache.registry import fetch
        from cache.store import default_cache_dir

        args.weights = fetch("resemblyzer-encoder", default_cache_dir()) / "pretrained.pt"
    if not Path(args.weights).is_file():
        print(
            f"speaker weights not found ({args.weights}); pass --weights PATH or set {WEIGHTS_ENV} "
            "to resemblyzer's pretrained.pt",
            file=sys.stderr,
        )
        return 2
    from server.speakers.cluster import SpeakerTracker, TrackerConfig
    from server.speakers.encoder import SpeakerEncoder

    encoder = SpeakerEncoder.load(Path(args.weights))
    base = TrackerConfig() if args.hop_s is None else replace(TrackerConfig(), hop_s=args.hop_s)
    seeds = args.seeds or list(TUNE_SEEDS if args.tune else HELD_OUT_SEEDS)
    work: list[tuple[Conversation, list[Utterance]]] = []
    for count in args.speakers:
        for seed in seeds:
            conversation = compose(args.shared, count, seed)
            work.append((conversation, transcribe(conversation, args.cache)))
    if args.tune:
        embedder = CachingEmbedder(encoder)
        results = []
        for overrides in tune_grid():
            config = replace(base, **overrides)

            def tracker(config: TrackerConfig = config) -> SpeakerTracker:
                return SpeakerTracker(embedder, config)

            rows = [score_conversation(c, u, tracker) for c, u in work]
            per = {
                n: statistics.fmean(r.word_accuracy for r in rows if r.speakers == n)
                for n in args.speakers
            }
            results.append((statistics.fmean(per.values()), min(per.values()), overrides, per))
        results.sort(key=lambda item: (-item[0], -item[1]))
        for mean, worst, overrides, per in results[:10]:
            shown = " ".join(f"{n}spk {100 * v:.1f}" for n, v in per.items())
            print(f"mean {100 * mean:.1f} % worst {100 * worst:.1f} %  {overrides}  ({shown})")
        if args.json:
            args.json.write_text(
                json.dumps([{"mean": m, "per": p, **o} for m, _, o, p in results], indent=1)
            )
        return 0
    rows = [score_conversation(c, u, lambda: SpeakerTracker(encoder, base)) for c, u in work]
    by_count = {n: summary([r for r in rows if r.speakers == n]) for n in args.speakers}
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    print(f"seeds {seeds}; OPENBLAS_NUM_THREADS={blas}; tracker {asdict(base)}")
    print(table(by_count))
    if args.json:
        payload = {
            "seeds": seeds,
            "openblas_num_threads": blas,
            "config": asdict(base),
            "summary": {str(n): s for n, s in by_count.items()},
            "conversations": [{k: v for k, v in asdict(r).items() if k != "labels"} for r in rows],
        }
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
