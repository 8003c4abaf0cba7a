"""The one launcher of streamscribe servers for tests and benchmarks.

`start_server(ARGS)` runs `python -m server --host 127.0.0.1 --port 0 ARGS` from the
checkout. `ServerProcess` learns the port from the line server.app prints once bound
(`LISTENING_PREFIX` and the URL) and, unless told not to, waits for `READY_LINE` (the model
is loaded); it does the same for any command that runs the server (an installed image's
entry point). Its stdout and stderr lines are kept and can be waited on.

Errors: `ServerStartError` (the child exited, or did not print its line in time; the
message ends with its last stderr lines).
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import psutil

from server.app import LISTENING_PREFIX, READY_LINE
from tests.support.paths import REPO_ROOT
from tests.support.process import WatchedProcess

HOST = "127.0.0.1"
_ERROR_LINE = re.compile(r"^\S+ \S+ (ERROR|CRITICAL) ")


class ServerStartError(RuntimeError):
    """A server child did not start."""


class ServerProcess(WatchedProcess):
    """A running server child on 127.0.0.1: its port, URLs, logs and resource use."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        cwd: Path | None = REPO_ROOT,
        env: Mapping[str, str] | None = None,
        wait_ready: bool = True,
        timeout_s: float = 180.0,
        log_path: Path | None = None,
        echo: IO[str] | None = None,
    ) -> None:
        super().__init__(command, cwd=cwd, env=env, log_path=log_path, echo=echo)
        awaited = READY_LINE if wait_ready else LISTENING_PREFIX
        line = self.wait_for(
            f"^{re.escape(awaited)}", stream="stdout", timeout_s=timeout_s, missing_ok=True
        )
        listening = [ln for ln in self.stdout_lines if ln.startswith(LISTENING_PREFIX)]
        if line is None or not listening:
            self.stop(timeout_s=5)
            raise ServerStartError(
                f"server did not print {awaited!r} (exit {self.proc.returncode}); command: "
                f"{' '.join(self.command)}; stderr tail: " + " | ".join(self.stderr_lines[-5:])
            )
        self.host = HOST
        self.port = int(listening[0].rsplit(":", 1)[1])
        self.process = psutil.Process(self.proc.pid)

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def error_lines(self) -> list[str]:
        """Log lines at ERROR or above, and the first line of every traceback."""
        return [
            line
            for line in self.stderr_text.splitlines()
            if _ERROR_LINE.match(line) or line.startswith("Traceback")
        ]

    def readiness(self) -> dict[str, object]:
        """GET /readyz (200 or 503) as a dict."""
        try:
            with urllib.request.urlopen(self.http_url + "/readyz", timeout=10) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
        data: dict[str, object] = json.loads(body)
        return data

    def rss_bytes(self) -> int:
        return int(self.process.memory_info().rss)

    def open_fds(self) -> int:
        return int(self.process.num_fds())

    def threads(self) -> int:
        return int(self.process.num_threads())


def start_server(
    *args: str,
    env: Mapping[str, str] | None = None,
    wait_ready: bool = True,
    timeout_s: float = 180.0,
    python: str = sys.executable,
    log_path: Path | None = None,
    echo: IO[str] | None = None,
) -> ServerProcess:
    """`python -m server --host 127.0.0.1 --port 0 ARGS` (a later `--port` in ARGS wins)."""
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    child_env.setdefault("HF_HUB_OFFLINE", "1")
    return ServerProcess(
        [python, "-m", "server", "--host", HOST, "--port", "0", *args],
        env=child_env,
        wait_ready=wait_ready,
        timeout_s=timeout_s,
        log_path=log_path,
        echo=echo,
    )
