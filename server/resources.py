"""How many sessions this process can hold: from its file-descriptor limit and its memory.

Load is guarded elsewhere (admission refuses a session while the estimated wait for a final
is too long); the session cap guards what every open connection costs whether it speaks or
not: a socket (one descriptor) and memory (an idle session measured ~60 KiB; a talking one
keeps up to its context and longest utterance of audio, 45 s of float32 at 16 kHz,
about 2.9 MiB). `session_capacity` is pure; the readers below it ask the system.
"""

from __future__ import annotations

import resource
from pathlib import Path

SESSION_BYTES = 4 << 20
"""Memory set aside per session: a talking session's audio with room for its buffers."""
RESERVED_FDS = 128
"""Descriptors kept for the process itself: model files, logs, the listening socket, S3."""
RESERVED_BYTES = 1 << 30
"""Memory kept for the process itself: the model, the engine's buffers, Python."""


def session_capacity(fd_limit: int, memory_bytes: int | None) -> int:
    """Sessions that fit both the descriptor limit and the memory (None: unknown memory)."""
    by_fds = fd_limit - RESERVED_FDS
    by_memory = by_fds if memory_bytes is None else (memory_bytes - RESERVED_BYTES) // SESSION_BYTES
    return max(1, min(by_fds, by_memory))


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (as far as allowed); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def memory_bytes(
    cgroup: Path = Path("/sys/fs/cgroup/memory.max"), meminfo: Path = Path("/proc/meminfo")
) -> int | None:
    """The memory this process may use: its cgroup's limit (a container), else MemTotal."""
    try:
        limit = cgroup.read_text().strip()
        if limit.isdigit():
            return int(limit)
    except OSError:
        pass
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
