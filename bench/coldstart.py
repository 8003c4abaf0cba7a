"""`python -m bench.coldstart`: start to ready, local model vs bucket (cold and warm cache).

Starts a local S3 server (moto), pushes the model with `python -m cache push`, then times
`python -m server` from spawn to its `streamscribe: ready` line, interleaving the three
variants in every repetition so that they see the same machine load:
- local: `--model DIR` (the floor: interpreter, imports, model load);
- cold: `--model s3://...` with an empty cache (download + verify + load);
- warm: `--model s3://...` with the cache the cold run filled (manifest check + load).
Prints a table and writes JSON (`--json`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from server.app import builtin_model_dir
from tests.support.locals3 import moto_server, s3_client
from tests.support.paths import REPO_ROOT
from tests.support.server import start_server

KEY_ID = "AKIABENCHCOLDSTART"
SECRET = "bench-coldstart-secret"


def time_to_ready(args: list[str], env: dict[str, str]) -> float:
    """Seconds from spawning the server to its ready line."""
    started = time.perf_counter()
    server = start_server(*args, env=env)
    elapsed_s = time.perf_counter() - started
    server.stop()
    return elapsed_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.coldstart", description=__doc__)
    parser.add_argument("--model", type=Path, default=None, help="model dir (default tiny.en)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    model = args.model or builtin_model_dir()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "B2_"))}
    env.update(AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET, HF_HUB_OFFLINE="1")
    source = "s3://models/whisper/tiny.en"
    times: dict[str, list[float]] = {"local": [], "cold": [], "warm": []}
    with moto_server() as (_, endpoint), tempfile.TemporaryDirectory() as tmp:
        s3_client(endpoint, KEY_ID, SECRET).create_bucket(Bucket="models")
        subprocess.run(
            [sys.executable, "-m", "cache", "push", str(model), source, "--s3-endpoint", endpoint],
            check=True,
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
        )
        for rep in range(args.reps):
            cache = Path(tmp) / f"cache-{rep}"
            remote = ["--model", source, "--cache-dir", str(cache), "--s3-endpoint", endpoint]
            times["local"].append(time_to_ready(["--model", str(model)], env))
            times["cold"].append(time_to_ready(remote, env))
            times["warm"].append(time_to_ready(remote, env))
            shutil.rmtree(cache, ignore_errors=True)
            print(
                f"rep {rep + 1}: " + "  ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                flush=True,
            )
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{'variant':8s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'over local':>11s}")
    for name, values in times.items():
        over = medians[name] - medians["local"]
        print(f"{name:8s} {medians[name]:9.2f} {min(values):7.2f} {max(values):7.2f} {over:+11.2f}")
    if args.json:
        args.json.write_text(json.dumps({"seconds": times, "medians": medians}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
