#!/usr/bin/env bash
# Full set-up and test run on a fresh Debian machine: system packages, virtualenv, the test suite,
# then a coverage summary (this process and the servers it starts; see [tool.coverage] in
# pyproject.toml). Usage: bash scripts/test.sh [pytest args...], e.g. -m unit for the quick run.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(chromium pulseaudio pulseaudio-utils libasound2-plugins libportaudio2 haproxy)
if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
  missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if (( ${#missing[@]} )); then
    echo "== apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
echo "== pip install -e .[dev]"
.venv/bin/python -m pip install -q --upgrade pip
# One resolver run for everything: installing moto after aiobotocore would upgrade botocore
# past what aiobotocore accepts.
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/python -m pip check

echo "== ruff, mypy"
.venv/bin/ruff check .
.venv/bin/mypy

echo "== pytest"
export HF_HUB_OFFLINE=1
rm -f .coverage .coverage.*
status=0
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 --cov --cov-report= "$@" || status=$?

echo "== coverage"
.venv/bin/python -m coverage report --sort=cover || true
exit "$status"
