"""Start and stop the servers under test as child processes, and watch their CPU and memory.

Ours is started by the tests' launcher (tests.support.server: port 0, its listening and
ready lines), its output going to a log file. The peer (WhisperLive) runs from its own
virtualenv on a free port; it is usable once that port accepts connections.

Errors: `ServerStartError` (the process exited or never became ready; see its log file).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

from tests.support.process import free_port, stop_process
from tests.support.server import ServerProcess, ServerStartError, start_server


def start_ours(
    model_dir: Path,
    extra_args: Sequence[str],
    log_path: Path,
    python: str = sys.executable,
    timeout_s: float = 180.0,
) -> ServerProcess:
    """Start our server on `model_dir` and block until it prints its ready line."""
    return start_server(
        "--model", str(model_dir), *extra_args,
        python=python, log_path=log_path, timeout_s=timeout_s,
    )  # fmt: skip


class PeerProcess:
    """The running peer: its pid and websocket URL; `stop()` ends it."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: IO[bytes]) -> None:
        self.proc = proc
        self.port = port
        self._log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit within `timeout_s`; returns the exit code."""
        code = stop_process(self.proc, timeout_s)
        self._log.close()
        return code


@dataclass(frozen=True)
class PeerSettings:
    """Where the WhisperLive peer lives and how to run it."""

    python: Path
    script: Path
    omp_num_threads: int = 2
    max_clients: int = 16


def start_peer(
    settings: PeerSettings, model_dir: Path, log_path: Path, timeout_s: float = 180.0
) -> PeerProcess:
    """Start WhisperLive on a free port and block until the port accepts connections."""
    if not settings.python.exists():
        raise ServerStartError(
            f"no peer virtualenv at {settings.python}; install it as ../shared/peer/README.md says"
        )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    port = free_port()
    script = settings.script.absolute()
    cmd = [
        str(settings.python.absolute()),  # not resolve(): the venv's python is a symlink
        str(script),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--omp_num_threads", str(settings.omp_num_threads),
        "--max_clients", str(settings.max_clients),
        "--faster_whisper_custom_model_path", str(model_dir),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.Popen(cmd, cwd=script.parent, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return PeerProcess(proc, port, log)
        time.sleep(0.2)  # the peer prints nothing when bound; the port is all we can watch
    proc.kill()
    proc.wait()
    log.close()
    raise ServerStartError(
        f"the peer did not open port {port} (exit {proc.returncode}); see {log_path}"
    )


@dataclass(frozen=True)
class ResourceUsage:
    """CPU seconds used and memory held by a server process tree over a measured stretch."""

    cpu_s: float
    wall_s: float
    rss_peak_mb: float
    rss_mean_mb: float
    machine_busy_cores: float = 0.0  # all processes on the machine, ours and others
    load_avg_1m: float = 0.0  # at the end of the stretch

    @property
    def cpu_cores(self) -> float:
        """Average cores busy (CPU seconds per wall second)."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _cpu_s(procs: Sequence[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def _rss_bytes(procs: Sequence[psutil.Process]) -> int:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def _machine_busy_s() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


class ResourceMonitor:
    """Samples a process tree's RSS on a background thread; CPU from cpu_times at both ends."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        self._pid = pid
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._samples: list[int] = []
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._cpu0_s = 0.0
        self._wall0_s = 0.0
        self._machine0_s = 0.0

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._samples.append(_rss_bytes(_tree(self._pid)))

    def start(self) -> None:
        self._cpu0_s = _cpu_s(_tree(self._pid))
        self._machine0_s = _machine_busy_s()
        self._wall0_s = time.monotonic()
        self._samples.append(_rss_bytes(_tree(self._pid)))
        self._thread.start()

    def stop(self) -> ResourceUsage:
        procs = _tree(self._pid)
        cpu_s = _cpu_s(procs) - self._cpu0_s
        wall_s = time.monotonic() - self._wall0_s
        machine_s = _machine_busy_s() - self._machine0_s
        self._stop.set()
        self._thread.join()
        self._samples.append(_rss_bytes(procs))
        mb = [s / 2**20 for s in self._samples if s]
        return ResourceUsage(
            cpu_s=cpu_s,
            wall_s=wall_s,
            rss_peak_mb=max(mb, default=0.0),
            rss_mean_mb=sum(mb) / len(mb) if mb else 0.0,
            machine_busy_cores=machine_s / wall_s if wall_s > 0 else 0.0,
            load_avg_1m=os.getloadavg()[0],
        )
