"""The model manifest: each file's size, sha256 and part sha256s; encode, decode, build, verify."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cache.errors import ManifestError

MANIFEST_NAME = "streamscribe-manifest.json"
FORMAT = "streamscribe-model-manifest"
FORMAT_VERSION = 1
DEFAULT_PART_SIZE_BYTES = 8 * 1024 * 1024
MIN_PART_SIZE_BYTES = 64 * 1024
READ_BLOCK_BYTES = 1024 * 1024

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FileEntry:
    """One file of the model: where it goes, how big it is, and its hashes."""

    path: str
    size: int
    sha256: str
    part_sha256: tuple[str, ...]

    def part_span(self, index: int, part_size_bytes: int) -> tuple[int, int]:
        """(first byte offset, length) of part `index`."""
        start = index * part_size_bytes
        return start, min(part_size_bytes, self.size - start)


@dataclass(frozen=True)
class Manifest:
    """What a pushed model consists of; the authority every downloaded byte is checked against."""

    model: str
    part_size_bytes: int
    files: tuple[FileEntry, ...]

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    def encode(self) -> bytes:
        document = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": self.model,
            "part_size_bytes": self.part_size_bytes,
            "files": [
                {
                    "path": entry.path,
                    "size": entry.size,
                    "sha256": entry.sha256,
                    "part_sha256": list(entry.part_sha256),
                }
                for entry in self.files
            ],
        }
        return (json.dumps(document, indent=2) + "\n").encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Parse and validate; raises ManifestError naming the first problem."""
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"manifest is not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise ManifestError("manifest is not a JSON object")
        if document.get("format") != FORMAT or document.get("version") != FORMAT_VERSION:
            raise ManifestError(
                f"manifest format is {document.get('format')!r} version "
                f"{document.get('version')!r}; expected {FORMAT!r} version {FORMAT_VERSION}"
            )
        model = document.get("model")
        if not isinstance(model, str) or not model:
            raise ManifestError("manifest has no model name")
        part_size = _int_field(document, "part_size_bytes")
        if part_size < MIN_PART_SIZE_BYTES:
            raise ManifestError(f"manifest part size {part_size} is below {MIN_PART_SIZE_BYTES}")
        raw_files = document.get("files")
        if not isinstance(raw_files, list) or not raw_files:
            raise ManifestError("manifest lists no files")
        files = tuple(_decode_entry(raw, part_size) for raw in raw_files)
        check_paths([entry.path for entry in files])
        return cls(model=model, part_size_bytes=part_size, files=files)


def _int_field(document: dict[str, object], name: str) -> int:
    value = document.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ManifestError(f"manifest field {name!r} must be a non-negative integer")
    return value


def _decode_entry(raw: object, part_size_bytes: int) -> FileEntry:
    if not isinstance(raw, dict):
        raise ManifestError("manifest file entry is not an object")
    path = raw.get("path")
    if not isinstance(path, str):
        raise ManifestError("manifest file entry has no path")
    size = _int_field(raw, "size")
    sha256 = raw.get("sha256")
    parts = raw.get("part_sha256")
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
        raise ManifestError(f"{path}: sha256 is not 64 lowercase hex digits")
    if not isinstance(parts, list) or not all(
        isinstance(p, str) and _SHA256_RE.match(p) for p in parts
    ):
        raise ManifestError(f"{path}: part_sha256 is not a list of sha256 hex digests")
    expected_parts = math.ceil(size / part_size_bytes)
    if len(parts) != expected_parts:
        raise ManifestError(f"{path}: {len(parts)} part hashes for {expected_parts} parts")
    return FileEntry(path=path, size=size, sha256=sha256, part_sha256=tuple(parts))


def check_paths(paths: list[str]) -> None:
    """Reject paths that could escape the model directory or collide with our own names."""
    seen: set[str] = set()
    parents: set[str] = set()
    for path in paths:
        pure = PurePosixPath(path)
        if (
            not path
            or "\\" in path
            or "\0" in path
            or pure.is_absolute()
            or str(pure) != path
            or any(part in ("", ".", "..") or part.startswith(".") for part in pure.parts)
        ):
            raise ManifestError(f"unsafe file path in manifest: {path!r}")
        if path == MANIFEST_NAME or path in seen:
            raise ManifestError(f"duplicate or reserved file path in manifest: {path!r}")
        seen.add(path)
        parents.update(str(parent) for parent in pure.parents if str(parent) != ".")
    clash = seen & parents
    if clash:
        raise ManifestError(f"manifest path is both a file and a directory: {sorted(clash)[0]!r}")


def hash_file(
    path: Path, part_size_bytes: int, on_bytes: Callable[[int], None] | None = None
) -> tuple[str, tuple[str, ...]]:
    """(sha256, per-part sha256) of a file, read in bounded blocks."""
    whole = hashlib.sha256()
    parts: list[str] = []
    with path.open("rb") as stream:
        while True:
            part = hashlib.sha256()
            remaining = part_size_bytes
            while remaining:
                block = stream.read(min(READ_BLOCK_BYTES, remaining))
                if not block:
                    break
                whole.update(block)
                part.update(block)
                remaining -= len(block)
                if on_bytes is not None:
                    on_bytes(len(block))
            if remaining == part_size_bytes:
                break
            parts.append(part.hexdigest())
            if remaining:
                break
    return whole.hexdigest(), tuple(parts)


def model_files(directory: Path) -> list[str]:
    """Manifest paths of the regular files under `directory`, minus hidden ones and our manifest."""
    found: list[str] = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if relative == MANIFEST_NAME or any(p.startswith(".") for p in relative.split("/")):
            continue
        if path.is_file():
            found.append(relative)
    return found


def build_manifest(
    directory: Path,
    model: str,
    part_size_bytes: int = DEFAULT_PART_SIZE_BYTES,
    on_bytes: Callable[[int], None] | None = None,
) -> Manifest:
    """Hash every model file under `directory` (blocking; run it in a thread from async code)."""
    if part_size_bytes < MIN_PART_SIZE_BYTES:
        raise ManifestError(f"part size must be at least {MIN_PART_SIZE_BYTES} bytes")
    paths = model_files(directory)
    if not paths:
        raise ManifestError(f"{directory} holds no files to push")
    check_paths(paths)
    entries = []
    for relative in paths:
        file_path = directory / relative
        sha256, parts = hash_file(file_path, part_size_bytes, on_bytes)
        entries.append(
            FileEntry(
                path=relative, size=file_path.stat().st_size, sha256=sha256, part_sha256=parts
            )
        )
    return Manifest(model=model, part_size_bytes=part_size_bytes, files=tuple(entries))


def verify_directory(
    directory: Path, manifest: Manifest, on_bytes: Callable[[int], None] | None = None
) -> list[str]:
    """Re-hash every file of `manifest` under `directory`; returns problems (empty when intact)."""
    problems: list[str] = []
    for entry in manifest.files:
        path = directory / entry.path
        if not path.is_file():
            problems.append(f"{entry.path}: missing")
            continue
        size = path.stat().st_size
        if size != entry.size:
            problems.append(f"{entry.path}: {size} bytes, manifest says {entry.size}")
            continue
        sha256, _ = hash_file(path, manifest.part_size_bytes, on_bytes)
        if sha256 != entry.sha256:
            problems.append(f"{entry.path}: sha256 {sha256} does not match manifest {entry.sha256}")
    return problems
