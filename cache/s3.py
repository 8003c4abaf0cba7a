"""S3/B2 access: parse s3:// and b2:// sources, resolve endpoint and keys, open clients, retry."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

import aiohttp
import botocore.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session

from cache.errors import ConfigError, RemoteError

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)

SCHEMES = ("s3", "b2")
_B2_HOST_RE = re.compile(r"^s3\.([a-z0-9-]+)\.backblazeb2\.com$")
_RETRYABLE_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"}
)
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "Forbidden",
    }
)
_RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.IncompleteReadError,
    aiohttp.ClientError,
    TimeoutError,
    ConnectionError,
)

_REMOTE_ERRORS: tuple[type[Exception], ...] = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
    aiohttp.ClientError,
    TimeoutError,
    ConnectionError,
)

T = TypeVar("T")


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix; the scheme only says which defaults apply."""

    scheme: str
    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        base = f"{self.scheme}://{self.bucket}"
        return f"{base}/{self.prefix}" if self.prefix else base

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name


def is_remote(source: str) -> bool:
    """True for s3://bucket/prefix and b2://bucket/prefix."""
    return any(source.startswith(f"{scheme}://") for scheme in SCHEMES)


def parse_source(source: str) -> S3Location:
    if not is_remote(source):
        raise ConfigError(f"{source!r} is not an s3://BUCKET/PREFIX or b2://BUCKET/PREFIX URL")
    scheme, rest = source.split("://", 1)
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not bucket or any(c.isspace() for c in source):
        raise ConfigError(f"{source!r} names no bucket; use s3://BUCKET/PREFIX")
    return S3Location(scheme=scheme, bucket=bucket, prefix=prefix)


@dataclass(frozen=True)
class TransferConfig:
    """How hard and how wide to talk to the store."""

    max_concurrency: int = 16
    part_size_bytes: int = 8 * 1024 * 1024
    max_attempts: int = 5
    backoff_base_s: float = 0.25
    backoff_max_s: float = 4.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0


@dataclass(frozen=True)
class S3Settings:
    """Where the store is and how to sign for it; no credential appears in repr."""

    endpoint_url: str | None
    region: str
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    """AWS_SESSION_TOKEN of temporary (STS) keys; B2 keys have none."""

    @property
    def endpoint_label(self) -> str:
        return self.endpoint_url or "AWS S3 (default endpoint)"


def resolve_settings(
    location: S3Location, endpoint_url: str | None, environ: Mapping[str, str]
) -> S3Settings:
    """Endpoint: argument, AWS_ENDPOINT_URL, B2_ENDPOINT. Keys: AWS_* pair (with
    AWS_SESSION_TOKEN when set), else B2_* pair; with neither, botocore's own chain."""
    endpoint = endpoint_url or environ.get("AWS_ENDPOINT_URL") or environ.get("B2_ENDPOINT")
    if not endpoint and location.scheme == "b2":
        raise ConfigError(
            f"{location.url} needs an endpoint: pass --s3-endpoint or set B2_ENDPOINT "
            "(e.g. https://s3.us-west-004.backblazeb2.com)"
        )
    if endpoint and "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    if endpoint:
        parsed = urlsplit(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(f"endpoint {endpoint!r} is not an http(s):// URL")
    key_id, secret, token = _credentials(environ)
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if not region and endpoint:
        match = _B2_HOST_RE.match(urlsplit(endpoint).hostname or "")
        region = match.group(1) if match else None
    return S3Settings(
        endpoint_url=endpoint or None,
        region=region or "us-east-1",
        access_key_id=key_id,
        secret_access_key=secret,
        session_token=token,
    )


def _credentials(environ: Mapping[str, str]) -> tuple[str | None, str | None, str | None]:
    """(key id, secret, session token): the AWS_* pair, else the B2_* pair, else none."""
    for id_name, secret_name, token_name in (
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
        ("B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY", None),
    ):
        key_id, secret = environ.get(id_name), environ.get(secret_name)
        if key_id and secret:
            return key_id, secret, (environ.get(token_name) or None) if token_name else None
        if key_id or secret:
            missing = secret_name if key_id else id_name
            raise ConfigError(f"{missing} is not set but its partner is; set both or neither")
    return None, None, None


@contextlib.asynccontextmanager
async def open_client(settings: S3Settings, transfer: TransferConfig) -> AsyncIterator[S3Client]:
    """An aiobotocore S3 client: path-style, B2-safe checksums, our own retries."""
    config = AioConfig(
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"total_max_attempts": 1},
        max_pool_connections=transfer.max_concurrency,
        connect_timeout=transfer.connect_timeout_s,
        read_timeout=transfer.read_timeout_s,
    )
    async with contextlib.AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(
                _session().create_client(
                    "s3",
                    endpoint_url=settings.endpoint_url,
                    region_name=settings.region,
                    aws_access_key_id=settings.access_key_id,
                    aws_secret_access_key=settings.secret_access_key,
                    aws_session_token=settings.session_token,
                    config=config,
                    # Plain http needs no CA bundle; loading one costs ~0.1 s per client.
                    verify=None if _uses_tls(settings.endpoint_url) else False,
                )
            )
        except (botocore.exceptions.BotoCoreError, ValueError) as exc:
            raise ConfigError(f"cannot set up an S3 client: {describe(exc)}") from exc
        yield client


def _uses_tls(endpoint_url: str | None) -> bool:
    return endpoint_url is None or urlsplit(endpoint_url).scheme == "https"


@functools.cache
def _session() -> AioSession:
    """One botocore session per process: it caches the parsed service models between clients."""
    return get_session()


def is_retryable(exc: BaseException) -> bool:
    """Timeouts, dropped connections, 5xx and throttling are worth another try; the rest is not."""
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or status == 429 or code in _RETRYABLE_CODES
    return isinstance(exc, _RETRYABLE_ERRORS)


def describe(exc: BaseException) -> str:
    """A one-line reason a person can act on; built from error codes, never from credentials."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        reason = f"{code or 'error'} (HTTP {status})"
        if error.get("Message"):
            reason += f": {error['Message']}"
        if code in _AUTH_CODES or status == 403:
            reason += (
                "; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (with AWS_SESSION_TOKEN for "
                "temporary keys) or B2_APPLICATION_KEY_ID/B2_APPLICATION_KEY, and that the key "
                "may read this bucket"
            )
        elif code == "NoSuchBucket":
            reason += "; check the bucket name and the endpoint"
        return reason
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return (
            "no credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
            "B2_APPLICATION_KEY_ID/B2_APPLICATION_KEY"
        )
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def backoff_s(attempt: int, transfer: TransferConfig) -> float:
    """Longest pause after failed attempt number `attempt` (1-based): doubling, capped."""
    return float(min(transfer.backoff_max_s, transfer.backoff_base_s * 2 ** (attempt - 1)))


async def with_retries(
    operation: Callable[[], Awaitable[T]], transfer: TransferConfig, what: str
) -> T:
    """Run `operation`, retrying retryable failures with jittered exponential backoff.

    A store or network failure that persists becomes RemoteError("WHAT: REASON"); anything
    else (our own errors, a full disk) passes through untouched.
    """
    attempt = 1
    while True:
        try:
            return await operation()
        except _REMOTE_ERRORS as exc:
            if not is_retryable(exc) or attempt >= transfer.max_attempts:
                tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                raise RemoteError(f"{what}: {describe(exc)}{tries}") from exc
            delay_s = backoff_s(attempt, transfer) * random.uniform(0.5, 1.0)
            log.info("%s failed (%s); retrying in %.2f s", what, describe(exc), delay_s)
            attempt += 1
            await asyncio.sleep(delay_s)
