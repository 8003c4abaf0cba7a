"""Fresh virtual environments for the install tests (Docker replay, dependency floors).

A child process gets this machine's interpreter and the builder's network and registry
settings (proxies, PIP_*, CA bundles), as a Docker daemon passes them to RUN steps, and
nothing else of this machine's environment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_PASSTHROUGH = re.compile(
    r"(?i)^(.*_proxy|PIP_.*|SSL_CERT_.*|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE)$"
)
BASE_PYTHON = Path(sys.base_prefix) / "bin" / "python3"


def build_env() -> dict[str, str]:
    """A bare environment: the base interpreter first on PATH, plus the builder's settings."""
    env = {k: v for k, v in os.environ.items() if HOST_PASSTHROUGH.match(k)}
    env["PATH"] = f"{BASE_PYTHON.parent}:{BASE_PATH}"
    return env


def create_venv(path: Path) -> Path:
    """A venv without pip (the test's own pip installs into it); returns its interpreter."""
    subprocess.run(
        [str(BASE_PYTHON), "-m", "venv", "--without-pip", str(path)],
        env=build_env(),
        check=True,
        capture_output=True,
    )
    return path / "bin" / "python"


def pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run this venv's pip against another interpreter (`pip --python`); never raises."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), *args],
        env=build_env(),
        capture_output=True,
        text=True,
        check=False,
    )
