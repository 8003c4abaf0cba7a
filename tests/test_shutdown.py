"""Graceful shutdown with real signals to a real server process (what `docker stop` and
Kubernetes do): /readyz turns 503, the open utterance is finalized and sent, then Metadata,
then close 1001; the process exits 0 within the drain timeout; a second signal exits at once.

A raw WebSocket client that never answers the server's close frame keeps the drain going
(the server waits for the reply until its close wait or the drain timeout runs out); the
window opens when the client receives the close, so slow inference cannot shrink it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import struct
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jiwer
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.app import EXIT_FORCED
from tests.support.paths import reference_texts
from tests.support.server import ServerProcess

CLIP = "cmuarctic_a0024.wav"  # 4 s: "It was my reports from the north which chiefly induced..."
DRAIN_TIMEOUT_S = 20.0  # the default; generous, so that slow inference on a busy CPU fits
LISTEN_QUERY = "encoding=linear16&sample_rate=16000&channels=1"

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Frame:
    opcode: int
    payload: bytes


class SilentWebSocket:
    """A raw RFC 6455 client that reads what the server sends but never answers a close."""

    def __init__(self, port: int, query: str = LISTEN_QUERY) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /v1/listen?{query} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        assert b" 101 " in status, f"handshake refused: {head!r}"

    def send(self, payload: bytes | str) -> None:
        """One masked frame, binary for bytes and text for str (RFC 6455 section 5.2)."""
        opcode, data = (0x1, payload.encode()) if isinstance(payload, str) else (0x2, payload)
        header = bytes([0x80 | opcode])
        if len(data) < 126:
            header += bytes([0x80 | len(data)])
        elif len(data) < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", len(data))
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", len(data))
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(header + mask + masked)

    def read_message(self) -> dict[str, Any]:
        """The next text message (the server sends only text frames before its close)."""
        frame = self.read_frame()
        assert frame.opcode == 0x1, f"expected a text frame, got opcode {frame.opcode}"
        parsed = json.loads(frame.payload)
        assert isinstance(parsed, dict)
        return parsed

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the server closed the TCP connection")
        return chunk

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.buffer += self._recv()
        taken, self.buffer = self.buffer[:size], self.buffer[size:]
        return taken

    def read_frame(self) -> Frame:
        first, second = self._take(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._take(8))
        assert not second & 0x80, "server frames are never masked"
        return Frame(opcode=first & 0x0F, payload=self._take(length))

    def read_until_close(self) -> tuple[list[dict[str, Any]], int]:
        """Text messages received, and the code of the server's close frame."""
        messages: list[dict[str, Any]] = []
        while True:
            frame = self.read_frame()
            if frame.opcode == 0x1:
                messages.append(json.loads(frame.payload))
            elif frame.opcode == 0x8:
                (code,) = struct.unpack("!H", frame.payload[:2])
                return messages, int(code)

    def wait_for_eof(self) -> None:
        """Block until the server drops the TCP connection (it never gets our close)."""
        try:
            while True:
                self._recv()
        except (EOFError, ConnectionResetError):
            return

    def close(self) -> None:
        self.sock.close()


def clip_pcm(audio_dir: Path) -> bytes:
    with wave.open(str(audio_dir / CLIP), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        return wav.readframes(wav.getnframes())


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return int(reply.status), json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


async def refused_while_draining(server: ServerProcess) -> tuple[list[dict[str, Any]], int | None]:
    async with connect(f"{server.ws_url}/v1/listen?{LISTEN_QUERY}", open_timeout=30) as ws:
        messages: list[dict[str, Any]] = []
        try:
            while True:
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), timeout=30)))
        except ConnectionClosed:
            pass
        return messages, ws.close_code


def test_sigterm_drains_open_utterance_then_exits_zero(
    server_factory: Callable[..., ServerProcess], audio_dir: Path
) -> None:
    server = server_factory(
        "--drain-timeout-s", str(DRAIN_TIMEOUT_S), "--idle-timeout-s", "120", "--workers", "1"
    )
    assert get_json(f"{server.http_url}/readyz")[0] == 200
    pcm = clip_pcm(audio_dir)
    # Endpointing off: the utterance stays open until something closes it.
    client = SilentWebSocket(server.port, f"{LISTEN_QUERY}&endpointing=false")
    try:
        for start in range(0, len(pcm), 3200):
            client.send(pcm[start : start + 3200])
        # Ordering barrier: frames are handled in order, so the Error for this bad control
        # message proves every audio frame before it reached the session.
        client.send("not json")
        barrier = client.read_message()
        assert (barrier["type"], barrier["code"]) == ("Error", "INVALID_MESSAGE"), barrier
        signalled_at = time.monotonic()
        server.send_signal(signal.SIGTERM)
        messages, close_code = client.read_until_close()

        # The open utterance was finalized and sent, then Metadata, then 1001.
        kinds = [m["type"] for m in messages]
        assert kinds[-1] == "Metadata", kinds
        assert set(kinds[:-1]) == {"Results"}, kinds
        finals = [m for m in messages if m["type"] == "Results" and m["is_final"]]
        assert finals, "the open utterance must be finalized on shutdown"
        assert all(m["speech_final"] and not m["from_finalize"] for m in finals)
        transcript = " ".join(m["channel"]["alternatives"][0]["transcript"] for m in finals)
        reference = reference_texts()[CLIP]
        error = jiwer.wer(reference.lower(), transcript.lower().replace(",", "").replace(".", ""))
        assert error <= 0.25, f"{transcript!r} vs {reference!r}"
        assert messages[-1]["duration"] == pytest.approx(len(pcm) / 32000, abs=0.1)
        assert close_code == 1001

        # We have not answered the close, so the server is still draining: not ready, alive,
        # and refusing new sessions.
        status, body = get_json(f"{server.http_url}/readyz")
        assert (status, body["state"]) == (503, "draining"), body
        assert get_json(f"{server.http_url}/healthz")[0] == 200
        refusal, refusal_code = asyncio.run(refused_while_draining(server))
        assert [m["code"] for m in refusal if m["type"] == "Error"] == ["SHUTTING_DOWN"]
        assert refusal_code == 1001

        # Our missing close reply cannot hold the process past the drain timeout.
        returncode = server.proc.wait(timeout=DRAIN_TIMEOUT_S + 10)
        elapsed_s = time.monotonic() - signalled_at
        client.wait_for_eof()
    finally:
        client.close()
    assert returncode == 0
    assert elapsed_s <= DRAIN_TIMEOUT_S + 2.0, f"exit took {elapsed_s:.1f} s"


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_second_signal_exits_at_once(
    server_factory: Callable[..., ServerProcess], second: signal.Signals
) -> None:
    # A long drain timeout: only the second signal can explain a quick exit.
    server = server_factory("--drain-timeout-s", "60", "--idle-timeout-s", "120", "--workers", "1")
    silent = SilentWebSocket(server.port)
    try:
        server.send_signal(signal.SIGTERM)
        # The close frame proves the drain has begun; the server now waits for our reply,
        # which never comes.
        messages, code = silent.read_until_close()
        assert ([m["type"] for m in messages], code) == (["Metadata"], 1001)
        assert server.proc.poll() is None, "still draining"
        signalled_at = time.monotonic()
        server.send_signal(second)
        returncode = server.proc.wait(timeout=10)
        elapsed_s = time.monotonic() - signalled_at
    finally:
        silent.close()
    assert returncode == EXIT_FORCED
    assert elapsed_s < 1.5, f"second signal took {elapsed_s:.1f} s"


def test_drain_timeout_bounds_a_client_that_never_closes(
    server_factory: Callable[..., ServerProcess],
) -> None:
    # Much shorter than the server's own wait for a close reply (5 s), so an exit well before
    # that wait ends shows the drain timeout cut it.
    drain_timeout_s = 1.0
    server = server_factory(
        "--drain-timeout-s", str(drain_timeout_s), "--idle-timeout-s", "120", "--workers", "1"
    )
    silent = SilentWebSocket(server.port)
    try:
        signalled_at = time.monotonic()
        server.send_signal(signal.SIGTERM)
        messages, code = silent.read_until_close()
        assert ([m["type"] for m in messages], code) == (["Metadata"], 1001)
        returncode = server.proc.wait(timeout=drain_timeout_s + 10)
        elapsed_s = time.monotonic() - signalled_at
        silent.wait_for_eof()
    finally:
        silent.close()
    assert returncode == 0
    assert drain_timeout_s - 0.5 <= elapsed_s <= drain_timeout_s + 2.5, f"{elapsed_s:.1f} s"
