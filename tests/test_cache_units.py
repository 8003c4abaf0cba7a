"""cache/ pure parts: manifest, source and settings parsing, retry policy, cache layout."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache.__main__ import build_parser
from cache.errors import ConfigError, ManifestError
from cache.layout import CacheDir, manifest_version, source_key
from cache.manifest import MANIFEST_NAME, FileEntry, Manifest, build_manifest, verify_directory
from cache.s3 import (
    S3Location,
    TransferConfig,
    backoff_s,
    is_remote,
    is_retryable,
    parse_source,
    resolve_settings,
)
from cache.store import HydrationProgress, default_cache_dir, format_bytes

PART = 64 * 1024


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _model(directory: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    return directory


def test_build_manifest_hashes_files_and_parts(tmp_path: Path) -> None:
    big = os.urandom(2 * PART + 123)
    _model(
        tmp_path, {"model.bin": big, "sub/empty.txt": b"", ".hidden": b"x", MANIFEST_NAME: b"{}"}
    )
    manifest = build_manifest(tmp_path, "m", PART)
    assert [e.path for e in manifest.files] == ["model.bin", "sub/empty.txt"]
    entry = manifest.files[0]
    assert entry.size == len(big) and entry.sha256 == _sha(big)
    assert entry.part_sha256 == (
        _sha(big[:PART]),
        _sha(big[PART : 2 * PART]),
        _sha(big[2 * PART :]),
    )
    assert manifest.files[1] == FileEntry("sub/empty.txt", 0, _sha(b""), ())
    assert Manifest.decode(manifest.encode()) == manifest
    assert verify_directory(tmp_path, manifest) == []


def test_verify_directory_names_each_problem(tmp_path: Path) -> None:
    _model(tmp_path, {"model.bin": b"a" * 1000, "b.txt": b"bb", "c.txt": b"cc"})
    manifest = build_manifest(tmp_path, "m", PART)
    (tmp_path / "model.bin").write_bytes(b"b" + b"a" * 999)
    (tmp_path / "b.txt").write_bytes(b"b")
    (tmp_path / "c.txt").unlink()
    problems = verify_directory(tmp_path, manifest)
    assert problems == [
        "b.txt: 1 bytes, manifest says 2",
        "c.txt: missing",
        f"model.bin: sha256 {_sha(b'b' + b'a' * 999)} does not match manifest {_sha(b'a' * 1000)}",
    ]


def _document(**changes: object) -> bytes:
    document: dict[str, object] = {
        "format": "streamscribe-model-manifest",
        "version": 1,
        "model": "tiny.en",
        "part_size_bytes": PART,
        "files": [
            {"path": "model.bin", "size": 3, "sha256": _sha(b"abc"), "part_sha256": [_sha(b"abc")]}
        ],
    }
    document.update(changes)
    return json.dumps(document).encode()


def _file(path: str) -> dict[str, object]:
    return {"path": path, "size": 0, "sha256": _sha(b""), "part_sha256": []}


@pytest.mark.parametrize(
    "paths",
    [
        ["../escape"],
        ["/etc/passwd"],
        ["a/../../b"],
        ["a//b"],
        ["./a"],
        [".hidden"],
        ["a\\b"],
        [""],
        [MANIFEST_NAME],
        ["same", "same"],
        ["dir", "dir/file"],
    ],
)
def test_manifest_rejects_unsafe_or_clashing_paths(paths: list[str]) -> None:
    with pytest.raises(ManifestError):
        Manifest.decode(_document(files=[_file(p) for p in paths]))


@pytest.mark.parametrize(
    "changes",
    [
        {"format": "other"},
        {"version": 2},
        {"model": ""},
        {"part_size_bytes": 1024},
        {"part_size_bytes": True},
        {"files": []},
        {"files": [{"path": "a", "size": 3, "sha256": "ABC", "part_sha256": []}]},
        {
            "files": [
                {"path": "a", "size": PART + 1, "sha256": _sha(b""), "part_sha256": [_sha(b"")]}
            ]
        },
        {"files": [{"path": "a", "size": -1, "sha256": _sha(b""), "part_sha256": []}]},
    ],
)
def test_manifest_rejects_malformed_documents(changes: dict[str, object]) -> None:
    with pytest.raises(ManifestError):
        Manifest.decode(_document(**changes))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["format", "version", "model", "part_size_bytes", "files"]), json_values
    )
)
def test_manifest_decode_fails_only_with_manifest_error(changes: dict[str, object]) -> None:
    """Any other exception (KeyError, TypeError, ...) fails the test."""
    with contextlib.suppress(ManifestError):
        manifest = Manifest.decode(_document(**changes))
        assert Manifest.decode(manifest.encode()) == manifest


@settings(deadline=None)
@given(st.binary(max_size=64))
def test_manifest_decode_of_garbage_is_a_manifest_error(data: bytes) -> None:
    with pytest.raises(ManifestError):
        Manifest.decode(data)


def test_parse_source() -> None:
    assert parse_source("s3://bucket/a/b/") == S3Location("s3", "bucket", "a/b")
    assert parse_source("b2://bucket") == S3Location("b2", "bucket", "")
    assert parse_source("b2://bucket/x").key("model.bin") == "x/model.bin"
    assert parse_source("s3://bucket").key("model.bin") == "model.bin"
    assert is_remote("b2://x/y") and not is_remote("/models/tiny.en") and not is_remote("tiny.en")
    for bad in ("s3://", "s3:///prefix", "/local/dir", "s3://bu cket/x"):
        with pytest.raises(ConfigError):
            parse_source(bad)


def test_endpoint_precedence_and_b2_region() -> None:
    location = parse_source("s3://bucket/p")
    env = {"AWS_ENDPOINT_URL": "http://aws.example", "B2_ENDPOINT": "http://b2.example"}
    assert (
        resolve_settings(location, "http://arg.example", env).endpoint_url == "http://arg.example"
    )
    assert resolve_settings(location, None, env).endpoint_url == "http://aws.example"
    b2 = resolve_settings(location, None, {"B2_ENDPOINT": "s3.us-west-004.backblazeb2.com"})
    assert (
        b2.endpoint_url == "https://s3.us-west-004.backblazeb2.com" and b2.region == "us-west-004"
    )
    assert resolve_settings(location, None, {}).endpoint_url is None
    assert resolve_settings(location, None, {"AWS_REGION": "eu-central-1"}).region == "eu-central-1"
    with pytest.raises(ConfigError, match="B2_ENDPOINT"):
        resolve_settings(parse_source("b2://bucket/p"), None, {})
    with pytest.raises(ConfigError, match="not an http"):
        resolve_settings(location, "ftp://host", {})


def test_credentials_from_either_pair_and_never_in_repr() -> None:
    location = parse_source("s3://bucket/p")
    aws = resolve_settings(
        location, None, {"AWS_ACCESS_KEY_ID": "id1", "AWS_SECRET_ACCESS_KEY": "s1"}
    )
    assert (aws.access_key_id, aws.secret_access_key) == ("id1", "s1")
    b2 = resolve_settings(
        location, None, {"B2_APPLICATION_KEY_ID": "id2", "B2_APPLICATION_KEY": "s2"}
    )
    assert (b2.access_key_id, b2.secret_access_key) == ("id2", "s2")
    assert "s2" not in repr(b2) and "id2" not in repr(b2)
    with pytest.raises(ConfigError, match="B2_APPLICATION_KEY is not set") as caught:
        resolve_settings(location, None, {"B2_APPLICATION_KEY_ID": "id2"})
    assert "id2" not in str(caught.value)


def test_temporary_aws_keys_keep_their_session_token() -> None:
    location = parse_source("s3://bucket/p")
    temporary = {"AWS_ACCESS_KEY_ID": "ASIA1", "AWS_SECRET_ACCESS_KEY": "s1"}
    settings = resolve_settings(location, None, {**temporary, "AWS_SESSION_TOKEN": "token1"})
    assert settings.session_token == "token1" and "token1" not in repr(settings)
    assert resolve_settings(location, None, temporary).session_token is None
    b2_keys = {"B2_APPLICATION_KEY_ID": "id2", "B2_APPLICATION_KEY": "s2"}
    b2 = resolve_settings(location, None, {**b2_keys, "AWS_SESSION_TOKEN": "token1"})
    assert b2.session_token is None  # an AWS token never rides along with B2 keys


def _client_error(status: int, code: str) -> botocore.exceptions.ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore.exceptions.ClientError(response, "GetObject")


def test_retry_policy() -> None:
    assert is_retryable(_client_error(503, "ServiceUnavailable"))
    assert is_retryable(_client_error(500, "InternalError"))
    assert is_retryable(_client_error(429, "TooManyRequests"))
    assert not is_retryable(_client_error(403, "AccessDenied"))
    assert not is_retryable(_client_error(404, "NoSuchKey"))
    assert is_retryable(botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"))
    assert is_retryable(botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"))
    assert is_retryable(TimeoutError())
    assert not is_retryable(ValueError("no"))
    transfer = TransferConfig(backoff_base_s=0.25, backoff_max_s=4.0)
    assert [backoff_s(n, transfer) for n in range(1, 8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_cache_cli_takes_flags_then_its_variables_then_defaults(tmp_path: Path) -> None:
    environ = {"STREAMSCRIBE_CACHE_DIR": str(tmp_path), "STREAMSCRIBE_CACHE_RESERVE_BYTES": "5"}
    from_env = build_parser(environ).parse_args(["pull", "s3://b/p"])
    assert (from_env.cache_dir, from_env.cache_reserve_bytes) == (tmp_path, 5)
    flags = ["pull", "s3://b/p", "--cache-dir", "elsewhere", "--cache-reserve-bytes", "7"]
    from_flags = build_parser(environ).parse_args(flags)
    assert (from_flags.cache_dir, from_flags.cache_reserve_bytes) == (Path("elsewhere"), 7)
    defaults = build_parser({}).parse_args(["pull", "s3://b/p"])
    assert defaults.cache_dir == default_cache_dir() and defaults.cache_reserve_bytes == 64 << 20
    assert defaults.cache_dir.name == "models" and "streamscribe" in defaults.cache_dir.parts


def test_progress_and_sizes_read_well() -> None:
    assert HydrationProgress(state="downloading", bytes_done=5, bytes_total=10).as_dict() == {
        "state": "downloading",
        "bytes_done": 5,
        "bytes_total": 10,
        "files_done": 0,
        "files_total": 0,
        "bytes_reused": 0,
    }
    assert [format_bytes(n) for n in (0, 1023, 1536, 78_125_000, 3 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "74.5 MiB",
        "3.0 GiB",
    ]


def _cached(cache: CacheDir, bucket: str, used_at: float) -> Path:
    directory = cache.root / source_key(parse_source(f"s3://{bucket}/m"))
    tmp = directory / "staging"
    _model(tmp, {"model.bin": bucket.encode()})
    raw = build_manifest(tmp, bucket, PART).encode()
    target = directory / manifest_version(raw)
    tmp.rename(target)
    (target / MANIFEST_NAME).write_bytes(raw)
    os.utime(target / MANIFEST_NAME, (used_at, used_at))
    return target


def test_prune_keeps_the_most_recently_used(tmp_path: Path) -> None:
    cache = CacheDir(tmp_path)
    old, middle, new = (_cached(cache, name, t) for name, t in (("a", 1e9), ("b", 2e9), ("c", 3e9)))
    assert [m.path for m in cache.models()] == [new, middle, old]
    assert cache.prune(2, protect=old) == [middle]  # the protected one counts, even if oldest
    assert [m.path for m in cache.models()] == [new, old]
    assert cache.prune(1, protect=None) == [old]
    assert not old.parent.exists()  # empty source folders go too
    assert not any(p.name.startswith(".trash-") for p in tmp_path.iterdir())


def test_incomplete_copies_are_not_models(tmp_path: Path) -> None:
    cache = CacheDir(tmp_path)
    target = _cached(cache, "a", 1e9)
    (target / "model.bin").write_bytes(b"")
    assert cache.models() == []
    assert cache.load_complete(target) is None
