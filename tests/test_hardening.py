"""Hostile and broken clients against a real server: limits, slow readers, floods, garbage.

The main test runs every hostile client at once while one well-behaved session streams
../shared/audio/jfk_inaugural.wav at real time; that session must still get the right
text in time, each hostile client must get the documented outcome, and the server's
stderr must hold no error line or traceback. A second server with tight limits checks
the session limit (1013), control-message flood (1008) and maximum session length (1008).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import struct
import time
import urllib.request
from base64 import b64encode
from collections.abc import Awaitable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websockets

from tests.support.server import ServerProcess, start_server
from tests.wsclient import Outcome, normalize, read_wav

pytestmark = pytest.mark.integration

LINEAR16 = "/v1/listen?encoding=linear16&sample_rate=16000"
CLOSE_STREAM = json.dumps({"type": "CloseStream"})
KEEP_ALIVE = json.dumps({"type": "KeepAlive"})
JFK_TEXT = "ask not what your country can do for you ask what you can do for your country"

# Gauntlet server settings (each is a flag the test passes).
HANDSHAKE_TIMEOUT_S = 2.0
MAX_FRAME_BYTES = 256 * 1024
MAX_OUTGOING_FINALS = 32
MAX_PENDING_FINALS = 4
MAX_UTTERANCE_S = 25.0
IDLE_CROWD = 300
CONTROL_BURST = 8000  # the non-reader's malformed frames stay within the rate limit

# Limits server settings.
LIMIT_SESSIONS = 2
CONTROL_PER_S = 20
MAX_SESSION_S = 4.0


# ---------------------------------------------------------------------------- raw sockets


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame (masked with a zero key, which leaves the payload as is)."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def upgrade_request(path: str) -> bytes:
    key = b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


@dataclass
class RawClient:
    """A WebSocket client on a bare socket: it reads only when told to, and can RST."""

    sock: socket.socket
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def connect(cls, port: int, path: str, *, stingy: bool = False) -> RawClient:
        """`stingy`: a tiny receive buffer and a small MSS. The MSS also keeps the server's
        send buffer small (Linux sizes it from the MSS, about 200 KiB here instead of
        about 3 MiB on loopback), so that few replies fill it."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if stingy:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(upgrade_request(path))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head[:200]
        return cls(sock, reader, writer)

    def stop_reading(self) -> None:
        self.writer.transport.pause_reading()  # type: ignore[attr-defined]

    async def send(self, opcode: int, payload: bytes) -> None:
        self.writer.write(ws_frame(opcode, payload))
        await self.writer.drain()

    def reset(self) -> None:
        """Vanish with a TCP RST: no close frame, no FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def vanish(self) -> None:
        """Close the TCP connection (FIN) without a WebSocket close frame."""
        self.writer.transport.close()


# ---------------------------------------------------------------------------- clients


@dataclass
class Timed(Outcome):
    """An Outcome plus when each message arrived, relative to the first audio sent."""

    arrivals_s: list[float] = field(default_factory=list)
    request_id: str = ""

    def final_delays_s(self) -> list[float]:
        """For each final: arrival time minus the stream time its span ended."""
        return [
            t - (m["start"] + m["duration"])
            for m, t in zip(self.messages, self.arrivals_s, strict=True)
            if m.get("type") == "Results" and m["is_final"]
        ]


async def paced(
    url: str,
    pcm: bytes,
    *,
    speed: float = 1.0,
    chunk_ms: int = 100,
    close_stream: bool = True,
    rate_hz: int = 16000,
) -> Timed:
    """Stream PCM at `speed` x real time, then CloseStream; collect every reply with times."""
    step = rate_hz * 2 * chunk_ms // 1000
    out = Timed()
    async with websockets.connect(url, max_size=None, open_timeout=60) as ws:
        t0 = time.monotonic()

        async def send() -> None:
            for i, offset in enumerate(range(0, len(pcm), step)):
                await ws.send(pcm[offset : offset + step])
                delay_s = t0 + (i + 1) * chunk_ms / 1000 / speed - time.monotonic()
                await asyncio.sleep(max(0.0, delay_s))  # pacing the workload
            if close_stream:
                await ws.send(CLOSE_STREAM)

        sender = asyncio.create_task(send())
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                assert isinstance(raw, str)
                out.messages.append(json.loads(raw))
                out.arrivals_s.append(time.monotonic() - t0)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
            await sender
        out.close_code = ws.close_code
    for m in out.messages:
        if m.get("type") == "Metadata":
            out.request_id = m["request_id"]
    return out


async def collect(ws: websockets.ClientConnection, out: Outcome, t0: float = 0.0) -> None:
    """Read every message to the close; a Timed outcome also gets arrival times from t0."""
    with contextlib.suppress(websockets.ConnectionClosed):
        async for raw in ws:
            assert isinstance(raw, str)
            out.messages.append(json.loads(raw))
            if isinstance(out, Timed):
                out.arrivals_s.append(time.monotonic() - t0)
    out.close_code = ws.close_code


def assert_error_close(outcome: Outcome, code: str, close_code: int) -> None:
    kinds = [m["type"] for m in outcome.messages]
    assert kinds[-2:] == ["Error", "Metadata"], outcome.messages
    assert outcome.messages[-2]["code"] == code, outcome.messages[-2]
    assert outcome.messages[-2]["message"], "an Error says what to do"
    assert outcome.close_code == close_code, (outcome.close_code, outcome.messages)


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def metric(text: str, name: str) -> float:
    """The value of one sample (`name` with its labels, as exposed) in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} in /metrics")


def wait_log(srv: ServerProcess, pattern: str, **kwargs: Any) -> Awaitable[str | None]:
    return asyncio.to_thread(srv.wait_for, pattern, **kwargs)


def session_end(srv: ServerProcess, request_id: str) -> Awaitable[str | None]:
    return wait_log(srv, rf"\[{re.escape(request_id)}\] session end", timeout_s=60)


@pytest.fixture(scope="module")
def jfk(audio_dir: Path) -> bytes:
    pcm, rate, channels = read_wav(audio_dir / "jfk_inaugural.wav")
    assert (rate, channels) == (16000, 1)
    return pcm


@pytest.fixture(scope="module")
def speech(audio_dir: Path) -> bytes:
    pcm, rate, _ = read_wav(audio_dir / "ljspeech_LJ001-0001.wav")
    assert rate == 16000
    return pcm


# ---------------------------------------------------------------------------- gauntlet


@pytest.fixture(scope="module")
def gauntlet_server() -> Iterator[ServerProcess]:
    # The session limit is the default one, from the resources: an idle crowd of 300 must
    # not lock the live session out.
    srv = start_server(
        "--handshake-timeout-s", str(HANDSHAKE_TIMEOUT_S),
        "--max-frame-bytes", str(MAX_FRAME_BYTES),
        "--max-control-per-s", str(CONTROL_BURST // 2),
        "--max-outgoing-finals", str(MAX_OUTGOING_FINALS),
        "--max-pending-finals", str(MAX_PENDING_FINALS),
        "--max-utterance-s", str(MAX_UTTERANCE_S),
        "--max-queue-wait-s", "60",
    )  # fmt: skip
    yield srv
    srv.stop()


class Gauntlet:
    """The hostile clients; each asserts its own outcome. `done` ends the open-ended ones."""

    def __init__(self, srv: ServerProcess, jfk: bytes, speech: bytes) -> None:
        self.srv = srv
        self.jfk = jfk
        self.speech = speech
        self.done = asyncio.Event()
        self.report: dict[str, object] = {}

    async def open_crowd(self) -> list[websockets.ClientConnection]:
        """Hundreds of sessions that will only send KeepAlive; memory per idle session."""
        before = self.srv.rss_bytes()
        url = self.srv.ws_url + LINEAR16
        conns: list[websockets.ClientConnection] = []
        for _ in range(0, IDLE_CROWD, 25):  # arriving 25 at a time, as a busy edge would
            conns += await asyncio.gather(*(websockets.connect(url) for _ in range(25)))
        ready = await asyncio.to_thread(self.srv.readiness)
        assert ready["sessions"] == IDLE_CROWD, ready
        after = self.srv.rss_bytes()
        self.report["idle_sessions"] = IDLE_CROWD
        self.report["idle_rss_per_session_kib"] = round((after - before) / IDLE_CROWD / 1024, 1)
        self.report["idle_fds"] = self.srv.open_fds()
        return conns

    async def hold_crowd(self, conns: list[websockets.ClientConnection]) -> None:
        """Keep the crowd alive until `done`, then close every session cleanly."""
        while not self.done.is_set():
            await asyncio.gather(*(ws.send(KEEP_ALIVE) for ws in conns))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), 3.0)
        outcomes = [Outcome() for _ in conns]
        readers = [
            asyncio.create_task(collect(ws, o)) for ws, o in zip(conns, outcomes, strict=True)
        ]
        await asyncio.gather(*(ws.send(CLOSE_STREAM) for ws in conns))
        await asyncio.gather(*readers)
        codes = {o.close_code for o in outcomes}
        assert codes == {1000}, f"idle sessions closed with {codes}"
        assert all(o.messages and o.messages[-1]["type"] == "Metadata" for o in outcomes)

    async def slowloris(self, count: int = 20) -> None:
        """Headers byte by byte, and a silent socket: dropped after the handshake timeout."""

        async def one(trickle: bool) -> float:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.srv.port)
            started = time.monotonic()
            request = upgrade_request(LINEAR16)

            async def drip() -> None:
                for byte in request:
                    writer.write(bytes([byte]))
                    await asyncio.sleep(0.2)  # the attack itself: one byte per 200 ms
                raise AssertionError("the whole slow request got through")

            dripper = asyncio.create_task(drip()) if trickle else None
            try:
                data = await asyncio.wait_for(reader.read(), 30)
            except ConnectionResetError:
                data = b""
            elapsed_s = time.monotonic() - started
            if dripper is not None:
                assert not dripper.done(), "the server must drop it before the request ends"
                dripper.cancel()
            writer.close()
            assert not data.startswith(b"HTTP/1.1 101"), data[:100]
            return elapsed_s

        waits = await asyncio.gather(*(one(trickle=i > 0) for i in range(count)))
        self.report["slowloris_dropped_after_s"] = [round(min(waits), 2), round(max(waits), 2)]
        assert min(waits) >= HANDSHAKE_TIMEOUT_S * 0.8, waits
        assert max(waits) <= HANDSHAKE_TIMEOUT_S + 5, waits

    async def oversized_frame(self) -> None:
        async with websockets.connect(self.srv.ws_url + LINEAR16, max_size=None) as ws:
            await ws.send(bytes(32000))
            await ws.send(bytes(MAX_FRAME_BYTES + 1))
            out = Outcome()
            await collect(ws, out)
        assert out.close_code == 1009, out

    async def abrupt_disconnects(self) -> None:
        """RST and FIN without a close frame, with an utterance open and with one pending."""
        half = self.speech[: len(self.speech) // 2]
        whole = self.speech + bytes(32000)  # trailing silence: a final is asked for
        for audio, vanish in ((half, "reset"), (half, "fin"), (whole, "reset"), (whole, "fin")):
            client = await RawClient.connect(self.srv.port, LINEAR16)
            for offset in range(0, len(audio), 8000):
                await client.send(0x2, audio[offset : offset + 8000])
            client.reset() if vanish == "reset" else client.vanish()

    async def fast_talker(self) -> None:
        """A client speaking at 20x real time is served in full."""
        out = await paced(self.srv.ws_url + LINEAR16, self.jfk, speed=20)
        assert out.close_code == 1000, out.messages[-3:]
        assert JFK_TEXT in normalize(out.transcript), out.transcript

    async def garbage(self) -> None:
        rng = np.random.default_rng(6)
        noise = rng.integers(0, 256, 32000 * 2, dtype=np.uint8).tobytes()
        out = await paced(self.srv.ws_url + LINEAR16, noise, speed=8)
        assert out.close_code == 1000 and out.finals == [], out.messages
        out = await paced(self.srv.ws_url + "/v1/listen", noise[:16000], speed=8)
        assert_error_close(out, "INVALID_AUDIO", 1007)

    async def non_reader(self) -> None:
        """Stops reading and provokes replies: replies pile up to the bound, then it is closed.

        Each malformed text frame earns an `Error` message, queued like a final (a cheap
        stand-in for finals: filling the server's socket buffers with real finals would
        take hours of speech). The socket is never read, so the server's send() blocks once
        the kernel buffers are full, and its queue grows to --max-outgoing-finals.
        """
        client = await RawClient.connect(self.srv.port, LINEAR16, stingy=True)
        client.stop_reading()
        started = time.monotonic()
        noted = wait_log(self.srv, r"client is not reading; closing", timeout_s=90)
        sent = 0
        while not self.srv.count(r"client is not reading") and sent < CONTROL_BURST:
            for _ in range(10):
                client.writer.write(ws_frame(0x1, b"x"))
            sent += 10
            await client.writer.drain()
            await asyncio.sleep(0.002)  # the attack's own pace
        line = await noted
        assert line is not None
        request_id = line.split("[", 1)[1].split("]", 1)[0]
        end = await session_end(self.srv, request_id)
        closed_after_s = time.monotonic() - started
        assert end is not None and "close_code=1008" in end, end
        self.report["non_reader"] = {
            "frames_sent": sent,
            "closed_after_s": round(closed_after_s, 1),
        }
        client.reset()


async def rss_sampler(srv: ServerProcess, stop: asyncio.Event, peak: list[int]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], srv.rss_bytes())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


async def test_gauntlet_leaves_a_real_time_session_intact(
    gauntlet_server: ServerProcess, jfk: bytes, speech: bytes
) -> None:
    srv = gauntlet_server
    warm = await paced(srv.ws_url + LINEAR16, jfk, speed=50)  # load the model's caches
    assert JFK_TEXT in normalize(warm.transcript)
    await session_end(srv, warm.request_id)
    fds_before = srv.open_fds()
    rss_warm = srv.rss_bytes()
    gauntlet = Gauntlet(srv, jfk, speech)
    crowd = await gauntlet.open_crowd()
    rss_before = srv.rss_bytes()
    stop = asyncio.Event()
    peak = [rss_before]
    sampler = asyncio.create_task(rss_sampler(srv, stop, peak))
    attacks: dict[str, Coroutine[Any, Any, None]] = {
        "idle_crowd": gauntlet.hold_crowd(crowd),
        "slowloris": gauntlet.slowloris(),
        "oversized_frame": gauntlet.oversized_frame(),
        "abrupt_disconnects": gauntlet.abrupt_disconnects(),
        "fast_talker": gauntlet.fast_talker(),
        "garbage": gauntlet.garbage(),
        "non_reader": gauntlet.non_reader(),
    }
    tasks = {name: asyncio.create_task(attack) for name, attack in attacks.items()}
    # The well-behaved session: JFK at real time, with a little silence after it.
    normal = await paced(srv.ws_url + LINEAR16, jfk + bytes(32000))
    gauntlet.done.set()
    results = await asyncio.gather(*tasks.values(), return_exceptions=True)
    stop.set()
    await sampler
    failures = {n: r for n, r in zip(tasks, results, strict=True) if isinstance(r, BaseException)}

    assert normal.close_code == 1000, normal.messages[-3:]
    assert JFK_TEXT in normalize(normal.transcript), normal.transcript
    delays = normal.final_delays_s()
    gauntlet.report["normal_final_delays_s"] = [round(d, 2) for d in delays]
    gauntlet.report["rss_mib"] = {
        "warm": round(rss_warm / 2**20, 1),
        "with_idle_crowd": round(rss_before / 2**20, 1),
        "peak": round(peak[0] / 2**20, 1),
    }
    metrics = await asyncio.to_thread(http_text, srv.http_url + "/metrics")
    batch_s = metric(metrics, 'streamscribe_inference_seconds_sum{kind="final"}') / metric(
        metrics, 'streamscribe_inference_seconds_count{kind="final"}'
    )
    gauntlet.report["mean_final_batch_s"] = round(batch_s, 2)
    print("gauntlet:", json.dumps(gauntlet.report))
    assert not failures, {n: repr(r) for n, r in failures.items()}
    # Each final of the real-time session waits at most for a batch in progress and its
    # own batch (fair queuing puts it in the next round), whatever the others send.
    # Measured in batches, since this box's speed varies with the load others put on it.
    assert max(delays) < 0.5 + 3 * batch_s + 2.0, (delays, batch_s)

    # Every session ends; nothing is left open, nothing is logged as an error, and the
    # memory that is left is the warmed-up server's (inference peaks come and go).
    started = srv.count(r"\] session start")
    await wait_log(srv, r"\] session end", count=started, timeout_s=60)
    assert srv.error_lines() == []
    assert "Traceback" not in srv.stderr_text
    assert srv.open_fds() <= fds_before + 3
    assert srv.count(r"close_code=1006") == 4, "the four abrupt disconnects, and only they"
    assert srv.count(r"close_code=1009") == 1, "the oversized frame"
    rss_after = srv.rss_bytes()
    print(f"gauntlet: RSS after everything closed {rss_after / 2**20:.0f} MiB")
    assert rss_after - rss_warm < 150 * 2**20, (rss_warm, rss_after)


async def test_full_speed_client_is_served_with_bounded_read_ahead(
    gauntlet_server: ServerProcess, audio_dir: Path
) -> None:
    """A file uploaded as fast as TCP allows: finals keep coming, and the server reads
    ahead of transcription by at most --max-pending-finals utterances (plus websockets'
    16-frame queue), however much the client pushes."""
    srv = gauntlet_server
    pcm, _, _ = read_wav(audio_dir / "deepspeech_new_home.wav")
    audio = pcm * 300  # 18 minutes
    frame = 32000
    out = Outcome()
    pushed = 0
    rss_before = srv.rss_bytes()
    async with websockets.connect(srv.ws_url + LINEAR16, max_size=None) as ws:

        async def read_until(finals: int) -> None:
            async for raw in ws:
                assert isinstance(raw, str)
                out.messages.append(json.loads(raw))
                if len(out.finals) >= finals:
                    return

        async def push() -> None:
            nonlocal pushed
            for offset in range(0, len(audio), frame):
                await ws.send(audio[offset : offset + frame])
                pushed += frame
                await asyncio.sleep(0)

        pusher = asyncio.create_task(push())
        await asyncio.wait_for(read_until(3), 120)
        finals = out.finals
        request_id = finals[0]["metadata"]["request_id"]
        served_s = finals[-1]["start"] + finals[-1]["duration"]
        pushed_s = pushed / frame
        rss_during = srv.rss_bytes()
        pusher.cancel()
        ws.transport.abort()
        gone = time.monotonic()
    line = await session_end(srv, request_id)
    assert line is not None
    # While its reader is paused the server cannot see the RST; the next write (its next
    # final) fails and ends the session.
    ended_after_s = time.monotonic() - gone
    match = re.search(r"audio_s=([\d.]+)", line)
    assert match is not None, line
    read_s = float(match.group(1))
    print(
        f"full speed: pushed {pushed_s:.0f} s of audio, server read {read_s:.0f} s, "
        f"transcribed through {served_s:.1f} s, RSS +{(rss_during - rss_before) / 2**20:.0f} "
        f"MiB; session ended {ended_after_s:.2f} s after the client vanished"
    )
    assert normalize(out.transcript).count("new home in the stars") >= 3, out.transcript
    bound_s = MAX_PENDING_FINALS * MAX_UTTERANCE_S + 16 * frame / 32000 + 10.0
    assert read_s <= served_s + bound_s, (read_s, served_s)
    assert rss_during - rss_before < 200 * 2**20


# ---------------------------------------------------------------------------- limits


@pytest.fixture(scope="module")
def limits_server() -> Iterator[ServerProcess]:
    srv = start_server(
        "--max-sessions", str(LIMIT_SESSIONS),
        "--max-control-per-s", str(CONTROL_PER_S),
        "--max-session-s", str(MAX_SESSION_S),
    )  # fmt: skip
    yield srv
    srv.stop()


async def test_session_limit_refuses_with_1013_then_frees_the_slot(
    limits_server: ServerProcess,
) -> None:
    srv = limits_server
    url = srv.ws_url + LINEAR16
    async with websockets.connect(url) as first, websockets.connect(url) as second:
        await first.send(KEEP_ALIVE)
        await second.send(KEEP_ALIVE)
        refused = Outcome()
        async with websockets.connect(url) as third:
            await collect(third, refused)
        assert_error_close(refused, "SESSION_LIMIT", 1013)
        assert str(LIMIT_SESSIONS) in refused.messages[-2]["message"]
        closed = Outcome()
        await first.send(CLOSE_STREAM)
        await collect(first, closed)
        assert closed.close_code == 1000
        await session_end(srv, closed.messages[-1]["request_id"])
        admitted = Outcome()
        async with websockets.connect(url) as fourth:
            await fourth.send(CLOSE_STREAM)
            await collect(fourth, admitted)
        assert admitted.close_code == 1000 and admitted.of_type("Error") == []
        last = Outcome()
        await second.send(CLOSE_STREAM)
        await collect(second, last)
    for out in (admitted, last):
        await session_end(srv, out.messages[-1]["request_id"])
    metrics = await asyncio.to_thread(http_text, srv.http_url + "/metrics")
    assert 'streamscribe_sessions_refused_total{reason="session_limit"} 1.0' in metrics


async def test_control_message_flood_closes_with_1008(limits_server: ServerProcess) -> None:
    url = limits_server.ws_url + LINEAR16
    # Within the budget: KeepAlives and bad messages are answered, the stream stays open.
    polite: list[str] = [KEEP_ALIVE] * 10 + ["not json"] * 5 + [CLOSE_STREAM]
    out = Outcome()
    async with websockets.connect(url) as ws:
        for frame in polite:
            await ws.send(frame)
        await collect(ws, out)
    assert out.close_code == 1000
    assert [e["code"] for e in out.of_type("Error")] == ["INVALID_MESSAGE"] * 5
    # A flood: far more text frames at once than the rate allows.
    flood = Outcome()
    async with websockets.connect(url) as ws:
        reader = asyncio.create_task(collect(ws, flood))
        with contextlib.suppress(websockets.ConnectionClosed):
            for _ in range(CONTROL_PER_S * 20):
                await ws.send(KEEP_ALIVE)
        await reader
    assert_error_close(flood, "RATE_LIMITED", 1008)
    await session_end(limits_server, flood.messages[-1]["request_id"])


async def test_session_length_limit_also_for_a_flooding_client(
    limits_server: ServerProcess,
) -> None:
    url = limits_server.ws_url + LINEAR16

    async def stream_silence(full_speed: bool) -> tuple[Timed, float]:
        out = Timed()
        async with websockets.connect(url) as ws:
            started = time.monotonic()
            reader = asyncio.create_task(collect(ws, out, started))
            with contextlib.suppress(websockets.ConnectionClosed):
                while not reader.done() and time.monotonic() - started < MAX_SESSION_S + 30:
                    await ws.send(bytes(3200))
                    await asyncio.sleep(0 if full_speed else 0.1)  # the client's own pace
            await reader
            return out, time.monotonic() - started

    (paced_out, paced_s), (flood_out, flood_s) = await asyncio.gather(
        stream_silence(False), stream_silence(True)
    )
    for out, closed_s in ((paced_out, paced_s), (flood_out, flood_s)):
        assert_error_close(out, "SESSION_TOO_LONG", 1008)
        told_s = out.arrivals_s[-2]
        assert MAX_SESSION_S - 0.5 <= told_s <= MAX_SESSION_S + 2, told_s
        assert closed_s <= told_s + 2, (told_s, closed_s)
        await session_end(limits_server, out.messages[-1]["request_id"])
    print(
        f"session length limit {MAX_SESSION_S} s: Error after {paced_out.arrivals_s[-2]:.2f} s, "
        f"closed after {paced_s:.2f} s (paced); {flood_out.arrivals_s[-2]:.2f} s, "
        f"{flood_s:.2f} s (flooding)"
    )


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/" + "a" * 300, b"404"),
        ("/a/" + "b" * 5000, b"404"),
        ("/\x00", b"400"),  # not a valid request line at all
        ("/%00", b"404"),
        ("/../../etc/passwd", b"404"),
        ("/%2e%2e/etc/passwd", b"404"),
    ],
    ids=["long-name", "long-path", "nul", "encoded-nul", "dot-dot", "encoded-dot-dot"],
)
async def test_odd_paths_get_4xx_not_500(
    limits_server: ServerProcess, path: str, status: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", limits_server.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode("latin-1"))
    status_line = await reader.readline()
    body = await reader.read()
    writer.close()
    assert status_line.split()[1] == status, status_line
    assert b"root:" not in body
    assert limits_server.error_lines() == []


def wav_header(*, rate_hz: int, channels: int = 1, bits: int = 16) -> bytes:
    """A PCM WAV header for a stream of unknown length."""
    block = channels * bits // 8
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, rate_hz, rate_hz * block, block, bits)
    return b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + fmt + b"data\xff\xff\xff\xff"


async def test_container_sample_rate_outside_the_supported_range_is_refused(
    limits_server: ServerProcess,
) -> None:
    data = wav_header(rate_hz=1) + bytes(2000)  # already 1000 s of audio at 16 kHz
    out = await paced(limits_server.ws_url + "/v1/listen", data, speed=100)
    assert_error_close(out, "INVALID_AUDIO", 1007)
