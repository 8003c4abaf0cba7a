"""push(): seed a bucket with a model directory; the old manifest goes first, the new one last."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cache.errors import CacheError, PushError, primary_error
from cache.manifest import MANIFEST_NAME, FileEntry, Manifest, build_manifest
from cache.s3 import (
    S3Location,
    TransferConfig,
    open_client,
    parse_source,
    resolve_settings,
    with_retries,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

UPLOAD_PART_BYTES = 8 * 1024 * 1024  # S3 wants at least 5 MiB for every part but the last
MAX_UPLOADS_IN_FLIGHT = 8  # each holds one part in memory


async def push(
    directory: Path,
    source: str,
    *,
    model_name: str | None = None,
    endpoint_url: str | None = None,
    environ: Mapping[str, str] | None = None,
    transfer: TransferConfig | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Manifest:
    """Upload every file of `directory`, then its manifest; returns the manifest pushed.

    Hydrators never see a half-pushed model: the previous manifest is deleted before the
    first file is overwritten and the new one is uploaded after the last file.
    """
    config = transfer or TransferConfig()
    try:
        location = parse_source(source)
        settings = resolve_settings(
            location, endpoint_url, os.environ if environ is None else environ
        )
        if not (directory / "model.bin").is_file():
            raise PushError(
                f"{directory} does not look like a faster-whisper (CTranslate2) model: no model.bin"
            )
        manifest = await asyncio.to_thread(
            build_manifest,
            directory,
            model_name or directory.name,
            config.part_size_bytes,
        )
        async with open_client(settings, config) as client:
            uploader = _Uploader(client, location, directory, config, on_bytes)
            await uploader.run(manifest)
    except PushError:
        raise
    except CacheError as exc:
        raise PushError(f"cannot push {directory} to {source}: {exc}") from exc
    return manifest


class _Uploader:
    def __init__(
        self,
        client: S3Client,
        location: S3Location,
        directory: Path,
        transfer: TransferConfig,
        on_bytes: Callable[[int], None] | None,
    ) -> None:
        self._client = client
        self._location = location
        self._directory = directory
        self._transfer = transfer
        self._on_bytes = on_bytes
        self._slots = asyncio.Semaphore(min(MAX_UPLOADS_IN_FLIGHT, transfer.max_concurrency))

    async def run(self, manifest: Manifest) -> None:
        bucket = self._location.bucket
        manifest_key = self._location.key(MANIFEST_NAME)
        await with_retries(
            lambda: self._client.delete_object(Bucket=bucket, Key=manifest_key),
            self._transfer,
            f"DELETE {manifest_key}",
        )
        try:
            async with asyncio.TaskGroup() as group:
                for entry in manifest.files:
                    group.create_task(self._upload_file(entry))
        except BaseExceptionGroup as failed:
            raise primary_error(failed)  # noqa: B904 - the group is kept as __context__
        body = manifest.encode()
        await with_retries(
            lambda: self._client.put_object(
                Bucket=bucket, Key=manifest_key, Body=body, ContentType="application/json"
            ),
            self._transfer,
            f"PUT {manifest_key}",
        )

    async def _upload_file(self, entry: FileEntry) -> None:
        key = self._location.key(entry.path)
        if entry.size <= UPLOAD_PART_BYTES:
            async with self._slots:
                data = await asyncio.to_thread(_read_span, self._directory / entry.path, 0, None)
                await with_retries(
                    lambda: self._client.put_object(
                        Bucket=self._location.bucket, Key=key, Body=data
                    ),
                    self._transfer,
                    f"PUT {key}",
                )
                self._count(len(data))
            return
        created = await with_retries(
            lambda: self._client.create_multipart_upload(Bucket=self._location.bucket, Key=key),
            self._transfer,
            f"CreateMultipartUpload {key}",
        )
        upload_id = created["UploadId"]
        count = math.ceil(entry.size / UPLOAD_PART_BYTES)
        try:
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(self._upload_part(entry, key, upload_id, number))
                        for number in range(1, count + 1)
                    ]
            except BaseExceptionGroup as failed:
                raise primary_error(failed)  # noqa: B904 - the group is kept as __context__
            parts: list[CompletedPartTypeDef] = [task.result() for task in tasks]
            await with_retries(
                lambda: self._client.complete_multipart_upload(
                    Bucket=self._location.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                ),
                self._transfer,
                f"CompleteMultipartUpload {key}",
            )
        except BaseException:
            await asyncio.shield(self._abort(key, upload_id))
            raise

    async def _upload_part(
        self, entry: FileEntry, key: str, upload_id: str, number: int
    ) -> CompletedPartTypeDef:
        async with self._slots:
            offset = (number - 1) * UPLOAD_PART_BYTES
            data = await asyncio.to_thread(
                _read_span, self._directory / entry.path, offset, UPLOAD_PART_BYTES
            )
            response = await with_retries(
                lambda: self._client.upload_part(
                    Bucket=self._location.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,
                ),
                self._transfer,
                f"UploadPart {key} #{number}",
            )
            self._count(len(data))
        return {"ETag": response["ETag"], "PartNumber": number}

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            await self._client.abort_multipart_upload(
                Bucket=self._location.bucket, Key=key, UploadId=upload_id
            )
        except Exception:  # best effort: the bucket's lifecycle rules reap what remains
            return

    def _count(self, count: int) -> None:
        if self._on_bytes is not None:
            self._on_bytes(count)


def _read_span(path: Path, offset: int, length: int | None) -> bytes:
    with path.open("rb") as stream:
        stream.seek(offset)
        return stream.read() if length is None else stream.read(length)
