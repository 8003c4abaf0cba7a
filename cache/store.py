"""hydrate(source, cache_dir) -> Path: a verified local model; atomic, resumable, locked."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs

from cache.download import Downloader, plan_staging
from cache.errors import (
    ConfigError,
    DiskSpaceError,
    HydrationError,
    IntegrityError,
    ManifestError,
    RemoteError,
)
from cache.layout import PARTIAL_DIR, CacheDir, CachedModel, manifest_version
from cache.lock import cache_lock
from cache.manifest import MANIFEST_NAME, Manifest
from cache.s3 import (
    S3Location,
    S3Settings,
    TransferConfig,
    error_code,
    is_remote,
    open_client,
    parse_source,
    resolve_settings,
    with_retries,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = [
    "HydrationProgress",
    "default_cache_dir",
    "format_bytes",
    "get_manifest",
    "hydrate",
    "is_remote",
]

log = logging.getLogger(__name__)

DEFAULT_RESERVE_BYTES = 64 * 1024 * 1024
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


@dataclass
class HydrationProgress:
    """Where a hydration stands; mutated while it runs, read by /readyz and /metrics."""

    state: str = "idle"  # "checking" | "downloading" | "verifying" | "done" | "failed"
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    bytes_reused: int = 0  # verified bytes already on disk when downloading began

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def default_cache_dir() -> Path:
    """The user's cache directory for models (platformdirs), when no cache dir is given."""
    return platformdirs.user_cache_path("streamscribe", appauthor=False) / "models"


def format_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


async def hydrate(
    source: str,
    cache_dir: Path,
    *,
    endpoint_url: str | None = None,
    environ: Mapping[str, str] | None = None,
    keep_models: int | None = None,
    progress: HydrationProgress | None = None,
    transfer: TransferConfig | None = None,
    reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    on_progress: Callable[[HydrationProgress], None] | None = None,
) -> Path:
    """Return a local directory holding the verified model of `source` (s3:// or b2://).

    A complete cached copy matching the bucket's manifest is used as is; otherwise the
    missing files are fetched and verified under the cache lock. If the bucket cannot be
    read but a complete copy of this source is cached, that copy is used with a warning.
    A download must leave `reserve_bytes` free on the cache's disk. `environ` holds the
    endpoint and credential variables (AWS_*, B2_*). Raises HydrationError (naming bucket,
    endpoint and reason) when neither works.
    """
    env = os.environ if environ is None else environ
    location = parse_source(source)
    settings = resolve_settings(location, endpoint_url, env)
    where = f"{location.url} (bucket {location.bucket!r} at {settings.endpoint_label})"
    state = progress if progress is not None else HydrationProgress()
    try:
        if keep_models is not None and keep_models < 1:
            raise ConfigError(f"keep_models must be at least 1, not {keep_models}")
        if reserve_bytes < 0:
            raise ConfigError(f"reserve_bytes must be zero or more, not {reserve_bytes}")
        job = _Hydration(
            location=location,
            settings=settings,
            cache=CacheDir(cache_dir),
            transfer=transfer or TransferConfig(),
            progress=state,
            on_progress=on_progress,
            reserve_bytes=reserve_bytes,
            keep_models=keep_models,
            where=where,
        )
        state.state = "checking"
        async with cache_lock(cache_dir):
            return await job.run()
    except HydrationError as exc:
        state.state = "failed"
        raise type(exc)(f"cannot hydrate {where}: {exc}") from exc
    except OSError as exc:
        state.state = "failed"
        if exc.errno == errno.ENOSPC:
            raise DiskSpaceError(
                f"cannot hydrate {where}: the disk under {cache_dir} filled up; free space "
                "there or point --cache-dir / STREAMSCRIBE_CACHE_DIR at a bigger volume"
            ) from exc
        raise HydrationError(f"cannot hydrate {where}: cache directory {cache_dir}: {exc}") from exc


@dataclass
class _Hydration:
    """One hydration run, under the cache lock."""

    location: S3Location
    settings: S3Settings
    cache: CacheDir
    transfer: TransferConfig
    progress: HydrationProgress
    on_progress: Callable[[HydrationProgress], None] | None
    reserve_bytes: int
    keep_models: int | None
    where: str

    async def run(self) -> Path:
        self.cache.empty_trash()
        try:
            async with open_client(self.settings, self.transfer) as client:
                return await self._from_bucket(client)
        except RemoteError as exc:
            cached = self.cache.models(self.location)
            if not cached:
                raise
            log.warning(
                "cannot read %s: %s; starting from the cached copy at %s",
                self.where,
                exc,
                cached[0].path,
            )
            return self._done(cached[0], reused=True)

    async def _from_bucket(self, client: S3Client) -> Path:
        raw = await get_manifest(client, self.location, self.transfer)
        try:
            manifest = Manifest.decode(raw)
        except ManifestError as exc:
            raise IntegrityError(f"the bucket's {MANIFEST_NAME} is unusable: {exc}") from exc
        version = manifest_version(raw)
        target = self.cache.version_dir(self.location, version)
        self._update(
            bytes_total=manifest.total_bytes,
            files_total=len(manifest.files),
            bytes_done=0,
            files_done=0,
            bytes_reused=0,
        )
        cached = self.cache.load_complete(target)
        if cached is not None and cached.manifest == manifest:
            log.info("%s: cached copy at %s is complete; nothing to download", self.where, target)
            return self._done(cached, reused=True)
        if target.exists():
            log.warning("cached copy at %s is damaged; fetching it again", target)
            self.cache.remove(target)
        await self._download(client, manifest, raw, version, target)
        complete = self.cache.load_complete(target)
        if complete is None:
            raise IntegrityError(f"{target} is incomplete right after download")
        return self._done(complete)

    async def _download(
        self, client: S3Client, manifest: Manifest, raw: bytes, version: str, target: Path
    ) -> None:
        staging = self.cache.staging_dir(self.location, version)
        self.cache.discard_staging(self.location, version)
        staging.mkdir(parents=True, exist_ok=True)
        plan = await asyncio.to_thread(plan_staging, staging, manifest)
        if self.keep_models is not None:
            self.cache.prune(self.keep_models, protect=target)
        self._check_space(staging, plan.needed_disk_bytes)
        log.info(
            "%s: downloading %s into %s (%s already verified)",
            self.where,
            format_bytes(manifest.total_bytes - plan.reused_bytes),
            staging,
            format_bytes(plan.reused_bytes),
        )
        self._update(
            state="downloading",
            bytes_done=plan.reused_bytes,
            bytes_reused=plan.reused_bytes,
            files_done=len(plan.finished),
        )
        downloader = Downloader(
            client, self.location, staging, self.transfer, on_bytes=self._advance
        )
        await downloader.fetch(plan)
        self._update(state="verifying")
        for entry in plan.to_fetch:
            await downloader.finish_file(entry)
            self._update(files_done=self.progress.files_done + 1)
        await asyncio.to_thread(_promote, staging, raw, target)

    def _check_space(self, staging: Path, needed_bytes: int) -> None:
        free_bytes = shutil.disk_usage(staging).free
        if free_bytes - needed_bytes < self.reserve_bytes:
            raise DiskSpaceError(
                f"not enough disk space in {self.cache.root}: the model needs "
                f"{format_bytes(needed_bytes)} more and {format_bytes(self.reserve_bytes)} must "
                f"stay free (--cache-reserve-bytes / STREAMSCRIBE_CACHE_RESERVE_BYTES), but only "
                f"{format_bytes(free_bytes)} is free; free space there, point --cache-dir / "
                "STREAMSCRIBE_CACHE_DIR at a bigger volume, or keep fewer models"
            )

    def _done(self, model: CachedModel, *, reused: bool = False) -> Path:
        self.cache.mark_used(model.path)
        if self.keep_models is not None:
            self.cache.prune(self.keep_models, protect=model.path)
        total = model.manifest.total_bytes
        count = len(model.manifest.files)
        if reused:
            self.progress.bytes_reused = total
        self._update(
            state="done", bytes_total=total, bytes_done=total, files_total=count, files_done=count
        )
        return model.path

    def _advance(self, count: int) -> None:
        self.progress.bytes_done += count
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def _update(self, **changes: object) -> None:
        for name, value in changes.items():
            setattr(self.progress, name, value)
        if self.on_progress is not None:
            self.on_progress(self.progress)


async def get_manifest(client: S3Client, location: S3Location, transfer: TransferConfig) -> bytes:
    """The raw manifest of `location`; RemoteError says how to seed the bucket if it is missing."""
    key = location.key(MANIFEST_NAME)

    async def get() -> bytes:
        response = await client.get_object(Bucket=location.bucket, Key=key)
        if response.get("ContentLength", 0) > MAX_MANIFEST_BYTES:
            raise IntegrityError(f"{key} is larger than {format_bytes(MAX_MANIFEST_BYTES)}")
        async with response["Body"] as body:
            return await body.read()

    try:
        return await with_retries(get, transfer, f"GET {key}")
    except RemoteError as exc:
        if error_code(exc.__cause__ or exc) in ("NoSuchKey", "404"):
            raise RemoteError(
                f"no manifest at {key}; seed the bucket with "
                f"`python -m cache push MODEL_DIR {location.url}`"
            ) from exc
        raise


def _promote(staging: Path, raw_manifest: bytes, target: Path) -> None:
    """Manifest last, then the whole folder in one rename (blocking)."""
    shutil.rmtree(staging / PARTIAL_DIR, ignore_errors=True)
    pending = staging / f".{MANIFEST_NAME}.tmp"
    with pending.open("wb") as stream:
        stream.write(raw_manifest)
        stream.flush()
        os.fsync(stream.fileno())
    pending.replace(staging / MANIFEST_NAME)
    _fsync_dir(staging)
    staging.rename(target)
    _fsync_dir(target.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
