"""The REST APIs: Deepgram pre-recorded (`POST /v1/listen`) and the OpenAI audio API
(`POST /v1/audio/transcriptions`, `POST /v1/audio/translations`).

Each handler checks the request (readiness, the session limit, its parameters), spools the
upload (`server.uploads`), transcribes it on the scheduler's bulk lane (`server.files`)
while watching that the client is still there (a client that goes away stops its work),
and answers in its API's format (`server.prerecorded`, `server.openai_audio`). A file
request in progress counts as a session: towards `--max-sessions`, and in the drain.

Errors are JSON and name the parameter at fault: Deepgram's shape (`err_code`, `err_msg`,
plus this server's `error` and `parameter`) on /v1/listen, OpenAI's (`error.message`,
`error.param`) on /v1/audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from server import openai_audio, prerecorded
from server.connection import SessionLog
from server.files import FileError, FileSegment, FileTranscriber
from server.http import (
    LISTEN_PATH,
    HttpHandler,
    Request,
    Response,
    error,
    options_for,
    single_header,
)
from server.protocol import InvalidParameter, StreamOptions, parse_options
from server.runtime import Phase, Runtime
from server.uploads import Spool, UploadError, read_form, spool_body

log = logging.getLogger(__name__)

TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
TRANSLATIONS_PATH = "/v1/audio/translations"
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0", ""})

T = TypeVar("T")


class _Refused(Exception):
    """A request refused before (or instead of) its transcription."""

    def __init__(self, status: int, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.parameter = parameter


def handlers(runtime: Runtime) -> dict[str, HttpHandler]:
    """The REST routes, for `App(rest=...)`."""

    async def listen(request: Request) -> Response | None:
        return await _deepgram(runtime, request)

    async def transcriptions(request: Request) -> Response | None:
        return await _openai(runtime, request, "transcribe")

    async def translations(request: Request) -> Response | None:
        return await _openai(runtime, request, "translate")

    return {
        LISTEN_PATH: listen,
        TRANSCRIPTIONS_PATH: transcriptions,
        TRANSLATIONS_PATH: translations,
    }


# ---------------------------------------------------------------------- shared


def _check_admission(runtime: Runtime) -> None:
    if runtime.phase is Phase.DRAINING:
        raise _Refused(503, "the server is shutting down; send the request to another server")
    if not runtime.ready:
        raise _Refused(503, "the model is still loading; retry in a few seconds")
    if len(runtime.connections) >= runtime.max_sessions:
        raise _Refused(
            503,
            f"the server is at its limit of {runtime.max_sessions} sessions; retry later",
        )


async def _unless_gone(request: Request, work: Awaitable[T]) -> T | None:
    """Run `work`; if the client disconnects first, cancel it and return None."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(request.receive())  # after the body: only a disconnect
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler itself was cancelled (the server is stopping)
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def _transcribe(
    runtime: Runtime,
    transcriber: FileTranscriber,
    spool: Spool,
    on_segment: Callable[[FileSegment], Awaitable[None]],
) -> bool:
    """Every final of the file to `on_segment`, with the file counted as a session; True."""
    with runtime.session(transcriber):
        try:
            async for segment in transcriber.segments(spool.file):
                await on_segment(segment)
            return True
        finally:
            runtime.metrics.audio_seconds_total.inc(transcriber.duration_s)


def _flag(query: Mapping[str, Sequence[str]], name: str) -> bool:
    values = query.get(name)
    if not values:
        return False
    value = values[-1].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _Refused(400, f"expected true or false, got {values[-1][:40]!r}", name)


# ---------------------------------------------------------------------- Deepgram


def _deepgram_error(status: int, message: str, parameter: str | None, request_id: str) -> Response:
    codes = {400: "Bad Request", 408: "Request Timeout", 413: "Payload Too Large"}
    extra: dict[str, object] = {"parameter": parameter} if parameter else {}
    return error(
        status,
        message,
        err_code=codes.get(status, "Service Unavailable" if status == 503 else "Error"),
        err_msg=message,
        request_id=request_id,
        **extra,
    )


async def _deepgram(runtime: Runtime, request: Request) -> Response | None:
    request_id = str(uuid.uuid4())
    spool: Spool | None = None
    try:
        _check_admission(runtime)
        options, utterances = _deepgram_options(runtime, request)
        spool = await _spool(runtime, request)
        transcriber = FileTranscriber(runtime, options, request_id)
        finals: list[FileSegment] = []

        async def keep(segment: FileSegment) -> None:
            finals.append(segment)

        started = time.monotonic()
        done = await _unless_gone(request, _transcribe(runtime, transcriber, spool, keep))
        _log_done(request_id, "deepgram", spool, transcriber, len(finals), started, done)
        if done is None:
            return None  # the client is gone: nobody to answer
        assert runtime.model is not None
        return Response.json(
            200,
            prerecorded.response(
                request_id=request_id,
                created=datetime.now(UTC),
                duration_s=transcriber.duration_s,
                channels=options.channels,
                model=runtime.model,
                sha256=spool.sha256,
                finals=[s.results for s in finals],
                utterances=utterances,
                warnings=transcriber.warnings,
            ),
        )
    except (_Refused, UploadError, FileError) as exc:
        return _deepgram_error(exc.status, exc.message, _parameter(exc), request_id)
    finally:
        if spool is not None:
            spool.close()


def _deepgram_options(runtime: Runtime, request: Request) -> tuple[StreamOptions, bool]:
    content_type = (single_header(request.headers, "content-type") or "").lower()
    if content_type.startswith("application/json"):
        raise _Refused(
            400,
            "this server does not fetch audio from URLs; send the audio file itself as the "
            "request body (Content-Type: application/octet-stream or audio/*)",
            "url",
        )
    query = request.query
    values = query.get("diarize_model")
    if values and values[-1].strip().lower() not in _FALSE:
        raise _Refused(400, "diarize_model is not supported; send diarize=true", "diarize_model")
    try:
        options = options_for(runtime, request.target)
    except InvalidParameter as exc:
        raise _Refused(400, exc.message, exc.name) from exc
    if options.diarize and not runtime.speakers.available:
        raise _Refused(
            400,
            "diarization needs the speaker encoder's weights on the server: run 'python -m "
            "cache fetch resemblyzer-encoder' there, or start it with --speaker-model PATH",
            "diarize",
        )
    return options, _flag(query, "utterances")


# ---------------------------------------------------------------------- OpenAI


def _openai_error(status: int, message: str, parameter: str | None) -> Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return Response.json(
        status,
        {"error": {"message": message, "type": kind, "param": parameter, "code": None}},
    )


async def _openai(runtime: Runtime, request: Request, task: str) -> Response | None:
    request_id = str(uuid.uuid4())
    form = None
    try:
        _check_admission(runtime)
        limits = runtime.settings.limits
        form = await read_form(request, limits.max_upload_bytes, limits.idle_timeout_s)
        if form.file is None:
            raise _Refused(
                400,
                "the form has no 'file' part: send the audio as the multipart field 'file'",
                "file",
            )
        if form.file.size_bytes == 0:
            raise _Refused(400, "the uploaded file is empty", "file")
        try:
            fields = openai_audio.parse_fields(form.fields, task=task)
        except InvalidParameter as exc:
            raise _Refused(400, exc.message, exc.name) from exc
        options = _openai_options(runtime, fields)
        transcriber = FileTranscriber(runtime, options, request_id)
        if fields.stream:
            return await _openai_stream(runtime, request, transcriber, form.file, request_id)
        finals: list[FileSegment] = []

        async def keep(segment: FileSegment) -> None:
            finals.append(segment)

        started = time.monotonic()
        done = await _unless_gone(request, _transcribe(runtime, transcriber, form.file, keep))
        _log_done(request_id, "openai", form.file, transcriber, len(finals), started, done)
        if done is None:
            return None  # the client is gone: nobody to answer
        language = finals[0].asr.language if finals else (options.language or "en")
        return _openai_response(fields, finals, transcriber.duration_s, language)
    except (_Refused, UploadError, FileError) as exc:
        return _openai_error(exc.status, exc.message, _parameter(exc))
    finally:
        if form is not None:
            form.close()


def _openai_options(runtime: Runtime, fields: openai_audio.AudioRequest) -> StreamOptions:
    engine = runtime.engine
    assert engine is not None and runtime.model is not None
    query: dict[str, list[str]] = {}
    if fields.language:
        query["language"] = [fields.language]
    terms = [*([fields.prompt] if fields.prompt else []), *fields.keywords]
    if terms:
        query["keyterm"] = terms
    if fields.task == "translate":
        if not engine.multilingual:
            raise _Refused(
                400,
                f"translations need a multilingual model; the loaded model "
                f"{runtime.model.name} is English-only (use {TRANSCRIPTIONS_PATH})",
                "model",
            )
        query["task"] = ["translate"]
    try:
        # No encoding in the query: the upload is decoded as a container.
        return parse_options(query, languages=engine.languages, multilingual=engine.multilingual)
    except InvalidParameter as exc:
        name = "prompt" if exc.name == "keyterm" else exc.name
        raise _Refused(400, exc.message, name) from exc


def _openai_response(
    fields: openai_audio.AudioRequest,
    finals: list[FileSegment],
    duration_s: float,
    language: str,
) -> Response:
    segments = openai_audio.segments_of(finals)
    kind = fields.response_format
    if kind == "json":
        return Response.json(200, openai_audio.json_body(segments, duration_s))
    if kind == "verbose_json":
        body = openai_audio.verbose_json(
            segments,
            task=fields.task,
            language=language,
            duration_s=duration_s,
            with_segments=fields.with_segments,
            with_words=fields.with_words,
        )
        return Response.json(200, body)
    if kind == "srt":
        return Response.text(200, openai_audio.srt(segments))
    if kind == "vtt":
        return Response.text(200, openai_audio.vtt(segments), "text/vtt; charset=utf-8")
    return Response.text(200, openai_audio.text_of(segments) + "\n")


async def _openai_stream(
    runtime: Runtime,
    request: Request,
    transcriber: FileTranscriber,
    spool: Spool,
    request_id: str,
) -> Response | None:
    """`stream=true`: one `transcript.text.delta` per final, then `transcript.text.done`.
    The response starts with the first final, so an error before it is a plain one."""
    texts: list[str] = []
    started_s = time.monotonic()

    async def start() -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
        ]
        await request.send({"type": "http.response.start", "status": 200, "headers": headers})

    async def emit(data: bytes, *, more: bool = True) -> None:
        await request.send({"type": "http.response.body", "body": data, "more_body": more})

    async def send_delta(segment: FileSegment) -> None:
        if not texts:
            await start()
        text = segment.results.transcript
        await emit(openai_audio.delta_event(text if not texts else " " + text))
        texts.append(text)

    try:
        done = await _unless_gone(request, _transcribe(runtime, transcriber, spool, send_delta))
    except FileError as exc:
        if not texts:
            raise
        await emit(openai_audio.error_event(exc.message), more=False)
        return None
    _log_done(request_id, "openai-stream", spool, transcriber, len(texts), started_s, done)
    if done is None:
        return None
    if not texts:
        await start()
    await emit(openai_audio.done_event(" ".join(texts)), more=False)
    return None


# ---------------------------------------------------------------------- helpers


async def _spool(runtime: Runtime, request: Request) -> Spool:
    limits = runtime.settings.limits
    spool = await spool_body(request, limits.max_upload_bytes, limits.idle_timeout_s)
    if spool.size_bytes == 0:
        spool.close()
        raise _Refused(400, "the request body is empty; send the audio file as the body")
    return spool


def _parameter(exc: _Refused | UploadError | FileError) -> str | None:
    if isinstance(exc, _Refused):
        return exc.parameter
    if isinstance(exc, UploadError):
        return exc.field
    return None


def _log_done(
    request_id: str,
    api: str,
    spool: Spool,
    transcriber: FileTranscriber,
    finals: int,
    started_s: float,
    done: object,
) -> None:
    SessionLog(log, {"request_id": request_id}).info(
        "file %s: api=%s bytes=%d audio_s=%.1f finals=%d elapsed_s=%.1f",
        "transcribed" if done is not None else "abandoned by the client",
        api,
        spool.size_bytes,
        transcriber.duration_s,
        finals,
        time.monotonic() - started_s,
    )
