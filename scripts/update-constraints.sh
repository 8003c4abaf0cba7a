#!/usr/bin/env bash
# Rewrite deploy/constraints.txt: the exact version of every runtime package, as pip resolves
# `pip install .` today in a clean venv. The Dockerfile installs with `-c deploy/constraints.txt`,
# so an image build is repeatable.
#
# One set of versions for every Python we build on: it is resolved on the oldest (3.11, which
# CI's tests/test_deploy_venv.py replays the Dockerfile with), then installed on the image's
# (Ubuntu 24.04: 3.12), which must take exactly the same versions.
# Usage: bash scripts/update-constraints.sh   (RESOLVE_PYTHON=python3.11 IMAGE_PYTHON=python3.12)
set -euo pipefail
cd "$(dirname "$0")/.."

RESOLVE_PYTHON=${RESOLVE_PYTHON:-python3.11}
IMAGE_PYTHON=${IMAGE_PYTHON:-python3.12}
OUT=deploy/constraints.txt
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# freeze PYTHON NAME [pip install args...]: a clean venv with the package; prints its versions.
freeze() {
  local python=$1 name=$2
  shift 2
  "$python" -m venv "$work/$name"
  "$work/$name/bin/python" -m pip install -q --upgrade pip
  "$work/$name/bin/python" -m pip install -q --no-compile . "$@"
  "$work/$name/bin/python" -m pip check >&2
  "$work/$name/bin/python" -m pip freeze --exclude streamscribe
}

freeze "$RESOLVE_PYTHON" resolved > "$work/resolved.txt"
freeze "$IMAGE_PYTHON" image -c "$work/resolved.txt" > "$work/image.txt"
if ! diff -u "$work/resolved.txt" "$work/image.txt"; then
  echo "$IMAGE_PYTHON installs other packages than $RESOLVE_PYTHON resolved (above)" >&2
  exit 1
fi
{
  echo "# Exact runtime versions for the Docker image: pip install . -c $OUT"
  echo "# Resolved on $("$RESOLVE_PYTHON" -V) and installed the same on $("$IMAGE_PYTHON" -V),"
  echo "# $(uname -m), by scripts/update-constraints.sh."
  cat "$work/resolved.txt"
} > "$OUT"
echo "wrote $OUT: $(grep -vc '^#' "$OUT") packages"
