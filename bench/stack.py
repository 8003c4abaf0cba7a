"""`python -m bench stack`: the serving stack of two checkouts side by side (before/after).

For each target (a name and a checkout directory; the current tree by default, and e.g. a
`git worktree` of the commit before uvicorn), a server is started on the built-in model and
measured, the targets taking turns round after round so that a busy machine weighs on each
alike:

- memory per idle session: RSS with `--idle` sessions open (connected, nothing sent) minus
  RSS before them, over their number;
- connections per second: `--connections` sessions opened and closed (handshake,
  CloseStream, Metadata, close), `--concurrency` at a time;
- one stream's final latency: ../shared/audio streamed at real time (bench.drivers), final
  arrival minus when the last sample of its span was sent, p50 and p95.

The same interpreter and dependencies run every checkout (`python -m server` from its
directory), so only the code differs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from websockets.asyncio.client import connect

from bench.drivers import PaceSettings, stream_ours
from bench.metrics_calc import final_latencies_s, percentile
from bench.workload import client_streams, load_files
from tests.support.paths import AUDIO_DIR, REPO_ROOT
from tests.support.server import ServerProcess

LISTEN = "/v1/listen?encoding=linear16&sample_rate=16000"
CLOSE_STREAM = json.dumps({"type": "CloseStream"})


@dataclass
class Sample:
    idle_kib_per_session: float
    connections_per_s: float
    final_p50_s: float | None
    final_p95_s: float | None


@dataclass
class TargetResult:
    name: str
    checkout: str
    samples: list[Sample] = field(default_factory=list)

    def median(self, attr: str) -> float | None:
        values = [getattr(s, attr) for s in self.samples if getattr(s, attr) is not None]
        return statistics.median(values) if values else None


def start(checkout: Path, log_path: Path) -> ServerProcess:
    return ServerProcess(
        [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0",
         "--idle-timeout-s", "600", "--max-sessions", "2000"],
        cwd=checkout,
        log_path=log_path,
    )  # fmt: skip


async def idle_kib_per_session(server: ServerProcess, sessions: int) -> float:
    before = server.rss_bytes()
    opened = []
    try:
        for _ in range(sessions):
            opened.append(await connect(server.ws_url + LISTEN, ping_interval=None, max_size=None))
        await asyncio.sleep(1.0)  # let the server settle its per-connection state
        after = server.rss_bytes()
    finally:
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    return (after - before) / sessions / 1024


async def connections_per_s(server: ServerProcess, total: int, concurrency: int) -> float:
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with semaphore, connect(server.ws_url + LISTEN, ping_interval=None) as ws:
            await ws.send(CLOSE_STREAM)
            async for _ in ws:  # Metadata, then the server's close
                pass

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(total)))
    return total / (time.monotonic() - started)


async def final_latency(server: ServerProcess) -> tuple[float | None, float | None]:
    files = load_files(AUDIO_DIR)
    (stream,) = client_streams(files, 1, duration_s=60.0)
    result = await stream_ours(server.ws_url, stream, PaceSettings(start_wall_s=time.monotonic()))
    latencies = final_latencies_s(result.captions, result.send_log)
    return percentile(latencies, 50), percentile(latencies, 95)


async def measure(server: ServerProcess, args: argparse.Namespace) -> Sample:
    kib = await idle_kib_per_session(server, args.idle)
    rate = await connections_per_s(server, args.connections, args.concurrency)
    p50, p95 = await final_latency(server)
    return Sample(kib, rate, p50, p95)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench stack", description=__doc__)
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a checkout to measure (repeatable; default: this tree as 'current')",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--idle", type=int, default=200, help="idle sessions to hold")
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    targets = [TargetResult(*item.split("=", 1)) for item in args.target] or [
        TargetResult("current", str(REPO_ROOT))
    ]
    logs = REPO_ROOT / "bench/results/logs"
    for round_index in range(args.rounds):
        for target in targets:
            server = start(Path(target.checkout), logs / f"stack-{target.name}.log")
            try:
                sample = asyncio.run(measure(server, args))
            finally:
                server.stop()
            target.samples.append(sample)
            print(f"round {round_index + 1} {target.name}: {sample}", file=sys.stderr, flush=True)
    print(f"{'target':<10} {'KiB/idle session':>17} {'connections/s':>14} {'final p50/p95 s':>16}")
    for target in targets:
        p50, p95 = target.median("final_p50_s"), target.median("final_p95_s")
        latency = f"{p50:.2f}/{p95:.2f}" if p50 is not None and p95 is not None else "-"
        print(
            f"{target.name:<10} {target.median('idle_kib_per_session') or 0:>17.1f} "
            f"{target.median('connections_per_s') or 0:>14.1f} {latency:>16}"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(t) for t in targets], indent=2) + "\n")
    return 0
