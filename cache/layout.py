"""The cache directory's layout: a folder per source, a complete folder per manifest version.

    CACHE_DIR/
      .lock                           held by whoever hydrates or prunes (filelock)
      BUCKET--PREFIX-HASH/            one per s3:// source
        VERSION/                      complete copy (sha256 of the manifest); renamed in whole
          model.bin ... streamscribe-manifest.json
        .staging-VERSION/             downloads in progress; verified files under their own names
          .partial/model.bin          parts land here at their offsets, checked part by part
      .trash-XXXX/                    being removed

A version folder exists only once every file in it was verified and its manifest written last.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cache.errors import ManifestError
from cache.manifest import MANIFEST_NAME, Manifest
from cache.s3 import S3Location

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
STAGING_PREFIX = ".staging-"
PARTIAL_DIR = ".partial"
TRASH_PREFIX = ".trash-"


def source_key(location: S3Location) -> str:
    """A readable folder name for a bucket and prefix (the scheme does not matter)."""
    where = f"{location.bucket}/{location.prefix}"
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{location.bucket}--{location.prefix}")
    return f"{readable.strip('._')[:80]}-{hashlib.sha256(where.encode()).hexdigest()[:8]}"


def manifest_version(raw_manifest: bytes) -> str:
    return hashlib.sha256(raw_manifest).hexdigest()[:16]


@dataclass(frozen=True)
class CachedModel:
    """A complete copy in the cache."""

    path: Path
    manifest: Manifest
    used_at: float

    @property
    def source_key(self) -> str:
        return self.path.parent.name


class CacheDir:
    """Paths and housekeeping of one cache root; callers hold the lock while changing it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def source_dir(self, location: S3Location) -> Path:
        return self.root / source_key(location)

    def version_dir(self, location: S3Location, version: str) -> Path:
        return self.source_dir(location) / version

    def staging_dir(self, location: S3Location, version: str) -> Path:
        return self.source_dir(location) / f"{STAGING_PREFIX}{version}"

    def load_complete(self, path: Path) -> CachedModel | None:
        """The model at `path` if its manifest is there and every file has its size."""
        manifest_path = path / MANIFEST_NAME
        try:
            manifest = Manifest.decode(manifest_path.read_bytes())
            for entry in manifest.files:
                if (path / entry.path).stat().st_size != entry.size:
                    return None
            used_at = manifest_path.stat().st_mtime
        except (OSError, ManifestError):
            return None
        return CachedModel(path=path, manifest=manifest, used_at=used_at)

    def models(self, location: S3Location | None = None) -> list[CachedModel]:
        """Complete copies (of one source, or all), most recently used first."""
        if location is not None:
            sources = [self.source_dir(location)]
        elif self.root.is_dir():
            sources = [p for p in self.root.iterdir() if not p.name.startswith(".")]
        else:
            sources = []
        found: list[CachedModel] = []
        for source in sources:
            if not source.is_dir():
                continue
            for candidate in source.iterdir():
                if candidate.name.startswith(".") or not candidate.is_dir():
                    continue
                model = self.load_complete(candidate)
                if model is not None:
                    found.append(model)
        return sorted(found, key=lambda m: m.used_at, reverse=True)

    def mark_used(self, model_dir: Path) -> None:
        os.utime(model_dir / MANIFEST_NAME)

    def prune(self, keep: int, protect: Path | None) -> list[Path]:
        """Remove all but the newest `keep` models; `protect` (there or not yet) counts as one."""
        others = [m for m in self.models() if m.path != protect]
        slots = keep - 1 if protect is not None else keep
        removed = [m.path for m in others[max(slots, 0) :]]
        for path in removed:
            log.info("removing cached model %s (keeping the newest %d)", path, keep)
            self.remove(path)
            if not any(path.parent.iterdir()):
                path.parent.rmdir()
        return removed

    def discard_staging(self, location: S3Location, keep_version: str) -> None:
        """Drop half-downloaded copies of other versions of this source."""
        source = self.source_dir(location)
        if not source.is_dir():
            return
        for candidate in source.iterdir():
            if candidate.name.startswith(STAGING_PREFIX) and candidate.name != (
                f"{STAGING_PREFIX}{keep_version}"
            ):
                log.info("discarding stale partial download %s", candidate)
                self.remove(candidate)

    def remove(self, path: Path) -> None:
        """Move aside atomically, then delete; a crash leaves only a .trash- folder behind."""
        trash = Path(tempfile.mkdtemp(prefix=TRASH_PREFIX, dir=self.root))
        path.rename(trash / path.name)
        shutil.rmtree(trash)

    def empty_trash(self) -> None:
        if self.root.is_dir():
            for candidate in self.root.iterdir():
                if candidate.name.startswith(TRASH_PREFIX):
                    shutil.rmtree(candidate, ignore_errors=True)
