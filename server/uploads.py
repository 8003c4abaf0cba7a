"""Request bodies of the REST APIs, read as they stream in: size-limited, spooled, parsed.

`spool_body` stores a raw body (an audio file); `read_form` parses multipart/form-data
with python-multipart's streaming parser: the `file` part goes to the spool, every other
part is a small text field. An upload is spooled once (in memory up to
`SPOOL_MEMORY_BYTES`, then in a temporary file that is gone once closed) and never held in
memory twice; nothing past `limit_bytes` is read.

Errors (the whole tree): `UploadError` with the HTTP status, a message for the client and,
where one is to blame, the form field: 413 past the limit, 400 a malformed form, an
oversized field or a body that ended early, 408 a client that stopped sending.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from server.http import Request, single_header

SPOOL_MEMORY_BYTES = 1 << 20
"""An upload up to this size stays in memory; a larger one is written to a temporary file."""
MAX_FIELD_BYTES = 64 * 1024
"""The largest text field of a form (a prompt is far smaller)."""
MAX_PARTS = 64


class UploadError(Exception):
    """The body cannot be used; answer `status` with `message` (naming `field` if set)."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


@dataclass
class Spool:
    """An uploaded file: its bytes (rewound for reading), size and SHA-256."""

    file: IO[bytes] = field(
        # Closed by `close()`, by whoever received the spool.
        default_factory=lambda: tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115
    )
    size_bytes: int = 0
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256)

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self._hash.update(data)
        self.size_bytes += len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def rewind(self) -> None:
        self.file.seek(0)

    def close(self) -> None:
        self.file.close()


@dataclass
class Form:
    """A parsed multipart form: text fields by name (in order) and the file part, if any."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    file: Spool | None = None
    filename: str | None = None

    def one(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def too_large(limit_bytes: int) -> UploadError:
    return UploadError(
        413,
        f"the upload is larger than this server's limit of {limit_bytes} bytes "
        f"({limit_bytes / 2**20:.0f} MiB); send a shorter or more compressed file",
    )


async def body_chunks(request: Request, limit_bytes: int, idle_s: float) -> AsyncIterator[bytes]:
    """The body as it arrives; UploadError past `limit_bytes` or after `idle_s` of silence."""
    declared = single_header(request.headers, "content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise too_large(limit_bytes)
    size = 0
    while True:
        try:
            async with asyncio.timeout(idle_s):
                message = await request.receive()
        except TimeoutError:
            raise UploadError(
                408, f"no upload data for {idle_s:g} s; send the body at once"
            ) from None
        if message["type"] != "http.request":
            raise UploadError(400, "the client went away before the upload ended")
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > limit_bytes:
            raise too_large(limit_bytes)
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def spool_body(request: Request, limit_bytes: int, idle_s: float) -> Spool:
    """The whole body (an audio file) in a spool, rewound."""
    spool = Spool()
    try:
        async for chunk in body_chunks(request, limit_bytes, idle_s):
            await asyncio.to_thread(spool.write, chunk)
    except BaseException:
        spool.close()
        raise
    spool.rewind()
    return spool


class FormCollector:
    """python-multipart callbacks that build a `Form`: the `file_field` part is spooled,
    other parts are text fields of at most MAX_FIELD_BYTES. Feed it with `write`."""

    def __init__(self, boundary: bytes, file_field: str, limit_bytes: int) -> None:
        self.form = Form()
        self.ended = False
        self._file_field = file_field
        self._parts = 0
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._text = bytearray()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value_data,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
            max_size=limit_bytes,
        )

    def write(self, data: bytes) -> None:
        try:
            self._parser.write(data)
        except FormParserError as exc:
            raise UploadError(400, f"malformed multipart/form-data body: {exc}") from exc

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise UploadError(400, f"the form has more than {MAX_PARTS} parts")
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition"))
        name = params.get(b"name")
        if name is None:
            raise UploadError(400, "a form part has no name in its Content-Disposition header")
        self._name = name.decode("utf-8", "replace")
        self._text = bytearray()
        if self._name == self._file_field:
            if self.form.file is not None:
                raise UploadError(400, f"the form has more than one {self._name!r} part", "file")
            self.form.file = Spool()
            filename = params.get(b"filename")
            self.form.filename = filename.decode("utf-8", "replace") if filename else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name == self._file_field:
            assert self.form.file is not None
            self.form.file.write(data[start:end])
            return
        self._text += data[start:end]
        if len(self._text) > MAX_FIELD_BYTES:
            raise UploadError(
                400,
                f"the form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes",
                self._name,
            )

    def _part_end(self) -> None:
        if self._name is not None and self._name != self._file_field:
            text = self._text.decode("utf-8", "replace")
            self.form.fields.setdefault(self._name, []).append(text)
        self._name = None

    def _end(self) -> None:
        self.ended = True


async def read_form(
    request: Request, limit_bytes: int, idle_s: float, *, file_field: str = "file"
) -> Form:
    """Parse a multipart/form-data body; the file part comes back rewound."""
    content_type = single_header(request.headers, "content-type") or ""
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadError(
            400,
            "send the request as multipart/form-data with the audio in a part named "
            f"{file_field!r} (Content-Type was {content_type[:60]!r})",
        )
    collector = FormCollector(boundary, file_field, limit_bytes)
    try:
        async for chunk in body_chunks(request, limit_bytes, idle_s):
            await asyncio.to_thread(collector.write, chunk)
        if not collector.ended:
            raise UploadError(400, "the multipart/form-data body ended before its closing boundary")
    except BaseException:
        collector.form.close()
        raise
    if collector.form.file is not None:
        collector.form.file.rewind()
    return collector.form
