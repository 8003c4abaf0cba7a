"""Child processes for tests and benchmarks: output lines kept and waited on, polite stops.

Errors: `TimeoutError` from `WatchedProcess.wait_for` (no such line in time; the message
shows the last lines).
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

Stream = Literal["stdout", "stderr"]


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 30.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_s`; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class WatchedProcess:
    """A child whose stdout and stderr lines are collected by reader threads.

    `wait_for` blocks on a condition until a matching line arrives (no polling). Every line
    is also written to `log_path` (a benchmark's log file, closed by `stop`) and to `echo`
    (e.g. `sys.__stderr__`, so that pytest shows a failing test the child's output).
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        echo: IO[str] | None = None,
    ) -> None:
        self.command = list(command)
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._sinks: list[IO[str]] = [echo] if echo is not None else []
        self._log: IO[str] | None = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = log_path.open("w", encoding="utf-8")
            self._sinks.append(self._log)
        self._cond = threading.Condition()
        self._ended: set[Stream] = set()
        self.proc = subprocess.Popen(
            self.command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, "stderr"), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe: IO[str] | None, stream: Stream) -> None:
        assert pipe is not None
        sink = self.stdout_lines if stream == "stdout" else self.stderr_lines
        for raw in pipe:
            line = raw.rstrip("\n")
            with self._cond:
                sink.append(line)
                for out in self._sinks:
                    out.write(raw)
                    out.flush()
                self._cond.notify_all()
        with self._cond:
            self._ended.add(stream)
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for(
        self,
        pattern: str,
        *,
        count: int = 1,
        stream: Stream = "stderr",
        timeout_s: float = 30.0,
        missing_ok: bool = False,
    ) -> str | None:
        """Block until `count` lines of `stream` match `pattern`; return the last such line.

        When the stream ends or `timeout_s` passes first: None if `missing_ok`, else
        TimeoutError.
        """
        regex = re.compile(pattern)
        lines = self.stderr_lines if stream == "stderr" else self.stdout_lines
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                matches = [line for line in lines if regex.search(line)]
                if len(matches) >= count:
                    return matches[count - 1]
                left_s = deadline - time.monotonic()
                if stream in self._ended or left_s <= 0:
                    if missing_ok:
                        return None
                    raise TimeoutError(
                        f"no {count} line(s) matching {pattern!r} in {stream} of "
                        f"{self.command[:3]} within {timeout_s} s; tail: {lines[-5:]}"
                    )
                self._cond.wait(left_s)

    def count(self, pattern: str, stream: Stream = "stderr") -> int:
        regex = re.compile(pattern)
        with self._cond:
            lines = self.stderr_lines if stream == "stderr" else self.stdout_lines
            return sum(1 for line in lines if regex.search(line))

    @property
    def stderr_text(self) -> str:
        with self._cond:
            return "\n".join(self.stderr_lines)

    def send_signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code once output ended."""
        code = stop_process(self.proc, timeout_s)
        for reader in self._readers:
            reader.join(timeout=5)
        if self._log is not None:
            with self._cond:
                self._log.close()
                self._sinks.remove(self._log)
                self._log = None
        return code
