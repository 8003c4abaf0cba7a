"""`python -m bench.soak`: N sessions reconnecting for M minutes; server RSS, fds, errors.

Each of `--sessions` clients streams one shared file at real time, sends CloseStream, waits
for the close, checks the transcript, and reconnects, until `--minutes` have passed. A
sampler records the server's RSS, open file descriptors, threads and live sessions every
`--sample-s` seconds; every server log line at ERROR or above and every traceback counts
as a server error. The result is a table on stdout and a JSON document (`--json`).

The server is started by the tests' launcher (tests.support.server), which keeps its log.

Errors: `ServerStartError` (the server exited or never printed its ready line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shlex
import sys
import time
import wave
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import websockets

from server.protocol import Error, Results, from_json
from tests.support.paths import SHARED_DIR
from tests.support.server import ServerProcess, start_server

DEFAULT_FILE = SHARED_DIR / "audio" / "jfk_inaugural.wav"
CLOSE_STREAM = json.dumps({"type": "CloseStream"})


# ---------------------------------------------------------------------------- soak


@dataclass(frozen=True)
class SoakSettings:
    sessions: int = 8
    minutes: float = 5.0
    sample_s: float = 10.0
    file: Path = DEFAULT_FILE
    chunk_ms: int = 100
    expect: str = "ask not what your country can do for you"
    server_args: tuple[str, ...] = ()


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    fds: int
    threads: int
    sessions: int
    completed: int
    errors: int


@dataclass
class SoakTotals:
    completed: int = 0
    refused: int = 0
    wrong_text: int = 0
    bad_close: dict[str, int] = field(default_factory=dict)
    client_errors: dict[str, int] = field(default_factory=dict)
    error_messages: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return (
            self.wrong_text
            + sum(self.bad_close.values())
            + sum(self.client_errors.values())
            + sum(self.error_messages.values())
        )


def read_pcm(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: need 16-bit mono PCM")
        return w.readframes(w.getnframes()), w.getframerate()


def _normalized(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


async def one_session(
    url: str, pcm: bytes, rate_hz: int, chunk_ms: int
) -> tuple[str, int, list[str]]:
    """Stream `pcm` at real time, CloseStream, read to the close: (transcript, code, errors)."""
    step = rate_hz * 2 * chunk_ms // 1000
    texts: list[str] = []
    errors: list[str] = []
    async with websockets.connect(url, max_size=None, open_timeout=30) as ws:

        async def send() -> None:
            start = time.monotonic()
            for i, offset in enumerate(range(0, len(pcm), step)):
                await ws.send(pcm[offset : offset + step])
                delay_s = start + (i + 1) * chunk_ms / 1000 - time.monotonic()
                if delay_s > 0:
                    await asyncio.sleep(delay_s)  # real-time pacing, not synchronisation
            await ws.send(CLOSE_STREAM)

        sender = asyncio.create_task(send())
        try:
            async for raw in ws:
                message = from_json(raw if isinstance(raw, str) else raw.decode())
                if isinstance(message, Results) and message.is_final:
                    texts.append(message.transcript)
                elif isinstance(message, Error):
                    errors.append(message.code)
        except websockets.ConnectionClosed:
            pass
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
            await sender
        code = ws.close_code or 1006
    return " ".join(texts), code, errors


async def _client(
    url: str, pcm: bytes, rate_hz: int, settings: SoakSettings, end_s: float, totals: SoakTotals
) -> None:
    expect = _normalized(settings.expect)
    while time.monotonic() < end_s:
        try:
            text, code, errors = await one_session(url, pcm, rate_hz, settings.chunk_ms)
        except (OSError, websockets.WebSocketException, TimeoutError) as exc:
            kind = type(exc).__name__
            totals.client_errors[kind] = totals.client_errors.get(kind, 0) + 1
            continue
        if code == 1013:  # refused (OVERLOADED / SESSION_LIMIT): back off, then retry
            totals.refused += 1
            await asyncio.sleep(1.0)
            continue
        totals.completed += 1
        if code != 1000:
            totals.bad_close[str(code)] = totals.bad_close.get(str(code), 0) + 1
        for error in errors:
            totals.error_messages[error] = totals.error_messages.get(error, 0) + 1
        if expect not in _normalized(text):
            totals.wrong_text += 1


def _sample(server: ServerProcess, t_s: float, totals: SoakTotals) -> Sample:
    sessions = server.readiness().get("sessions", 0)
    return Sample(
        t_s=round(t_s, 1),
        rss_mb=round(server.rss_bytes() / 2**20, 1),
        fds=server.open_fds(),
        threads=server.threads(),
        sessions=int(sessions) if isinstance(sessions, int) else 0,
        completed=totals.completed,
        errors=totals.errors + len(server.error_lines()),
    )


async def soak(server: ServerProcess, settings: SoakSettings) -> dict[str, object]:
    pcm, rate_hz = read_pcm(settings.file)
    url = f"{server.ws_url}/v1/listen?encoding=linear16&sample_rate={rate_hz}"
    totals = SoakTotals()
    started = time.monotonic()
    end_s = started + settings.minutes * 60
    samples = [_sample(server, 0.0, totals)]
    clients = [
        asyncio.create_task(_client(url, pcm, rate_hz, settings, end_s, totals))
        for _ in range(settings.sessions)
    ]
    done = asyncio.gather(*clients)
    while not done.done():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(done), settings.sample_s)
        samples.append(await asyncio.to_thread(_sample, server, time.monotonic() - started, totals))
    await done
    rss = [s.rss_mb for s in samples]
    fds = [s.fds for s in samples]
    # Inference makes RSS swing by a batch's working memory; the lowest sample of each
    # quarter of the run shows the trend underneath (flat when nothing leaks).
    quarter = max(1, len(samples) // 4)
    floors = [min(rss[i : i + quarter]) for i in range(0, len(rss), quarter)][:4]
    return {
        "settings": {**asdict(settings), "file": str(settings.file)},
        "wall_s": round(time.monotonic() - started, 1),
        "sessions_completed": totals.completed,
        "sessions_refused": totals.refused,
        "wrong_text": totals.wrong_text,
        "bad_close": totals.bad_close,
        "client_errors": totals.client_errors,
        "error_messages": totals.error_messages,
        "server_error_lines": server.error_lines()[:20],
        "rss_mb": {
            "start": rss[0],
            "end": rss[-1],
            "max": max(rss),
            "floor_by_quarter": floors,
        },
        "fds": {"start": fds[0], "end": fds[-1], "max": max(fds)},
        "samples": [asdict(s) for s in samples],
    }


def format_table(result: Mapping[str, object]) -> str:
    samples = result["samples"]
    assert isinstance(samples, list)
    names = ("t_s", "rss_mb", "fds", "threads", "sessions", "done", "errors")
    widths = (7, 8, 5, 7, 8, 6, 6)
    rows = [" ".join(f"{n:>{w}}" for n, w in zip(names, widths, strict=True))]
    for s in samples:
        rows.append(
            f"{s['t_s']:>7.1f} {s['rss_mb']:>8.1f} {s['fds']:>5} {s['threads']:>7} "
            f"{s['sessions']:>8} {s['completed']:>6} {s['errors']:>6}"
        )
    rss, fds = result["rss_mb"], result["fds"]
    assert isinstance(rss, dict) and isinstance(fds, dict)
    rows.append(
        f"sessions completed {result['sessions_completed']} (refused "
        f"{result['sessions_refused']}), wrong text {result['wrong_text']}, "
        f"bad closes {result['bad_close']}, client errors {result['client_errors']}, "
        f"Error messages {result['error_messages']}, "
        f"server error lines {len(result['server_error_lines'])}"  # type: ignore[arg-type]
    )
    rows.append(
        f"RSS MB start {rss['start']} end {rss['end']} max {rss['max']}, lowest per quarter "
        f"{rss['floor_by_quarter']}; fds start {fds['start']} end {fds['end']} "
        f"max {fds['max']}"
    )
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--sessions", type=int, default=8, help="concurrent clients")
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to keep going")
    parser.add_argument("--sample-s", type=float, default=10.0, help="sampling interval")
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="16-bit mono WAV")
    parser.add_argument(
        "--expect", default=SoakSettings.expect, help="text every transcript must contain"
    )
    parser.add_argument(
        "--server-args", default="", help="extra flags for python -m server (one string)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = SoakSettings(
        sessions=args.sessions,
        minutes=args.minutes,
        sample_s=args.sample_s,
        file=args.file,
        expect=args.expect,
        server_args=tuple(shlex.split(args.server_args)),
    )
    server = start_server(*settings.server_args)
    try:
        result = asyncio.run(soak(server, settings))
    finally:
        server.stop()
    print(format_table(result))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0 if result["wrong_text"] == 0 and not result["bad_close"] else 1


if __name__ == "__main__":
    sys.exit(main())
