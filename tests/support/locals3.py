"""A local S3-compatible server (moto, on 127.0.0.1) and boto3 clients for it.

For the hydration tests and benchmarks: a real S3 wire protocol with no cloud and no real
keys (moto accepts any key pair).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3  # type: ignore[import-untyped,unused-ignore]
from botocore.config import Config
from moto.server import ThreadedMotoServer


@contextmanager
def moto_server() -> Iterator[tuple[ThreadedMotoServer, str]]:
    """A running moto server on a free port, and its endpoint URL; stopped on exit."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield server, f"http://{host}:{port}"
    finally:
        server.stop()


def s3_client(endpoint: str, key_id: str, secret: str, config: Config | None = None) -> Any:
    """A boto3 S3 client for `endpoint` with the given (fake) keys."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=config,
    )
