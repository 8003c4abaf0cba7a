"""The server on an s3:// model: hydrated from a real S3 server, then from the warm cache."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from tests.support.locals3 import moto_server, s3_client
from tests.support.paths import REPO_ROOT
from tests.support.server import start_server
from tests.wsclient import chunks, normalize, read_wav, stream

pytestmark = pytest.mark.integration

KEY_ID = "AKIASTREAMSCRIBESRV"
SECRET = "server-test-secret-never-logged"


@pytest.fixture
def s3_env(tmp_path: Path) -> Iterator[tuple[ThreadedMotoServer, str, dict[str, str]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "B2_", "STREAMSCRIBE"))}
    env.update(
        AWS_ACCESS_KEY_ID=KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
    )
    with moto_server() as (moto, endpoint):
        s3_client(endpoint, KEY_ID, SECRET).create_bucket(Bucket="models")
        yield moto, endpoint, env


def push(model_dir: Path, endpoint: str, env: dict[str, str]) -> str:
    source = "s3://models/whisper/tiny.en"
    subprocess.run(
        [
            *(sys.executable, "-m", "cache", "push", str(model_dir), source),
            *("--s3-endpoint", endpoint, "--model-name", "tiny.en"),
        ],
        check=True,
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
    )
    return source


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


async def transcribe_jfk(ws_url: str, audio_dir: Path) -> str:
    pcm, _, _ = read_wav(audio_dir / "jfk_inaugural.wav")
    url = ws_url + "/v1/listen?encoding=linear16&sample_rate=16000"
    outcome = await stream(url, chunks(pcm, [8000]))
    assert outcome.close_code == 1000
    return normalize(outcome.transcript)


async def test_cold_then_warm_start_from_bucket(
    s3_env: tuple[ThreadedMotoServer, str, dict[str, str]],
    model_dir: Path,
    audio_dir: Path,
    tmp_path: Path,
) -> None:
    moto, endpoint, env = s3_env
    source = push(model_dir, endpoint, env)
    cache = tmp_path / "cache"
    args = ("--model", source, "--cache-dir", str(cache), "--s3-endpoint", endpoint)

    cold = start_server(*args, env=env)
    try:
        assert "what your country can do for you" in await transcribe_jfk(cold.ws_url, audio_dir)
        metrics = await asyncio.to_thread(fetch, cold.http_url + "/metrics")
        size = (model_dir / "model.bin").stat().st_size
        line = next(
            m for m in metrics.splitlines() if m.startswith("streamscribe_hydration_bytes ")
        )
        assert float(line.split()[1]) >= size
        models = json.loads(await asyncio.to_thread(fetch, cold.http_url + "/v1/models"))
        assert models["models"][0]["source"] == source
        assert models["models"][0]["name"] == "tiny.en", "the name recorded by cache push"
    finally:
        cold.stop()

    moto.stop()  # the bucket is gone: the warm cache must be enough
    warm = start_server(*args, env=env)
    try:
        assert "ask what you can do for your country" in await transcribe_jfk(
            warm.ws_url, audio_dir
        )
    finally:
        warm.stop()
        moto.start()  # for the fixture's teardown


def test_bad_credentials_exit_with_a_clear_message(
    s3_env: tuple[ThreadedMotoServer, str, dict[str, str]], tmp_path: Path
) -> None:
    _, endpoint, env = s3_env
    env = {**env, "AWS_SECRET_ACCESS_KEY": "wrong-secret-value"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "--port",
            "0",
            "--model",
            "s3://missing-bucket/tiny.en",
            "--cache-dir",
            str(tmp_path / "empty"),
            "--s3-endpoint",
            endpoint,
        ],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "missing-bucket" in proc.stderr and endpoint in proc.stderr
    assert "wrong-secret-value" not in proc.stderr + proc.stdout
