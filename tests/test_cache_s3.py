"""cache/ against a real S3-compatible server (moto on 127.0.0.1): push, hydrate, faults, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import filecmp
import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from cache.errors import DiskSpaceError, HydrationError, IntegrityError, RemoteError
from cache.layout import LOCK_NAME, PARTIAL_DIR, CacheDir
from cache.manifest import MANIFEST_NAME, model_files
from cache.push import push
from cache.s3 import TransferConfig
from cache.store import HydrationProgress, hydrate
from tests.support.locals3 import moto_server, s3_client
from tests.support.paths import REPO_ROOT
from tests.support.process import free_port

pytestmark = pytest.mark.integration  # a real S3 server (moto) and `python -m cache` processes

KEY_ID = "AKIASTREAMSCRIBETEST"
SECRET = "streamscribe-test-secret-do-not-print"  # a fake key, only moto sees it
FAST_FAIL = TransferConfig(max_attempts=2, backoff_base_s=0.01, connect_timeout_s=2)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer AWS/B2 settings leak in; fake keys for moto; no ~/.aws files read."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "B2_", "STREAMSCRIBE_CACHE")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def _fake_env() -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as (_, endpoint):
        yield endpoint


def _boto(endpoint: str) -> Any:
    return s3_client(endpoint, KEY_ID, SECRET)


def _new_bucket(endpoint: str) -> str:
    name = f"models-{uuid.uuid4().hex[:12]}"
    _boto(endpoint).create_bucket(Bucket=name)
    return name


@dataclass(frozen=True)
class Pushed:
    endpoint: str
    bucket: str
    source: str


async def _push(endpoint: str, directory: Path, part_size_bytes: int | None = None) -> Pushed:
    bucket = _new_bucket(endpoint)
    source = f"s3://{bucket}/whisper/tiny.en"
    transfer = TransferConfig(part_size_bytes=part_size_bytes or TransferConfig().part_size_bytes)
    await push(
        directory,
        source,
        model_name="tiny.en",
        endpoint_url=endpoint,
        environ=_fake_env(),
        transfer=transfer,
    )
    return Pushed(endpoint=endpoint, bucket=bucket, source=source)


@pytest.fixture(scope="module")
def pushed(s3_endpoint: str, model_dir: Path) -> Pushed:
    """The real tiny.en, pushed once for the tests that only read it."""
    return asyncio.run(_push(s3_endpoint, model_dir))


def _clone(pushed: Pushed) -> Pushed:
    """A private copy of the pushed model (server-side copies), for tests that change the bucket."""
    client = _boto(pushed.endpoint)
    bucket = _new_bucket(pushed.endpoint)
    for item in client.list_objects_v2(Bucket=pushed.bucket)["Contents"]:
        client.copy_object(
            Bucket=bucket, Key=item["Key"], CopySource={"Bucket": pushed.bucket, "Key": item["Key"]}
        )
    return Pushed(pushed.endpoint, bucket, pushed.source.replace(pushed.bucket, bucket))


def _assert_same_model(local: Path, original: Path) -> None:
    names = model_files(original)
    assert names == model_files(local)
    _, mismatch, errors = filecmp.cmpfiles(original, local, names, shallow=False)
    assert mismatch == [] and errors == []


def _small_model(directory: Path, seed: bytes) -> Path:
    directory.mkdir(parents=True)
    (directory / "model.bin").write_bytes(seed * 70_000)
    (directory / "config.json").write_text('{"layers": 1}\n')
    return directory


@dataclass(frozen=True)
class Pulled:
    cache: Path
    path: Path
    progress: HydrationProgress


@pytest.fixture(scope="module")
def pulled(pushed: Pushed, tmp_path_factory: pytest.TempPathFactory) -> Pulled:
    """One cold pull of the pushed model; tests needing a warm cache work on copies of it."""
    cache = tmp_path_factory.mktemp("warm") / "cache"
    progress = HydrationProgress()
    path = asyncio.run(
        hydrate(
            pushed.source,
            cache,
            endpoint_url=pushed.endpoint,
            environ=_fake_env(),
            progress=progress,
        )
    )
    return Pulled(cache=cache, path=path, progress=progress)


def _warm_copy(pulled: Pulled, tmp_path: Path) -> tuple[Path, Path]:
    """(cache root, model path) of a private copy of the warm cache."""
    cache = tmp_path / "cache"
    shutil.copytree(pulled.cache, cache)
    return cache, cache / pulled.path.relative_to(pulled.cache)


def test_push_then_pull_is_byte_identical(pulled: Pulled, model_dir: Path) -> None:
    path, progress = pulled.path, pulled.progress
    _assert_same_model(path, model_dir)
    assert (path / MANIFEST_NAME).is_file()
    total = sum((model_dir / name).stat().st_size for name in model_files(model_dir))
    assert progress.as_dict() == {
        "state": "done",
        "bytes_done": total,
        "bytes_total": total,
        "files_done": 4,
        "files_total": 4,
        "bytes_reused": 0,
    }
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


async def test_second_pull_downloads_nothing(
    pushed: Pushed, pulled: Pulled, tmp_path: Path
) -> None:
    cache, first = _warm_copy(pulled, tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in first.iterdir() if p.name != MANIFEST_NAME}
    progress = HydrationProgress()
    states: list[str] = []
    second = await hydrate(
        pushed.source,
        cache,
        endpoint_url=pushed.endpoint,
        progress=progress,
        on_progress=lambda p: states.append(p.state),
    )
    assert second == first
    assert "downloading" not in states
    assert progress.bytes_reused == progress.bytes_total > 0
    after = {p.name: p.stat().st_mtime_ns for p in second.iterdir() if p.name != MANIFEST_NAME}
    assert after == before


async def test_endpoint_and_credentials_come_from_the_environment(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model = _small_model(tmp_path / "small", b"env")
    pushed = await _push(s3_endpoint, model)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("B2_ENDPOINT", pushed.endpoint)
    monkeypatch.setenv("B2_APPLICATION_KEY_ID", KEY_ID)
    monkeypatch.setenv("B2_APPLICATION_KEY", SECRET)
    b2_source = pushed.source.replace("s3://", "b2://")
    path = await hydrate(b2_source, tmp_path / "cache")
    _assert_same_model(path, model)


@pytest.mark.parametrize("damage", ["same-size", "truncated"])
async def test_tampered_object_is_refused_and_nothing_promoted(
    pushed: Pushed, tmp_path: Path, damage: str
) -> None:
    copy = _clone(pushed)
    client = _boto(copy.endpoint)
    key = "whisper/tiny.en/tokenizer.json"
    original = client.get_object(Bucket=copy.bucket, Key=key)["Body"].read()
    half = original[: len(original) // 2]
    tampered = original[:-10] + b"X" * 10 if damage == "same-size" else half
    client.put_object(Bucket=copy.bucket, Key=key, Body=tampered)
    cache = tmp_path / "cache"

    with pytest.raises(IntegrityError) as caught:
        await hydrate(copy.source, cache, endpoint_url=copy.endpoint)

    message = str(caught.value)
    assert "tokenizer.json" in message and copy.bucket in message and copy.endpoint in message
    assert CacheDir(cache).models() == []
    outside_staging = [p for p in cache.rglob("*") if p.is_file() and ".staging-" not in str(p)]
    assert not any(p.read_bytes() == tampered for p in outside_staging)
    finished = [p for p in cache.rglob("tokenizer.json") if PARTIAL_DIR not in p.parts]
    assert finished == []  # at most an unverified .partial/tokenizer.json remains


SLOW_DOWN = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class CuttableProxy:
    """A TCP relay to the S3 server that can drop every connection at once, then come back.

    The first `refuse_connections` connections get a 503 SlowDown instead of the relay.
    """

    def __init__(self, upstream_port: int, refuse_connections: int = 0) -> None:
        self.upstream_port = upstream_port
        self.refuse_connections = refuse_connections
        self.refused = 0
        self.port = 0
        self.cut_count = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self.cut_count += 1

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.refused < self.refuse_connections:
            self.refused += 1
            await client_r.readuntil(b"\r\n\r\n")
            client_w.write(
                b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(SLOW_DOWN), SLOW_DOWN)
            )
            await client_w.drain()
            client_w.close()
            return
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers.update((client_w, server_w))

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        try:
            await asyncio.gather(pump(client_r, server_w), pump(server_r, client_w))
        finally:
            self._writers.difference_update((client_w, server_w))


async def test_interrupted_download_resumes_from_verified_parts(
    s3_endpoint: str, model_dir: Path, tmp_path: Path
) -> None:
    part_bytes = 1024 * 1024
    pushed = await _push(s3_endpoint, model_dir, part_size_bytes=part_bytes)
    proxy = CuttableProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    await proxy.start()
    transfer = TransferConfig(max_concurrency=2, max_attempts=2, backoff_base_s=0.01)
    cut_after_bytes = 24 * part_bytes
    cache = tmp_path / "cache"

    def cut_midway(progress: HydrationProgress) -> None:
        downloading = progress.state == "downloading"
        if downloading and progress.bytes_done >= cut_after_bytes and not proxy.cut_count:
            proxy.cut()

    with pytest.raises(RemoteError) as caught:
        await hydrate(
            pushed.source, cache, endpoint_url=proxy.url, transfer=transfer, on_progress=cut_midway
        )
    assert pushed.bucket in str(caught.value) and proxy.url in str(caught.value)
    assert CacheDir(cache).models() == []

    await proxy.start()  # the same port again
    progress = HydrationProgress()
    path = await hydrate(
        pushed.source, cache, endpoint_url=proxy.url, transfer=transfer, progress=progress
    )
    _assert_same_model(path, model_dir)
    refetched = progress.bytes_total - progress.bytes_reused
    # Only parts that were in flight when the connection dropped are fetched twice.
    assert progress.bytes_reused >= cut_after_bytes - transfer.max_concurrency * part_bytes
    assert 0 < refetched <= progress.bytes_total - cut_after_bytes + 2 * part_bytes


async def test_slow_down_answers_are_retried_with_backoff(s3_endpoint: str, tmp_path: Path) -> None:
    model = _small_model(tmp_path / "small", b"retry")
    pushed = await _push(s3_endpoint, model)
    proxy = CuttableProxy(int(s3_endpoint.rsplit(":", 1)[1]), refuse_connections=3)
    await proxy.start()
    transfer = TransferConfig(max_attempts=4, backoff_base_s=0.01)
    path = await hydrate(
        pushed.source, tmp_path / "cache", endpoint_url=proxy.url, transfer=transfer
    )
    assert proxy.refused == 3
    _assert_same_model(path, model)

    proxy.refused = 0  # three refusals exhaust three attempts: the error says why
    with pytest.raises(RemoteError, match=r"SlowDown \(HTTP 503\).*after 3 attempts"):
        await hydrate(
            pushed.source,
            tmp_path / "other-cache",
            endpoint_url=proxy.url,
            transfer=TransferConfig(max_attempts=3, backoff_base_s=0.01),
        )


def _pull_cmd(pushed: Pushed, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cache",
        "-v",
        "pull",
        pushed.source,
        "--s3-endpoint",
        pushed.endpoint,
        "--cache-dir",
        str(cache),
        *extra,
    ]


def test_two_processes_share_one_cache(pushed: Pushed, model_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    held = FileLock(cache / LOCK_NAME)
    held.acquire()
    procs = [
        subprocess.Popen(
            _pull_cmd(pushed, cache),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        # Both must be queued on the lock before either may start.
        for proc in procs:
            assert proc.stderr is not None
            for line in proc.stderr:
                if "another process is using the cache" in line:
                    break
            else:
                pytest.fail(f"pull exited without waiting for the lock (rc {proc.wait()})")
    finally:
        held.release()
    results = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], results
    paths = {Path(out.strip()) for out, _ in results}
    assert len(paths) == 1
    _assert_same_model(paths.pop(), model_dir)
    summaries = sorted("up to date" if "up to date" in err else "fetched" for _, err in results)
    assert summaries == ["fetched", "up to date"], results


async def test_too_little_disk_gives_a_clear_error(pushed: Pushed, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DiskSpaceError) as caught:
        await hydrate(pushed.source, cache, endpoint_url=pushed.endpoint, reserve_bytes=10**18)
    message = str(caught.value)
    assert "not enough disk space" in message and str(cache) in message
    assert "74.5 MiB" in message  # what the model needs
    assert "STREAMSCRIBE_CACHE_RESERVE_BYTES" in message
    assert CacheDir(cache).models() == []


def _temporary_credentials(endpoint: str) -> dict[str, str]:
    """Key, secret and session token of a role, allowed all of S3, assumed through moto's STS."""
    import boto3  # type: ignore[import-untyped,unused-ignore]

    def client(service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
        )

    name = f"reader-{uuid.uuid4().hex[:8]}"
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole"}],
    }
    role = client("iam").create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
    allow = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    client("iam").put_role_policy(RoleName=name, PolicyName="s3", PolicyDocument=json.dumps(allow))
    assumed = client("sts").assume_role(RoleArn=role["Role"]["Arn"], RoleSessionName="hydrate")
    credentials = assumed["Credentials"]
    return {
        "AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
        "AWS_SESSION_TOKEN": credentials["SessionToken"],
    }


async def test_temporary_credentials_sign_with_their_session_token(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import moto.settings

    model = _small_model(tmp_path / "small", b"sts")
    pushed = await _push(s3_endpoint, model)
    temporary = _temporary_credentials(s3_endpoint)
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks keys now
    path = await hydrate(
        pushed.source, tmp_path / "cache", endpoint_url=pushed.endpoint, environ=temporary
    )
    _assert_same_model(path, model)
    without_token = {k: v for k, v in temporary.items() if k != "AWS_SESSION_TOKEN"}
    with pytest.raises(HydrationError, match="InvalidAccessKeyId"):
        await hydrate(
            pushed.source, tmp_path / "other", endpoint_url=pushed.endpoint, environ=without_token
        )


def test_bad_credentials_give_a_clear_error_without_the_secret(
    pushed: Pushed, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import moto.settings

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks keys now
    env = dict(os.environ, AWS_SECRET_ACCESS_KEY=SECRET, PYTHONUNBUFFERED="1")
    done = subprocess.run(
        _pull_cmd(pushed, tmp_path / "cache"),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "InvalidAccessKeyId" in done.stderr and "AWS_ACCESS_KEY_ID" in done.stderr
    assert pushed.bucket in done.stderr and pushed.endpoint in done.stderr
    assert SECRET not in done.stderr + done.stdout


async def test_unreachable_bucket_with_a_complete_cache_starts_from_it(
    pushed: Pushed, pulled: Pulled, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache, warm = _warm_copy(pulled, tmp_path)
    dead_endpoint = f"http://127.0.0.1:{free_port()}"
    progress = HydrationProgress()
    with caplog.at_level(logging.WARNING, logger="cache"):
        path = await hydrate(
            pushed.source, cache, endpoint_url=dead_endpoint, transfer=FAST_FAIL, progress=progress
        )
    assert path == warm and progress.state == "done"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(pushed.bucket in w and dead_endpoint in w and str(warm) in w for w in warnings)


async def test_unreachable_bucket_without_cache_names_bucket_and_endpoint(
    pushed: Pushed, tmp_path: Path
) -> None:
    dead_endpoint = f"http://127.0.0.1:{free_port()}"
    progress = HydrationProgress()
    with pytest.raises(HydrationError) as caught:
        await hydrate(
            pushed.source,
            tmp_path / "cache",
            endpoint_url=dead_endpoint,
            transfer=FAST_FAIL,
            progress=progress,
        )
    message = str(caught.value)
    assert pushed.bucket in message and dead_endpoint in message
    assert "Could not connect" in message and "after 2 attempts" in message
    assert progress.state == "failed"


async def test_missing_manifest_says_how_to_push(s3_endpoint: str, tmp_path: Path) -> None:
    bucket = _new_bucket(s3_endpoint)
    with pytest.raises(RemoteError, match=r"no manifest at .*python -m cache push"):
        await hydrate(f"s3://{bucket}/nothing", tmp_path / "cache", endpoint_url=s3_endpoint)


async def test_keep_models_keeps_only_the_newest(s3_endpoint: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    kept: list[Path] = []
    for name in ("alpha", "beta", "gamma"):
        pushed = await _push(s3_endpoint, _small_model(tmp_path / name, name.encode()))
        kept.append(
            await hydrate(pushed.source, cache, endpoint_url=pushed.endpoint, keep_models=2)
        )
    remaining = sorted(m.path for m in CacheDir(cache).models())
    assert remaining == sorted(kept[1:])
    assert not kept[0].exists()


async def test_damaged_cached_copy_is_fetched_again(s3_endpoint: str, tmp_path: Path) -> None:
    model = _small_model(tmp_path / "small", b"ab")
    pushed = await _push(s3_endpoint, model)
    cache = tmp_path / "cache"
    path = await hydrate(pushed.source, cache, endpoint_url=pushed.endpoint)
    (path / "model.bin").write_bytes(b"short")
    again = await hydrate(pushed.source, cache, endpoint_url=pushed.endpoint)
    assert again == path
    _assert_same_model(again, model)


def test_cli_ls_pull_and_verify(s3_endpoint: str, tmp_path: Path) -> None:
    pushed = asyncio.run(_push(s3_endpoint, _small_model(tmp_path / "small", b"cli")))
    cache = tmp_path / "cache"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cache", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    remote = cli("ls", pushed.source, "--s3-endpoint", pushed.endpoint, "--cache-dir", str(cache))
    assert remote.returncode == 0, remote.stderr
    assert "model tiny.en, 2 files" in remote.stdout and "cached: no" in remote.stdout
    pulled = cli("pull", pushed.source, "--s3-endpoint", pushed.endpoint, "--cache-dir", str(cache))
    assert pulled.returncode == 0, pulled.stderr
    assert "downloading:" in pulled.stderr  # progress output
    path = Path(pulled.stdout.strip())
    assert cli("verify", "--cache-dir", str(cache)).returncode == 0
    listed = cli("ls", "--cache-dir", str(cache))
    assert "tiny.en" in listed.stdout and str(path) in listed.stdout

    data = bytearray((path / "model.bin").read_bytes())
    data[0] ^= 0xFF  # same size, so only a full re-hash notices
    (path / "model.bin").write_bytes(bytes(data))
    damaged = cli("verify", "--cache-dir", str(cache))
    assert damaged.returncode == 1
    assert "BAD" in damaged.stdout and "model.bin: sha256" in damaged.stdout
