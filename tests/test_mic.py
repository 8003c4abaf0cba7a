"""`python -m clients.mic` recording real samples from a PulseAudio server through PortAudio.

The test starts its own PulseAudio daemon with a null sink whose monitor is the default
source; `paplay` plays JFK into the sink at real time, PortAudio (ALSA's pulse plugin)
records the monitor, and the mic client streams it to a real server.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from tests.support.paths import REPO_ROOT
from tests.support.process import free_port
from tests.support.server import ServerProcess

JFK_PHRASE = "what your country can do for you"
JFK_LAST_WORDS = "ask what you can do for your country"
LINE_TIMEOUT_S = 120.0

pytestmark = [
    pytest.mark.audio,
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("pulseaudio") is None or shutil.which("paplay") is None,
        reason="needs PulseAudio (apt-get install pulseaudio pulseaudio-utils "
        "libasound2-plugins libportaudio2)",
    ),
]


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]+", " ", text.lower()).split())


class Lines:
    """Collects a child's output lines on a thread so a test can wait for one (no polling)."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout_s: float = LINE_TIMEOUT_S) -> str:
        while True:
            try:
                line = self._queue.get(timeout=timeout_s)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}; saw {self.seen}") from None
            if line is None:
                raise AssertionError(f"output ended before {pattern!r}; saw {self.seen}")
            self.seen.append(line)
            if re.search(pattern, line):
                return line

    def rest(self) -> list[str]:
        self._thread.join(timeout=30)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return self.seen
            if line is not None:
                self.seen.append(line)


@dataclass
class Pulse:
    """A private PulseAudio daemon; `env` points clients (libpulse, ALSA's pulse plugin) at it."""

    env: dict[str, str]

    def play(self, wav: Path) -> None:
        """Play `wav` into the null sink at real time; returns when it has been played."""
        subprocess.run(["paplay", "--device=feed", str(wav)], env=self.env, check=True, timeout=120)


@pytest.fixture
def pulse() -> Iterator[Pulse]:
    # A short directory: the socket path must fit in sun_path (108 bytes).
    with tempfile.TemporaryDirectory(prefix="pa-") as root:
        socket_path = f"{root}/native"
        config = Path(root) / "default.pa"
        config.write_text(
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={socket_path}\n"
            "load-module module-null-sink sink_name=feed rate=16000 channels=1\n"
            "set-default-sink feed\n"
            "set-default-source feed.monitor\n",
            encoding="utf-8",
        )
        env = dict(os.environ)
        env.update(
            HOME=root,
            PULSE_RUNTIME_PATH=f"{root}/run",
            PULSE_STATE_PATH=f"{root}/state",
            PULSE_SERVER=f"unix:{socket_path}",
        )
        daemon = subprocess.Popen(
            ["pulseaudio", "-n", "-F", str(config), "--daemonize=no", "--exit-idle-time=-1",
             "--disallow-exit", "--disallow-module-loading", "--log-target=stderr",
             "--log-level=info"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert daemon.stderr is not None
        try:
            Lines(daemon.stderr).wait_for(r"Daemon startup complete", timeout_s=30)
            yield Pulse(env=env)
        finally:
            daemon.terminate()
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


@pytest.fixture(scope="module")
def jfk_padded(audio_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JFK with 1 s of silence after it, so its last word is recorded before Ctrl-C."""
    with wave.open(str(audio_dir / "jfk_inaugural.wav"), "rb") as source:
        params = source.getparams()
        frames = source.readframes(source.getnframes())
    path = tmp_path_factory.mktemp("mic") / "jfk-padded.wav"
    with wave.open(str(path), "wb") as out:
        out.setparams(params)
        out.writeframes(frames + b"\x00" * (params.sampwidth * params.framerate))
    return path


@dataclass
class MicClient:
    proc: subprocess.Popen[str]
    stdout: Lines
    stderr: Lines

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=120)


@pytest.fixture
def start_mic(pulse: Pulse) -> Iterator[Callable[..., MicClient]]:
    started: list[MicClient] = []

    def start(*args: str) -> MicClient:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clients.mic", *args],
            cwd=REPO_ROOT, env={**pulse.env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        client = MicClient(proc, Lines(proc.stdout), Lines(proc.stderr))
        started.append(client)
        return client

    yield start
    for client in started:
        if client.proc.poll() is None:
            client.proc.kill()
            client.proc.wait()


def test_list_devices_shows_the_pulse_source(start_mic: Callable[..., MicClient]) -> None:
    client = start_mic("--list-devices")
    assert client.proc.wait(timeout=60) == 0
    devices = "\n".join(client.stdout.rest())
    assert "pulse" in devices or "default" in devices


def test_mic_captions_jfk_and_ctrl_c_flushes(
    server: ServerProcess, pulse: Pulse, jfk_padded: Path, start_mic: Callable[..., MicClient],
    tmp_path: Path,
) -> None:  # fmt: skip
    transcript = tmp_path / "mic.txt"
    mic = start_mic("--url", server.ws_url, "--output", str(transcript))
    mic.stderr.wait_for(r"^recording from .* at \d+ Hz")
    mic.stderr.wait_for(r"^connected to ws://")
    pulse.play(jfk_padded)
    # Ctrl-C right after the speech: the last final must still arrive (CloseStream flush).
    assert mic.interrupt() == 0, mic.stderr.rest()
    stderr = "\n".join(mic.stderr.rest())
    assert "finishing the stream" in stderr and "Traceback" not in stderr
    text = normalise(transcript.read_text(encoding="utf-8"))
    assert JFK_PHRASE in text
    assert JFK_LAST_WORDS in text
    assert JFK_PHRASE in normalise(" ".join(mic.stdout.rest()))


def test_mic_reconnects_after_the_server_restarts(
    server_factory: Callable[..., ServerProcess], pulse: Pulse, jfk_padded: Path,
    start_mic: Callable[..., MicClient], tmp_path: Path,
) -> None:  # fmt: skip
    port = free_port()
    first = server_factory("--port", str(port))
    subtitles = tmp_path / "mic.srt"
    mic = start_mic(
        "--url", first.ws_url, "--device", "pulse", "--format", "srt", "--output", str(subtitles)
    )
    mic.stderr.wait_for(r"^connected to ws://")
    pulse.play(jfk_padded)

    first.stop()  # graceful: open utterances finalized, then close 1001
    mic.stderr.wait_for(r"reconnecting in [\d.]+ s")
    second = server_factory("--port", str(port))
    assert second.port == port
    mic.stderr.wait_for(r"^connected to ws://")
    pulse.play(jfk_padded)
    assert mic.interrupt() == 0, mic.stderr.rest()

    srt = subtitles.read_text(encoding="utf-8")
    assert normalise(srt).count("your country") >= 2, srt
    starts = [
        int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000
        for h, m, s, ms in re.findall(r"^(\d\d):(\d\d):(\d\d),(\d{3}) -->", srt, re.MULTILINE)
    ]
    assert starts == sorted(starts), "cue times continue across the reconnect"
    assert starts[-1] > 11.0, "the second stream's cues come after the first stream's audio"
    numbers = [int(n) for n in re.findall(r"^(\d+)$", srt, re.MULTILINE)]
    assert numbers == list(range(1, len(numbers) + 1))
