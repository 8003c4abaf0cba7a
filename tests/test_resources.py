"""The session limit from the process's resources (pure rules, then this machine's readers)."""

from __future__ import annotations

import resource
from pathlib import Path

from server.resources import (
    RESERVED_BYTES,
    RESERVED_FDS,
    SESSION_BYTES,
    memory_bytes,
    raise_fd_limit,
    session_capacity,
)


def test_the_scarcer_resource_decides() -> None:
    assert session_capacity(1024, None) == 1024 - RESERVED_FDS
    plenty = RESERVED_BYTES + 10_000 * SESSION_BYTES
    assert session_capacity(1024, plenty) == 1024 - RESERVED_FDS
    tight = RESERVED_BYTES + 100 * SESSION_BYTES
    assert session_capacity(1 << 20, tight) == 100
    assert session_capacity(10, 0) == 1, "never below one session"


def test_default_descriptor_limit_holds_an_idle_crowd() -> None:
    # Linux's usual soft limit (1024) holds 300 idle sessions and a live one with room.
    assert session_capacity(1024, 8 << 30) >= 301


def test_memory_from_the_cgroup_limit_else_memtotal(tmp_path: Path) -> None:
    cgroup, meminfo = tmp_path / "memory.max", tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       2048 kB\nMemFree:        1024 kB\n")
    cgroup.write_text("max\n")  # no limit: the machine's memory
    assert memory_bytes(cgroup, meminfo) == 2048 * 1024
    cgroup.write_text("536870912\n")
    assert memory_bytes(cgroup, meminfo) == 512 << 20
    assert memory_bytes(tmp_path / "absent", tmp_path / "absent") is None


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one() -> None:
    soft = raise_fd_limit()
    now_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == now_soft
    assert hard == resource.RLIM_INFINITY or soft == hard
