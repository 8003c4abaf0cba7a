"""Child processes (servers under test or benchmark): stop them politely, then firmly."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


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
