"""`python -m clients.file PATH`: stream a media file at real-time pace and print captions."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from clients.audio_file import SAMPLE_RATE_HZ, AudioFileError, pcm16_chunks
from clients.cli import (
    EXIT_FAILED,
    EXIT_OK,
    CaptionRouter,
    Interrupts,
    add_stream_arguments,
    run_captioning,
    stream_config,
)
from clients.stream import StreamError, run_stream


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clients.file",
        description="Stream an audio or video file (anything FFmpeg reads) to a streamscribe "
        "server as live audio and print the captions.",
    )
    parser.add_argument("path", metavar="PATH", help="wav, mp3, flac, m4a, ogg, webm, mp4, ...")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="pace as a multiple of real time; 0 sends as fast as possible (default 1)",
    )
    parser.add_argument(
        "--chunk-ms", type=int, default=100, help="audio per WebSocket frame (default 100)"
    )
    parser.add_argument(
        "--finish-timeout-s",
        type=float,
        default=120.0,
        help="how long to wait for the last finals after the file ends (default 120)",
    )
    add_stream_arguments(parser)
    return parser


async def paced(
    chunks: Iterator[bytes], speed: float, bytes_per_second: int, interrupts: Interrupts
) -> AsyncIterator[bytes]:
    """Yield each chunk when a live microphone would have delivered it (at `speed`x).

    Stops early (so the stream can still finish cleanly) when a stop is requested.
    """
    loop = asyncio.get_running_loop()
    started_s = loop.time()
    sent_bytes = 0
    for chunk in chunks:
        if interrupts.stop.is_set():
            return
        sent_bytes += len(chunk)
        if speed > 0:
            due_s = started_s + sent_bytes / bytes_per_second / speed
            if await interrupts.wait(due_s - loop.time()):
                return
        yield chunk


async def transcribe_file(args: argparse.Namespace, router: CaptionRouter) -> int:
    interrupts = Interrupts()
    interrupts.install()
    config = replace(stream_config(args, SAMPLE_RATE_HZ), finish_timeout_s=args.finish_timeout_s)
    chunks = pcm16_chunks(Path(args.path), chunk_ms=args.chunk_ms)
    first = next(chunks, None)
    if first is None:
        router.status(f"{args.path}: the file contains no audio samples")
        return EXIT_FAILED

    def all_chunks() -> Iterator[bytes]:
        yield first
        yield from chunks

    audio = paced(all_chunks(), args.speed, config.bytes_per_second, interrupts)
    result = await run_stream(config, audio, router.handle)
    duration = f"{result.metadata.duration_s:.1f} s" if result.metadata else "unknown"
    router.status(f"done: sent {result.audio_sent_s:.1f} s of audio, server processed {duration}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.speed < 0:
        build_parser().error("--speed must be 0 (as fast as possible) or positive")
    if args.chunk_ms <= 0:
        build_parser().error("--chunk-ms must be positive")
    return run_captioning(args, transcribe_file, (AudioFileError, StreamError))


if __name__ == "__main__":
    sys.exit(main())
