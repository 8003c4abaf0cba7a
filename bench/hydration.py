"""`python -m bench.hydration`: model hydration throughput, ours vs boto3, against one local S3.

Starts a moto S3 server in a child process on 127.0.0.1, pushes the model once with
`cache.push`, then per repetition downloads the same copy into fresh directories with:

  ours           cache.store.hydrate: concurrent ranged GETs, every part and file sha256-checked,
                 fsync, atomic promote (the numbers include all of that)
  boto3-tm       boto3 TransferManager with every file submitted at once (what `aws s3 cp
                 --recursive` does); defaults: 10 threads, 8 MiB parts; no verification
  boto3-file     boto3 `download_file` per file, one after the other
  ours-warm      hydrate again on the now complete cache: manifest GET + size checks only

The order of the tools rotates between repetitions; one unmeasured warm-up run of each comes
first. Prints a table (per run and medians) and writes JSON with --json PATH.

Caveat: moto answers every ranged GET by copying the whole object under a per-object lock,
so here the server is the bottleneck and parts of one file are served one at a time; the
numbers compare client overhead on the same server, not what B2 or S3 would deliver.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferManager  # type: ignore[import-untyped,unused-ignore]
from botocore.config import Config

from cache.manifest import Manifest
from cache.push import push
from cache.s3 import TransferConfig
from cache.store import HydrationProgress, hydrate
from server.app import builtin_model_dir
from tests.support.locals3 import moto_server, s3_client

KEY_ID = "bench-key-id"
SECRET = "bench-secret"  # moto accepts any key
BUCKET = "bench-models"
PREFIX = "whisper/model"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Run:
    rep: int
    tool: str
    seconds: float
    bytes: int

    @property
    def mib_per_s(self) -> float:
        return self.bytes / MIB / self.seconds if self.seconds > 0 and self.bytes else 0.0


def _serve_moto(conn: Connection) -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with moto_server() as (server, _):
        conn.send(server.get_host_and_port()[1])
        conn.recv()


@contextlib.contextmanager
def moto_process() -> Iterator[str]:
    """A moto S3 server in its own process (so it does not share our GIL); yields its URL."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve_moto, args=(child,), daemon=True)
    process.start()
    try:
        port = parent.recv()
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.terminate()


def _environ() -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}


def _boto_client(endpoint: str) -> Any:
    config = Config(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=16,
    )
    return s3_client(endpoint, KEY_ID, SECRET, config)


class Bench:
    """Runs each tool against the pushed model; every cold run writes to a fresh directory."""

    def __init__(self, endpoint: str, manifest: Manifest, scratch: Path, concurrency: int) -> None:
        self.endpoint = endpoint
        self.manifest = manifest
        self.scratch = scratch
        self.concurrency = concurrency
        self.client = _boto_client(endpoint)
        self._count = 0
        self._warm_cache: Path | None = None

    def _fresh(self) -> Path:
        self._count += 1
        path = self.scratch / f"run-{self._count}"
        path.mkdir()
        return path

    def _timed(self, action: Callable[[], object]) -> float:
        started = time.perf_counter()
        action()
        return time.perf_counter() - started

    def ours(self) -> tuple[float, int]:
        cache = self._fresh()
        progress = HydrationProgress()
        seconds = self._timed(lambda: asyncio.run(self._hydrate(cache, progress)))
        if self._warm_cache is not None:
            shutil.rmtree(self._warm_cache)
        self._warm_cache = cache
        return seconds, progress.bytes_total - progress.bytes_reused

    def ours_warm(self) -> tuple[float, int]:
        assert self._warm_cache is not None, "run ours first"
        cache = self._warm_cache
        progress = HydrationProgress()
        seconds = self._timed(lambda: asyncio.run(self._hydrate(cache, progress)))
        return seconds, progress.bytes_total - progress.bytes_reused

    async def _hydrate(self, cache: Path, progress: HydrationProgress) -> Path:
        return await hydrate(
            f"s3://{BUCKET}/{PREFIX}",
            cache,
            endpoint_url=self.endpoint,
            environ=_environ(),
            progress=progress,
            transfer=TransferConfig(max_concurrency=self.concurrency),
        )

    def boto3_transfer_manager(self) -> tuple[float, int]:
        target = self._fresh()

        def run() -> None:
            with TransferManager(self.client) as manager:
                futures = [
                    manager.download(BUCKET, f"{PREFIX}/{entry.path}", str(target / entry.path))
                    for entry in self.manifest.files
                ]
                for future in futures:
                    future.result()

        seconds = self._timed(run)
        shutil.rmtree(target)
        return seconds, self.manifest.total_bytes

    def boto3_download_file(self) -> tuple[float, int]:
        target = self._fresh()

        def run() -> None:
            for entry in self.manifest.files:
                self.client.download_file(
                    BUCKET, f"{PREFIX}/{entry.path}", str(target / entry.path)
                )

        seconds = self._timed(run)
        shutil.rmtree(target)
        return seconds, self.manifest.total_bytes


def median_table(runs: Sequence[Run], tools: Sequence[str]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for tool in tools:
        mine = [r for r in runs if r.tool == tool]
        summary[tool] = {
            "median_s": statistics.median(r.seconds for r in mine),
            "min_s": min(r.seconds for r in mine),
            "max_s": max(r.seconds for r in mine),
            "median_mib_per_s": statistics.median(r.mib_per_s for r in mine),
            "bytes": float(mine[0].bytes),
        }
    return summary


def print_table(runs: Sequence[Run], summary: dict[str, dict[str, float]]) -> None:
    print(f"{'rep':>3}  {'tool':<11} {'seconds':>8} {'MiB/s':>8}")
    for run in runs:
        rate = f"{run.mib_per_s:>8.1f}" if run.bytes else f"{'-':>8}"
        print(f"{run.rep:>3}  {run.tool:<11} {run.seconds:>8.3f} {rate}")
    print()
    print(f"{'tool':<11} {'median s':>9} {'min s':>7} {'max s':>7} {'median MiB/s':>13}")
    for tool, row in summary.items():
        rate = f"{row['median_mib_per_s']:>13.1f}" if row["bytes"] else f"{'-':>13}"
        print(
            f"{tool:<11} {row['median_s']:>9.3f} {row['min_s']:>7.3f} {row['max_s']:>7.3f} {rate}"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hydration",
        description="Hydration throughput of cache.hydrate vs boto3 against a local moto S3.",
    )
    parser.add_argument("--model-dir", type=Path, help="model to push (default: built-in tiny.en)")
    parser.add_argument("--reps", type=int, default=5, help="measured repetitions (5)")
    parser.add_argument("--concurrency", type=int, default=16, help="our parallel GETs (16)")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model_dir: Path = args.model_dir or builtin_model_dir()
    with moto_process() as endpoint, tempfile.TemporaryDirectory(prefix="bench-hyd-") as tmp:
        _boto_client(endpoint).create_bucket(Bucket=BUCKET)
        manifest = asyncio.run(
            push(
                model_dir,
                f"s3://{BUCKET}/{PREFIX}",
                model_name=model_dir.name,
                endpoint_url=endpoint,
                environ=_environ(),
            )
        )
        print(
            f"model {model_dir} ({len(manifest.files)} files, "
            f"{manifest.total_bytes / MIB:.1f} MiB) on moto at {endpoint}",
            file=sys.stderr,
        )
        bench = Bench(endpoint, manifest, Path(tmp), args.concurrency)
        cold: dict[str, Callable[[], tuple[float, int]]] = {
            "ours": bench.ours,
            "boto3-tm": bench.boto3_transfer_manager,
            "boto3-file": bench.boto3_download_file,
        }
        for action in cold.values():  # warm-up: imports, sessions, connection pools
            action()
        runs: list[Run] = []
        names = list(cold)
        for rep in range(1, args.reps + 1):
            shift = (rep - 1) % len(names)
            for name in names[shift:] + names[:shift]:
                seconds, count = cold[name]()
                runs.append(Run(rep, name, seconds, count))
                if name == "ours":
                    seconds, count = bench.ours_warm()
                    runs.append(Run(rep, "ours-warm", seconds, count))
    tools = [*names, "ours-warm"]
    summary = median_table(runs, tools)
    print_table(runs, summary)
    if args.json is not None:
        report = {
            "benchmark": "hydration",
            "model_dir": str(model_dir),
            "model_bytes": manifest.total_bytes,
            "files": len(manifest.files),
            "reps": args.reps,
            "concurrency": args.concurrency,
            "server": "moto ThreadedMotoServer, separate process, 127.0.0.1",
            "host": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "runs": [asdict(r) | {"mib_per_s": r.mib_per_s} for r in runs],
            "summary": summary,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
