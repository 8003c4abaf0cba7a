"""The runtime dependencies at their declared floors, installed as a new user would.

A fresh venv gets the package (built from its sources, with setuptools at its floor) and
every runtime dependency pinned to the `>=` version pyproject.toml declares, so this test
follows pyproject. Then `pip check`, and in that venv: every module imports, a WAV
container streams through PyAV, both VADs and the engine run, and a cold start pulls a
model from a real local S3 server (moto, run here) with `python -m cache pull`.
"""

from __future__ import annotations

import asyncio
import filecmp
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cache.push import push
from cache.s3 import TransferConfig
from tests.dockerfile_model import build_context_files, read_dockerignore
from tests.support.locals3 import moto_server, s3_client
from tests.support.paths import REPO_ROOT, reference_texts
from tests.venvs import build_env, create_venv, pip

PROBE = Path(__file__).with_name("floor_probe.py")
SPEECH_FILE = "ljspeech_LJ001-0001.wav"
KEY_ID = "AKIASTREAMSCRIBEFLOOR"
SECRET = "streamscribe-floor-secret"  # a fake key, only moto sees it
PART_SIZE_BYTES = 1024 * 1024


def floor_pins(requirements: Iterable[str]) -> dict[str, str]:
    """Name -> `name==floor` from each requirement's `>=` specifier, with its marker."""
    pins: dict[str, str] = {}
    for text in requirements:
        requirement = Requirement(text)
        floors = [s.version for s in requirement.specifier if s.operator == ">="]
        if len(floors) != 1:
            raise ValueError(f"{text!r}: declare one `>=` floor")
        marker = f"; {requirement.marker}" if requirement.marker else ""
        pins[requirement.name] = f"{requirement.name}=={floors[0]}{marker}"
    return pins


def pyproject() -> dict[str, Any]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def test_floor_pins_take_each_requirement_at_its_floor() -> None:
    pins = floor_pins(["faster-whisper>=1.2.1,<1.3", "numpy>=1.26; python_version < '4'"])
    assert pins == {
        "faster-whisper": "faster-whisper==1.2.1",
        "numpy": 'numpy==1.26; python_version < "4"',
    }
    with pytest.raises(ValueError, match="one `>=` floor"):
        floor_pins(["numpy<3"])


def test_every_runtime_and_build_dependency_declares_a_floor() -> None:
    project = pyproject()
    for requirements in (project["project"]["dependencies"], project["build-system"]["requires"]):
        assert len(floor_pins(requirements)) == len(requirements)


# --- the floor venv ------------------------------------------------------------------


@dataclass(frozen=True)
class FloorVenv:
    python: Path
    pins: dict[str, str]


def _write_lines(path: Path, lines: Iterable[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def _copy_sources(target: Path) -> Path:
    """The package's sources, as the Docker build context has them (no venv, no tests)."""
    for relative in build_context_files(REPO_ROOT, read_dockerignore(REPO_ROOT / ".dockerignore")):
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / relative, target / relative)
    return target


@pytest.fixture(scope="module")
def floor_venv(tmp_path_factory: pytest.TempPathFactory) -> FloorVenv:
    root = tmp_path_factory.mktemp("floors")
    project = pyproject()
    pins = floor_pins(project["project"]["dependencies"])
    constraints = _write_lines(root / "constraints.txt", pins.values())
    build_pins = floor_pins(project["build-system"]["requires"]).values()
    build_constraints = _write_lines(root / "build-constraints.txt", build_pins)
    started = time.monotonic()
    python = create_venv(root / "venv")
    installed = pip(
        python,
        "install",
        "--quiet",
        "--no-compile",  # botocore's thousands of modules: bytecode would double the time
        "--constraint",
        str(constraints),
        "--build-constraint",
        str(build_constraints),
        str(_copy_sources(root / "src")),
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    print(f"\nfloor venv installed in {time.monotonic() - started:.0f} s")  # 20 s, cache warm
    return FloorVenv(python=python, pins=pins)


def _installed_versions(venv: FloorVenv) -> dict[str, str]:
    listed = pip(venv.python, "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    return {canonicalize_name(item["name"]): item["version"] for item in json.loads(listed.stdout)}


def _same_version(installed: str, pin: str) -> bool:
    requirement = Requirement(pin)
    applies = requirement.marker is None or requirement.marker.evaluate()
    return not applies or requirement.specifier.contains(installed, prereleases=True)


@pytest.mark.integration
def test_floors_install_together_and_pass_pip_check(floor_venv: FloorVenv) -> None:
    versions = _installed_versions(floor_venv)
    for name, pin in floor_venv.pins.items():
        installed = versions[canonicalize_name(name)]
        assert _same_version(installed, pin), f"{name} {installed} installed, not {pin}"
    checked = pip(floor_venv.python, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _run(python: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run the floor venv's interpreter outside the repo, so only the installed package loads."""
    result = subprocess.run(
        [str(python), *args],
        cwd=python.parent,
        env={**build_env(), "HF_HUB_OFFLINE": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


@pytest.mark.integration
def test_the_package_works_at_its_floors(
    floor_venv: FloorVenv, audio_dir: Path, model_dir: Path
) -> None:
    speech = audio_dir / SPEECH_FILE
    report = json.loads(_run(floor_venv.python, str(PROBE), str(speech), str(model_dir)))
    assert "server.app" in report["modules"] and "cache.download" in report["modules"]
    # A 1.5 s stereo 440 Hz WAV at 44.1 kHz, streamed in 1 kB pieces: mono 16 kHz, L/R mixed.
    for decoded in (report["container_tone"], report["linear16_tone"]):
        assert abs(decoded["samples"] - 24_000) <= 16, decoded
        assert decoded["frequency_hz"] == pytest.approx(440, abs=3)
        assert decoded["peak"] == pytest.approx(0.4, abs=0.01)
    assert report["container_format"] == report["speech_format"] == "wav"
    vad = report["vad"]
    assert vad["silero_speech"] > 0.5 and vad["webrtc_speech"] > 0.5, vad
    assert vad["silero_silence"] == vad["webrtc_silence"] == 0.0, vad
    reference = _words(reference_texts()[SPEECH_FILE])
    for key in ("transcript", "live_transcript"):  # the engine alone, then a live session
        heard = set(_words(report[key]))
        assert sum(word in heard for word in reference) >= 0.8 * len(reference), report[key]
    assert "process_resident_memory_bytes" in report["metrics"]


# --- cold start from S3 ----------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    endpoint: str
    source: str
    model: Path


@pytest.fixture(scope="module")
def pushed_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bucket]:
    """A 3 MiB model in 1 MiB parts, pushed by this venv's cache/ to a local S3 server."""
    model = tmp_path_factory.mktemp("model")
    (model / "model.bin").write_bytes(os.urandom(3 * PART_SIZE_BYTES + 123))
    (model / "config.json").write_text('{"layers": 1}\n', encoding="utf-8")
    keys = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
    with moto_server() as (_, endpoint):
        bucket = f"floors-{uuid.uuid4().hex[:8]}"
        s3_client(endpoint, KEY_ID, SECRET).create_bucket(Bucket=bucket)
        source = f"s3://{bucket}/whisper/tiny"
        transfer = TransferConfig(part_size_bytes=PART_SIZE_BYTES)
        asyncio.run(push(model, source, endpoint_url=endpoint, environ=keys, transfer=transfer))
        yield Bucket(endpoint=endpoint, source=source, model=model)


@pytest.mark.integration
def test_cold_start_from_s3_at_the_floors(
    floor_venv: FloorVenv, pushed_model: Bucket, tmp_path: Path
) -> None:
    env = {
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }
    cache_dir = tmp_path / "cache"
    out = _run(
        floor_venv.python,
        "-m",
        "cache",
        "pull",
        pushed_model.source,
        "--s3-endpoint",
        pushed_model.endpoint,
        "--cache-dir",
        str(cache_dir),
        env=env,
    )
    local = Path(out.strip().splitlines()[-1])
    assert local.is_relative_to(cache_dir), out
    names = ["config.json", "model.bin"]
    _, mismatch, errors = filecmp.cmpfiles(pushed_model.model, local, names, shallow=False)
    assert mismatch == [] and errors == []
