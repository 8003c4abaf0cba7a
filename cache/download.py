"""Fetch a manifest's files into a staging folder: concurrent ranged GETs, part hashes, resume.

Every part is streamed to its offset in `.partial/PATH` in bounded blocks and hashed as it
arrives; a part counts only when its sha256 matches the manifest, so every byte is checked
once and an interrupted run resumes from verified parts. A file whose parts are all verified
is synced and renamed to PATH. (The manifest's whole-file sha256 would only re-check the same
bytes; `python -m cache verify` uses it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import botocore.exceptions

from cache.errors import IntegrityError, primary_error
from cache.layout import PARTIAL_DIR
from cache.manifest import READ_BLOCK_BYTES, FileEntry, Manifest
from cache.s3 import S3Location, TransferConfig, with_retries

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 256 * 1024
FLUSH_BYTES = 1024 * 1024

T = TypeVar("T")


@dataclass(frozen=True)
class PartJob:
    """One ranged GET: bytes [start, start + size) of `entry`."""

    entry: FileEntry
    index: int
    start: int
    size: int


@dataclass
class StagingPlan:
    """What is already verified in the staging folder and what is still to fetch."""

    finished: list[FileEntry] = field(default_factory=list)
    to_fetch: list[FileEntry] = field(default_factory=list)
    missing: list[PartJob] = field(default_factory=list)
    reused_bytes: int = 0
    needed_disk_bytes: int = 0


def partial_path(staging: Path, entry: FileEntry) -> Path:
    return staging / PARTIAL_DIR / entry.path


def plan_staging(staging: Path, manifest: Manifest) -> StagingPlan:
    """Scan the staging folder (blocking: re-hashes partial files) and list the missing parts."""
    plan = StagingPlan()
    part_size = manifest.part_size_bytes
    for entry in manifest.files:
        final = staging / entry.path
        if final.is_file() and final.stat().st_size == entry.size:
            plan.finished.append(entry)
            plan.reused_bytes += entry.size
            continue
        plan.to_fetch.append(entry)
        partial = partial_path(staging, entry)
        verified = _verified_parts(partial, entry, part_size)
        allocated = 0
        if verified or (partial.is_file() and partial.stat().st_size == entry.size):
            allocated = min(entry.size, partial.stat().st_blocks * 512)
        plan.needed_disk_bytes += entry.size - allocated
        for index in range(len(entry.part_sha256)):
            start, size = entry.part_span(index, part_size)
            if index in verified:
                plan.reused_bytes += size
            else:
                plan.missing.append(PartJob(entry=entry, index=index, start=start, size=size))
    return plan


def _verified_parts(partial: Path, entry: FileEntry, part_size_bytes: int) -> set[int]:
    if not partial.is_file() or partial.stat().st_size != entry.size:
        return set()
    verified: set[int] = set()
    with partial.open("rb") as stream:
        for index, expected in enumerate(entry.part_sha256):
            start, size = entry.part_span(index, part_size_bytes)
            stream.seek(start)
            digest = hashlib.sha256()
            remaining = size
            while remaining:
                block = stream.read(min(READ_BLOCK_BYTES, remaining))
                if not block:
                    break
                digest.update(block)
                remaining -= len(block)
            if not remaining and digest.hexdigest() == expected:
                verified.add(index)
    return verified


async def _in_thread(func: Callable[..., T], *args: object) -> T:
    """Run blocking work in a thread; if cancelled, wait for it so no write outlives its file."""
    future = asyncio.get_running_loop().run_in_executor(None, func, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await future
        raise


def _write_and_hash(fd: int, offset: int, data: bytes, digest: hashlib._Hash) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
    digest.update(data)


def _open_partial(path: Path, size: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, 0)
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _finish_file(staging: Path, entry: FileEntry) -> None:
    """Sync a file whose parts are all verified and give it its own name."""
    partial = partial_path(staging, entry)
    final = staging / entry.path
    final.parent.mkdir(parents=True, exist_ok=True)
    if entry.size == 0:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(b"")
    if partial.stat().st_size != entry.size:
        raise IntegrityError(f"{entry.path}: partial file has the wrong size")
    with partial.open("rb") as stream:
        os.fsync(stream.fileno())
    partial.replace(final)


class Downloader:
    """Fetches the missing parts of a plan with bounded concurrency and memory."""

    def __init__(
        self,
        client: S3Client,
        location: S3Location,
        staging: Path,
        transfer: TransferConfig,
        on_bytes: Callable[[int], None],
    ) -> None:
        self._client = client
        self._location = location
        self._staging = staging
        self._transfer = transfer
        self._on_bytes = on_bytes
        self._slots = asyncio.Semaphore(transfer.max_concurrency)
        self._fds: dict[str, int] = {}

    async def fetch(self, plan: StagingPlan) -> None:
        """Download every missing part; leaves verified parts behind if interrupted."""
        try:
            for entry in plan.to_fetch:
                if entry.size:
                    path = partial_path(self._staging, entry)
                    self._fds[entry.path] = await _in_thread(_open_partial, path, entry.size)
            try:
                async with asyncio.TaskGroup() as group:
                    for job in plan.missing:
                        group.create_task(self._fetch_part(job))
            except BaseExceptionGroup as failed:
                raise primary_error(failed)  # noqa: B904 - the group is kept as __context__
        finally:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    async def finish_file(self, entry: FileEntry) -> None:
        """Sync a fetched file (all parts verified) and move it to its own name."""
        await _in_thread(_finish_file, self._staging, entry)

    async def _fetch_part(self, job: PartJob) -> None:
        async with self._slots:
            digest = hashlib.sha256()
            done = [0]
            fd = self._fds[job.entry.path]
            key = self._location.key(job.entry.path)
            last = job.start + job.size - 1
            await with_retries(
                lambda: self._get_range(job, key, fd, digest, done),
                self._transfer,
                f"GET {key} bytes {job.start}-{last}",
            )
        if digest.hexdigest() != job.entry.part_sha256[job.index]:
            raise IntegrityError(
                f"{job.entry.path}: part {job.index} (bytes {job.start}-{last}) does not match the "
                "manifest; the object in the bucket differs from what was pushed (push it again)"
            )
        # Flush while other parts still download, so the sync before promotion is short.
        await _in_thread(os.fdatasync, fd)

    async def _get_range(
        self, job: PartJob, key: str, fd: int, digest: hashlib._Hash, done: list[int]
    ) -> None:
        """One attempt: continue the part from `done[0]` bytes in, appending to `digest`."""
        first = job.start + done[0]
        last = job.start + job.size - 1
        response = await self._client.get_object(
            Bucket=self._location.bucket, Key=key, Range=f"bytes={first}-{last}"
        )
        total = response.get("ContentRange", "").rpartition("/")[2]
        if total and total != "*" and int(total) != job.entry.size:
            raise IntegrityError(
                f"{job.entry.path}: the object holds {total} bytes, the manifest says "
                f"{job.entry.size}; the bucket changed since the push (push it again)"
            )
        buffer = bytearray()
        body = response["Body"]
        # Not `as body`: before aiobotocore 3.8 that gives the bare aiohttp response.
        async with body:
            async for chunk in body.iter_chunks(READ_CHUNK_BYTES):
                if done[0] + len(buffer) + len(chunk) > job.size:
                    raise IntegrityError(
                        f"{job.entry.path}: the store sent more bytes than part {job.index} holds"
                    )
                buffer += chunk
                if len(buffer) >= FLUSH_BYTES:
                    await self._flush(job, fd, digest, done, bytes(buffer))
                    buffer.clear()
        if buffer:
            await self._flush(job, fd, digest, done, bytes(buffer))
        if done[0] != job.size:
            raise botocore.exceptions.IncompleteReadError(
                actual_bytes=done[0], expected_bytes=job.size
            )

    async def _flush(
        self, job: PartJob, fd: int, digest: hashlib._Hash, done: list[int], data: bytes
    ) -> None:
        await _in_thread(_write_and_hash, fd, job.start + done[0], data, digest)
        done[0] += len(data)
        self._on_bytes(len(data))
