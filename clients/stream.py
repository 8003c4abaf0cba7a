"""The one send/receive loop every client uses: audio chunks out, protocol messages in.

`run_stream()` opens `/v1/listen`, sends the audio chunks it is given while handing every
server message to a callback, sends `CloseStream` when the audio ends, and returns once the
server has sent its last finals and `Metadata` and closed with 1000.

Errors, all `StreamError` (`retryable` says whether reconnecting may help):

    StreamError
     +-- BadUrl            the --url is not a ws:// or wss:// (or http/https) address
     +-- HandshakeRefused  the server answered the upgrade with an HTTP error (401 bad key,
     |                     400 bad parameter, 503, ...)
     +-- ConnectFailed     the server could not be reached (refused, DNS, timeout)
     +-- ConnectionLost    the connection dropped, or the server never finished the stream
     +-- ServerClosed      the server closed with a code other than 1000 (1001 shutting down,
                           1007 bad audio, 1008 idle, 1011 internal, 1013 overloaded, ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from server.protocol import DecodedMessage, Error, MessageError, Metadata, from_json

logger = logging.getLogger(__name__)

DEFAULT_URL = "ws://127.0.0.1:8000"
LISTEN_PATH = "/v1/listen"
SAMPLE_RATE_HZ = 16_000
BYTES_PER_SAMPLE = 2
RETRYABLE_CLOSE_CODES = frozenset({1001, 1006, 1008, 1011, 1012, 1013, 1014})


class StreamError(Exception):
    """A stream that did not end with the server's clean close."""

    retryable = False


class BadUrl(StreamError, ValueError):
    """The server address is not usable."""


class HandshakeRefused(StreamError):
    """The server refused the WebSocket upgrade with an HTTP status."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        hint = {
            401: " (check --token: the server requires a valid API key)",
            400: " (check the options you passed)",
            404: " (check --url: it must point at a streamscribe server)",
        }.get(status, "")
        super().__init__(f"server refused the connection: HTTP {status}: {detail}{hint}")
        self.retryable = status >= 500


class ConnectFailed(StreamError):
    """The server could not be reached."""

    retryable = True


class ConnectionLost(StreamError):
    """The connection dropped before the server finished the stream."""

    retryable = True


class ServerClosed(StreamError):
    """The server closed the stream with a code other than 1000."""

    def __init__(self, code: int, reason: str, error: Error | None) -> None:
        self.code = code
        self.reason = reason
        self.error = error
        if error is not None:
            detail = f"{error.code}: {error.message}"
        else:
            detail = reason or "no reason given"
        super().__init__(f"server closed the stream (code {code}): {detail}")
        self.retryable = code in RETRYABLE_CLOSE_CODES


@dataclass(frozen=True)
class StreamConfig:
    """Where to stream and what to ask for; audio is always linear16 PCM."""

    url: str = DEFAULT_URL
    token: str | None = None
    language: str | None = None
    translate: bool = False
    """Ask for English text whatever is spoken (`task=translate`)."""
    diarize: bool = False
    """Ask for speaker labels on the final words (`diarize=true`)."""
    interim_results: bool = False
    sample_rate_hz: int = SAMPLE_RATE_HZ
    channels: int = 1
    extra_params: tuple[tuple[str, str], ...] = ()
    open_timeout_s: float = 10.0
    finish_timeout_s: float = 60.0
    keepalive_interval_s: float = 5.0

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate_hz * self.channels * BYTES_PER_SAMPLE


@dataclass(frozen=True)
class StreamResult:
    """How a stream that ended cleanly went."""

    metadata: Metadata | None
    audio_sent_s: float
    errors: tuple[Error, ...]


MessageHandler = Callable[[DecodedMessage, str], None]


def listen_url(config: StreamConfig) -> str:
    """The `/v1/listen` URL for `config`: `http(s)` becomes `ws(s)`, a base path gets the route."""
    parts = urlsplit(config.url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise BadUrl(f"--url must look like ws://HOST:PORT or wss://HOST, not {config.url!r}")
    path = parts.path
    if not path.endswith(LISTEN_PATH):
        path = path.rstrip("/") + LISTEN_PATH
    params = dict(parse_qsl(parts.query))
    params.update(
        encoding="linear16",
        sample_rate=str(config.sample_rate_hz),
        channels=str(config.channels),
        interim_results="true" if config.interim_results else "false",
    )
    if config.language:
        params["language"] = config.language
    if config.translate:
        params["task"] = "translate"
    if config.diarize:
        params["diarize"] = "true"
    params.update(config.extra_params)
    return urlunsplit((scheme, parts.netloc, path, urlencode(params), ""))


def _refusal_detail(exc: InvalidStatus) -> str:
    body = exc.response.body or b""
    text = body.decode("utf-8", "replace").strip()
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        if isinstance(data, dict):
            for key in ("message", "error", "detail"):
                if isinstance(data.get(key), str):
                    parameter = data.get("parameter")
                    prefix = f"{parameter}: " if isinstance(parameter, str) else ""
                    return prefix + str(data[key])
    return text[:300] or exc.response.reason_phrase


async def _open(config: StreamConfig) -> ClientConnection:
    url = listen_url(config)
    headers = {"Authorization": f"Token {config.token}"} if config.token else None
    try:
        return await connect(
            url,
            additional_headers=headers,
            open_timeout=config.open_timeout_s,
            max_size=None,
            compression=None,
            proxy=None,
        )
    except InvalidStatus as exc:
        raise HandshakeRefused(exc.response.status_code, _refusal_detail(exc)) from exc
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise ConnectFailed(f"cannot reach the server at {config.url}: {exc}") from exc


@dataclass
class _Progress:
    bytes_sent: int = 0
    last_send_s: float = 0.0
    close_sent: bool = False
    errors: list[Error] = field(default_factory=list)
    metadata: Metadata | None = None


async def _send_audio(
    ws: ClientConnection,
    audio: AsyncIterable[bytes],
    progress: _Progress,
    on_close_sent: Callable[[], None],
) -> None:
    loop = asyncio.get_running_loop()
    try:
        async for chunk in audio:
            if chunk:
                await ws.send(chunk)
                progress.bytes_sent += len(chunk)
                progress.last_send_s = loop.time()
        await ws.send(json.dumps({"type": "CloseStream"}))
    except ConnectionClosed:
        return
    progress.close_sent = True
    on_close_sent()


async def _keep_alive(ws: ClientConnection, progress: _Progress, interval_s: float) -> None:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(ConnectionClosed):
        while not progress.close_sent:
            await asyncio.sleep(interval_s)
            if not progress.close_sent and loop.time() - progress.last_send_s >= interval_s:
                await ws.send(json.dumps({"type": "KeepAlive"}))
                progress.last_send_s = loop.time()


async def _receive(ws: ClientConnection, on_message: MessageHandler, progress: _Progress) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for raw in ws:
            if isinstance(raw, bytes):
                logger.warning("ignoring a binary frame from the server")
                continue
            try:
                message = from_json(raw)
            except MessageError as exc:
                logger.warning("%s", exc)
                continue
            if isinstance(message, Error):
                progress.errors.append(message)
            elif isinstance(message, Metadata):
                progress.metadata = message
            on_message(message, raw)


def _outcome(ws: ClientConnection, progress: _Progress) -> None:
    code = ws.close_code
    reason = ws.close_reason or ""
    if code == 1000:
        return
    last_error = progress.errors[-1] if progress.errors else None
    if code is None or code == 1006:
        raise ConnectionLost("the connection to the server dropped")
    raise ServerClosed(code, reason, last_error)


async def _pump(
    ws: ClientConnection,
    audio: AsyncIterable[bytes],
    on_message: MessageHandler,
    progress: _Progress,
    on_close_sent: Callable[[], None],
    config: StreamConfig,
) -> None:
    receiver = asyncio.create_task(_receive(ws, on_message, progress))
    sender = asyncio.create_task(_send_audio(ws, audio, progress, on_close_sent))
    pinger = asyncio.create_task(_keep_alive(ws, progress, config.keepalive_interval_s))
    try:
        done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
        failure = sender.exception() if sender in done else None
        if failure is not None:
            raise failure
        await receiver
    finally:
        for task in (sender, pinger, receiver):
            task.cancel()
        await asyncio.gather(sender, pinger, receiver, return_exceptions=True)


async def run_stream(
    config: StreamConfig,
    audio: AsyncIterable[bytes],
    on_message: MessageHandler,
    on_open: Callable[[], None] | None = None,
) -> StreamResult:
    """Stream `audio` (linear16 chunks) and feed every server message to `on_message`.

    Returns when the server closed with 1000 after `CloseStream`; raises `StreamError`
    otherwise. An exception raised by `audio` aborts the stream and propagates.
    """
    ws = await _open(config)
    if on_open is not None:
        on_open()
    progress = _Progress(last_send_s=asyncio.get_running_loop().time())
    try:
        async with ws, asyncio.timeout(None) as deadline:

            def start_finish_clock() -> None:
                loop = asyncio.get_running_loop()
                deadline.reschedule(loop.time() + config.finish_timeout_s)

            await _pump(ws, audio, on_message, progress, start_finish_clock, config)
    except TimeoutError as exc:
        raise ConnectionLost(
            f"the server did not finish the stream within {config.finish_timeout_s:g} s "
            "of CloseStream"
        ) from exc
    _outcome(ws, progress)
    return StreamResult(
        metadata=progress.metadata,
        audio_sent_s=progress.bytes_sent / config.bytes_per_second,
        errors=tuple(progress.errors),
    )
