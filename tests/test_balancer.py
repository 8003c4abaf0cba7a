"""Scale-out, tested locally: two real servers behind a real HAProxy (deploy/haproxy.cfg.tmpl).

Needs Debian's `haproxy` package (apt-get install haproxy). The config under test is the
template operators render; only the placeholders differ. Each session's pod is read from
the `X-Streamscribe-Pod` header HAProxy adds to the 101 response and cross-checked against
each server's own /metrics counters.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import subprocess
import threading
import urllib.request
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.paths import REPO_ROOT, reference_texts
from tests.support.process import free_port
from tests.support.server import ServerProcess
from tests.test_shutdown import SilentWebSocket

TEMPLATE = REPO_ROOT / "deploy" / "haproxy.cfg.tmpl"
CLIP = "ljspeech_LJ001-0002.wav"  # 1.9 s: "in being comparatively modern."
POD_HEADER = "X-Streamscribe-Pod"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path(HAPROXY).exists(), reason="needs Debian's haproxy (apt-get install haproxy)"
    ),
]


# --- HAProxy, started by the test ------------------------------------------------------


@dataclass
class Balancer:
    """A foreground HAProxy whose output lines can be waited for."""

    proc: subprocess.Popen[str]
    port: int
    socket_path: Path
    lines: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, predicate: Callable[[str], bool], timeout_s: float = 30.0) -> str:
        with self._changed:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                if self.proc.poll() is not None:
                    raise AssertionError(f"haproxy exited {self.proc.returncode}: {self.lines}")
                if not self._changed.wait(timeout_s):
                    raise AssertionError(f"haproxy never printed the line; output: {self.lines}")

    def server_states(self) -> dict[str, int]:
        """Server name -> operational state from the admin socket (2 = UP, 0 = DOWN)."""
        with socket.socket(socket.AF_UNIX) as admin:
            admin.connect(str(self.socket_path))
            admin.sendall(b"show servers state pods\n")
            reply = b""
            while chunk := admin.recv(65536):
                reply += chunk
        states: dict[str, int] = {}
        for line in reply.decode().splitlines():
            fields = line.split()
            if line.startswith("#") or len(fields) < 6:
                continue
            states[fields[3]] = int(fields[5])  # srv_name, srv_op_state
        return states


def render_config(tmp: Path, port: int, balance: str, servers: dict[str, str]) -> Path:
    """The repo's template with this test's values; `haproxy -c` must accept it."""
    lines = "\n".join(f"    server {name} {spec}" for name, spec in servers.items())
    text = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        BIND=f"127.0.0.1:{port}",
        BALANCE=balance,
        MAX_SESSIONS="100",
        CHECK_INTERVAL="500ms",
        STATS_SOCKET=str(tmp / "haproxy.sock"),
        SERVERS=lines,
    )
    config = tmp / "haproxy.cfg"
    config.write_text(text, encoding="utf-8")
    check = subprocess.run(
        [HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    return config


@pytest.fixture
def start_balancer(tmp_path: Path) -> Iterator[Callable[[str, dict[str, str]], Balancer]]:
    started: list[Balancer] = []

    def start(balance: str, servers: dict[str, str]) -> Balancer:
        port = free_port()
        config = render_config(tmp_path, port, balance, servers)
        proc = subprocess.Popen(
            [HAPROXY, "-W", "-db", "-f", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        balancer = Balancer(proc=proc, port=port, socket_path=tmp_path / "haproxy.sock")
        started.append(balancer)
        threading.Thread(target=balancer._read, daemon=True).start()
        # The master prints this once its worker runs; the listener was bound before that.
        balancer.wait_for_line(lambda line: "Loading success" in line)
        states = balancer.server_states()
        assert states == dict.fromkeys(servers, 2), f"backends not UP in haproxy: {states}"
        return balancer

    yield start
    for balancer in started:
        if balancer.proc.poll() is None:
            balancer.proc.send_signal(signal.SIGTERM)
            try:
                balancer.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                balancer.proc.kill()
                balancer.proc.wait()


# --- sessions ------------------------------------------------------------------------


@dataclass
class SessionResult:
    pod: str | None
    messages: list[dict[str, Any]]
    close_code: int | None

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    @property
    def transcript(self) -> str:
        finals = [m for m in self.of_type("Results") if m["is_final"]]
        return " ".join(m["channel"]["alternatives"][0]["transcript"] for m in finals).strip()


def clip_pcm(audio_dir: Path) -> tuple[bytes, int]:
    with wave.open(str(audio_dir / CLIP), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        return wav.readframes(wav.getnframes()), wav.getframerate()


def listen_url(base: str, rate_hz: int) -> str:
    return f"{base}/v1/listen?encoding=linear16&sample_rate={rate_hz}&channels=1"


async def send_audio(ws: ClientConnection, pcm: bytes, rate_hz: int) -> None:
    chunk = rate_hz * 2 // 10  # 100 ms frames
    for start in range(0, len(pcm), chunk):
        await ws.send(pcm[start : start + chunk])


async def read_all(ws: ClientConnection) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    try:
        async for frame in ws:
            assert isinstance(frame, str), "the server sends only text frames"
            messages.append(json.loads(frame))
    except ConnectionClosed:
        pass
    return messages


async def one_session(base: str, pcm: bytes, rate_hz: int) -> SessionResult:
    """Stream the clip, CloseStream, read everything until the server closes."""
    async with connect(listen_url(base, rate_hz), open_timeout=30) as ws:
        assert ws.response is not None
        pod = ws.response.headers.get(POD_HEADER)
        reader = asyncio.create_task(read_all(ws))
        try:
            await send_audio(ws, pcm, rate_hz)
            await ws.send(json.dumps({"type": "CloseStream"}))
        except ConnectionClosed:
            pass  # a refused session may already be closed while we send
        messages = await asyncio.wait_for(reader, timeout=120)
        return SessionResult(pod=pod, messages=messages, close_code=ws.close_code)


@dataclass
class HeldSession:
    """A session kept open after its first final, so that it occupies its pod."""

    ws: ClientConnection
    pod: str | None
    first_final: dict[str, Any]


async def hold_session(base: str, pcm: bytes, rate_hz: int) -> HeldSession:
    ws = await connect(listen_url(base, rate_hz), open_timeout=30)
    assert ws.response is not None
    await send_audio(ws, pcm, rate_hz)
    await ws.send(json.dumps({"type": "Finalize"}))
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout=120))
        assert message.get("type") != "Error", f"held session refused: {message}"
        if message.get("type") == "Results" and message["is_final"]:
            return HeldSession(ws=ws, pod=ws.response.headers.get(POD_HEADER), first_final=message)


async def release(held: HeldSession) -> SessionResult:
    reader = asyncio.create_task(read_all(held.ws))
    await held.ws.send(json.dumps({"type": "CloseStream"}))
    messages = await asyncio.wait_for(reader, timeout=60)
    return SessionResult(pod=held.pod, messages=messages, close_code=held.ws.close_code)


# --- metrics -------------------------------------------------------------------------


def scrape(server: ServerProcess) -> dict[str, float]:
    """Sample name with labels -> value, from the server's Prometheus text."""
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def refused(server: ServerProcess, reason: str) -> float:
    """Refusals counted under `reason` (the Error code, lower case)."""
    return scrape(server).get(f'streamscribe_sessions_refused_total{{reason="{reason}"}}', 0.0)


def accepted(server: ServerProcess) -> float:
    return scrape(server)["streamscribe_sessions_total"]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


# --- tests ---------------------------------------------------------------------------

SERVER_FLAGS = ("--idle-timeout-s", "120", "--workers", "1")


def test_full_pod_refuses_with_1013_while_the_other_serves(
    server_factory: Callable[..., ServerProcess],
    start_balancer: Callable[[str, dict[str, str]], Balancer],
    audio_dir: Path,
) -> None:
    full = server_factory("--max-sessions", "1", *SERVER_FLAGS)
    free = server_factory("--max-sessions", "4", *SERVER_FLAGS)
    balancer = start_balancer(
        "roundrobin",
        {"full": f"127.0.0.1:{full.port}", "free": f"127.0.0.1:{free.port}"},
    )
    pcm, rate_hz = clip_pcm(audio_dir)
    expected = words(reference_texts()[CLIP])

    async def scenario() -> tuple[HeldSession, list[SessionResult]]:
        # Occupy the small pod directly, behind the balancer's back: it cannot know.
        occupant = await hold_session(full.ws_url, pcm, rate_hz)
        results = [await one_session(balancer.ws_url, pcm, rate_hz) for _ in range(4)]
        await release(occupant)
        return occupant, results

    occupant, results = asyncio.run(scenario())
    assert words(occupant.first_final["channel"]["alternatives"][0]["transcript"]) == expected

    # Round robin alternates, so both pods were offered sessions.
    assert sorted(r.pod or "?" for r in results) == ["free", "free", "full", "full"]
    for result in results:
        if result.pod == "full":
            errors = result.of_type("Error")
            assert [e["code"] for e in errors] == ["SESSION_LIMIT"], result.messages
            assert errors[0]["message"], "the refusal says what to do"
            assert result.messages[-1]["type"] == "Metadata", "Metadata comes last before 1013"
            assert result.close_code == 1013
            assert result.transcript == ""
        else:
            assert result.close_code == 1000, result.messages
            assert result.of_type("Error") == []
            assert words(result.transcript) == expected
            assert result.messages[-1]["type"] == "Metadata"

    # The servers' own counters agree with what the clients saw.
    assert refused(full, "session_limit") == 2
    assert accepted(full) == 1  # only the direct occupant
    assert accepted(free) == 2
    assert refused(free, "session_limit") == 0


def test_balancer_cap_routes_around_a_full_pod(
    server_factory: Callable[..., ServerProcess],
    start_balancer: Callable[[str, dict[str, str]], Balancer],
    audio_dir: Path,
) -> None:
    """With HAProxy's per-pod maxconn = STREAMSCRIBE_MAX_SESSIONS, nobody sees a 1013."""
    small = server_factory("--max-sessions", "1", *SERVER_FLAGS)
    large = server_factory("--max-sessions", "4", *SERVER_FLAGS)
    balancer = start_balancer(
        "leastconn",
        {
            "small": f"127.0.0.1:{small.port} maxconn 1",
            "large": f"127.0.0.1:{large.port} maxconn 4",
        },
    )
    pcm, rate_hz = clip_pcm(audio_dir)
    expected = words(reference_texts()[CLIP])

    async def scenario() -> list[tuple[HeldSession, SessionResult]]:
        held = [await hold_session(balancer.ws_url, pcm, rate_hz) for _ in range(3)]
        return [(h, await release(h)) for h in held]

    outcomes = asyncio.run(scenario())
    # Least connections sends the first two to different pods; the third cannot go to the
    # small pod (at its cap), so it goes to the large one instead of being refused there.
    assert sorted(h.pod or "?" for h, _ in outcomes) == ["large", "large", "small"]
    for held, result in outcomes:
        assert words(held.first_final["channel"]["alternatives"][0]["transcript"]) == expected
        assert result.close_code == 1000
        assert result.of_type("Error") == []
    assert accepted(small) == 1
    assert accepted(large) == 2
    assert refused(small, "session_limit") == 0
    assert refused(large, "session_limit") == 0


def test_draining_pod_leaves_the_rotation(
    server_factory: Callable[..., ServerProcess],
    start_balancer: Callable[[str, dict[str, str]], Balancer],
    audio_dir: Path,
) -> None:
    """SIGTERM turns /readyz 503 while live sessions drain; HAProxy's check takes it out."""
    leaving = server_factory("--drain-timeout-s", "30", *SERVER_FLAGS)
    staying = server_factory(*SERVER_FLAGS)
    balancer = start_balancer(
        "roundrobin",
        {"leaving": f"127.0.0.1:{leaving.port}", "staying": f"127.0.0.1:{staying.port}"},
    )
    pcm, rate_hz = clip_pcm(audio_dir)
    # A live session that never answers the close keeps the leaving pod draining (alive,
    # answering 503) rather than gone, which is the state the health check must catch.
    live = SilentWebSocket(leaving.port)
    try:
        leaving.send_signal(signal.SIGTERM)
        down = balancer.wait_for_line(lambda line: "pods/leaving is DOWN" in line)
        assert "Layer7 wrong status" in down and "503" in down, down
        assert leaving.proc.poll() is None, "still draining when it left the rotation"

        async def two_sessions() -> list[SessionResult]:
            return [await one_session(balancer.ws_url, pcm, rate_hz) for _ in range(2)]

        results = asyncio.run(two_sessions())
    finally:
        live.close()
    assert [r.pod for r in results] == ["staying", "staying"]
    assert all(r.close_code == 1000 and r.transcript for r in results)
    assert leaving.proc.wait(timeout=30) == 0
