"""The cache directory's inter-process lock: one hydration or prune at a time, the others wait."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from filelock import FileLock, Timeout

from cache.layout import LOCK_NAME

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def cache_lock(cache_dir: Path, poll_s: float = 0.1) -> AsyncIterator[None]:
    """Hold CACHE_DIR/.lock; waits (without blocking the event loop) while another holds it.

    The OS drops the lock when its holder dies, so a crashed process never wedges the cache.
    """
    await asyncio.to_thread(cache_dir.mkdir, parents=True, exist_ok=True)
    lock = FileLock(cache_dir / LOCK_NAME)
    announced = False
    while True:
        try:
            lock.acquire(blocking=False)
            break
        except Timeout:
            if not announced:
                log.info("another process is using the cache at %s; waiting for it", cache_dir)
                announced = True
            await asyncio.sleep(poll_s)
    try:
        yield
    finally:
        lock.release()
