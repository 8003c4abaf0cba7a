"""`python -m clients.mic`: live captions from a microphone (PortAudio through sounddevice).

Ctrl-C stops capturing, sends `CloseStream`, waits for the last finals and exits 0. A
dropped connection is retried with exponential backoff; audio captured meanwhile is kept
(up to `--buffer-s`) and sent on reconnect, and transcript times continue across streams.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from clients.cli import (
    EXIT_FAILED,
    EXIT_OK,
    CaptionRouter,
    Interrupts,
    add_stream_arguments,
    run_captioning,
    stream_config,
)
from clients.stream import StreamConfig, StreamError, run_stream
from server.protocol import DecodedMessage

logger = logging.getLogger(__name__)

PREFERRED_RATE_HZ = 16_000
MIN_RATE_HZ = 8_000
MAX_RATE_HZ = 48_000
BLOCK_MS = 100


class MicError(Exception):
    """The microphone cannot be opened (no device, unsupported rate, no PortAudio)."""


class ChunkBuffer:
    """Audio blocks handed from the PortAudio thread to the event loop.

    Holds at most `max_bytes` (the oldest blocks are dropped and counted) so a long outage
    cannot grow memory without bound. `close()` ends `get()` once the buffer is empty.
    Only touch it from the event loop thread (`put` via `call_soon_threadsafe`).
    """

    def __init__(self, max_bytes: int) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._max_bytes = max_bytes
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped_bytes = 0

    def put(self, chunk: bytes) -> None:
        if self._closed:
            return
        self._chunks.append(chunk)
        self._size += len(chunk)
        while self._size > self._max_bytes and len(self._chunks) > 1:
            dropped = self._chunks.popleft()
            self._size -= len(dropped)
            self.dropped_bytes += len(dropped)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def get(self) -> bytes | None:
        """The next block, or None once closed and empty."""
        while not self._chunks:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        return chunk


@dataclass
class Backoff:
    """Reconnect delays: `initial_s`, doubled per failure, capped at `max_s`.

    The count starts over only after a connection stayed up `stable_s`, so a server that
    accepts and at once refuses (1013 overloaded) is not hammered.
    """

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 10.0
    stable_s: float = 10.0
    failures: int = 0
    _opened_at_s: float | None = None

    def opened(self, now_s: float) -> None:
        self._opened_at_s = now_s

    def next_delay_s(self, now_s: float) -> float:
        """The wait before the next attempt, after a failure at `now_s`."""
        if self._opened_at_s is not None and now_s - self._opened_at_s >= self.stable_s:
            self.failures = 0
        self._opened_at_s = None
        self.failures += 1
        return float(min(self.max_s, self.initial_s * self.factor ** (self.failures - 1)))


@dataclass
class _Counter:
    bytes_taken: int = 0


async def _live_audio(buffer: ChunkBuffer, counter: _Counter) -> AsyncIterator[bytes]:
    while (chunk := await buffer.get()) is not None:
        counter.bytes_taken += len(chunk)
        yield chunk


def _sounddevice() -> Any:
    try:
        import sounddevice
    except (ImportError, OSError) as exc:
        raise MicError(
            f"cannot load PortAudio through sounddevice ({exc}); install the 'mic' extra "
            "and the system PortAudio library (Debian: apt-get install libportaudio2)"
        ) from exc
    return sounddevice


def _device(text: str | None) -> int | str | None:
    if text is None:
        return None
    return int(text) if text.isdigit() else text


def choose_rate_hz(sd: Any, device: int | str | None) -> int:
    """16 kHz when the device takes it, else its default rate (the server resamples)."""
    try:
        sd.check_input_settings(
            device=device, channels=1, dtype="int16", samplerate=PREFERRED_RATE_HZ
        )
        return PREFERRED_RATE_HZ
    except (sd.PortAudioError, ValueError) as exc:
        try:
            info = sd.query_devices(device, "input")
        except (sd.PortAudioError, ValueError) as query_exc:
            raise MicError(
                f"no usable input device ({query_exc}); connect a microphone or pick one "
                "from --list-devices with --device"
            ) from query_exc
        rate = int(info["default_samplerate"])
        if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
            raise MicError(
                f"input device {info['name']!r} does not record at 16 kHz and its default "
                f"rate {rate} Hz is outside {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz; pick another "
                "--device"
            ) from exc
        return rate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clients.mic",
        description="Live captions from a microphone through a streamscribe server. "
        "Ctrl-C finishes the stream and exits.",
    )
    parser.add_argument("--device", help="input device number or name (see --list-devices)")
    parser.add_argument(
        "--list-devices", action="store_true", help="list the audio devices and exit"
    )
    parser.add_argument(
        "--buffer-s",
        type=float,
        default=30.0,
        help="audio kept while reconnecting, in seconds (default 30)",
    )
    add_stream_arguments(parser)
    return parser


async def caption_microphone(args: argparse.Namespace, router: CaptionRouter) -> int:
    sd = _sounddevice()
    device = _device(args.device)
    rate_hz = choose_rate_hz(sd, device)
    config = stream_config(args, rate_hz)
    buffer = ChunkBuffer(max_bytes=int(args.buffer_s * config.bytes_per_second))
    interrupts = Interrupts(on_stop=buffer.close)
    interrupts.install()
    loop = asyncio.get_running_loop()

    def on_block(data: Any, frames: int, time: Any, status: Any) -> None:
        if status:
            logger.debug("PortAudio input status: %s", status)
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(buffer.put, bytes(data))

    try:
        stream = sd.RawInputStream(
            samplerate=rate_hz,
            blocksize=rate_hz * BLOCK_MS // 1000,
            device=device,
            channels=1,
            dtype="int16",
            callback=on_block,
        )
    except (sd.PortAudioError, ValueError) as exc:
        raise MicError(f"cannot open the input device: {exc}") from exc
    with stream:
        name = sd.query_devices(stream.device)["name"]
        router.status(f"recording from {name!r} at {rate_hz} Hz; Ctrl-C to stop")
        return await _stream_with_reconnect(config, buffer, interrupts, router)


async def _stream_with_reconnect(
    config: StreamConfig, buffer: ChunkBuffer, interrupts: Interrupts, router: CaptionRouter
) -> int:
    backoff = Backoff()
    counter = _Counter()
    connected_once = False
    loop = asyncio.get_running_loop()
    while True:
        offset_s = counter.bytes_taken / config.bytes_per_second

        def on_message(message: DecodedMessage, raw: str, offset_s: float = offset_s) -> None:
            router.handle(message, raw, offset_s)

        def on_open() -> None:
            nonlocal connected_once
            connected_once = True
            backoff.opened(loop.time())
            router.status(f"connected to {config.url}")

        try:
            await run_stream(config, _live_audio(buffer, counter), on_message, on_open)
        except StreamError as exc:
            if interrupts.stop.is_set() or not exc.retryable or not connected_once:
                raise
            delay_s = backoff.next_delay_s(loop.time())
            router.status(f"{exc}; reconnecting in {delay_s:.1f} s")
            if await interrupts.wait(delay_s):
                return EXIT_OK
            continue
        if buffer.dropped_bytes:
            lost_s = buffer.dropped_bytes / config.bytes_per_second
            router.status(f"note: {lost_s:.1f} s of audio was dropped while disconnected")
        return EXIT_OK


def list_devices() -> int:
    sd = _sounddevice()
    print(sd.query_devices())
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.list_devices:
            return list_devices()
    except MicError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.buffer_s <= 0:
        build_parser().error("--buffer-s must be positive")
    return run_captioning(args, caption_microphone, (MicError, StreamError))


if __name__ == "__main__":
    sys.exit(main())
