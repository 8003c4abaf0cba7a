"""The ASGI application on the one port: a small router for HTTP and WebSocket requests.

HTTP: /healthz, /readyz, /metrics, /v1/models, the captioning page (static files), and the
REST APIs (`server.rest`). WebSocket: /v1/listen (Deepgram live) and /v1/realtime (OpenAI
Realtime transcription). Authentication, origins and the handshake's query parameters are
checked before a WebSocket is accepted; a refusal is a plain HTTP answer with a JSON body
naming what is wrong. Anything else is a 404 (405 for a known path and a wrong method).
"""

from __future__ import annotations

import hmac
import json
import mimetypes
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from server.metrics import CONTENT_TYPE_LATEST
from server.protocol import InvalidParameter, StreamOptions, parse_options, query_of
from server.runtime import Runtime
from server.websocket import Receive, Scope, Send, WebSocket

LISTEN_PATH = "/v1/listen"
REALTIME_PATH = "/v1/realtime"
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css"}

Headers = Sequence[tuple[str, str]]


def default_web_root() -> Path:
    return Path(__file__).resolve().parent.parent / "clients" / "web"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, body: Mapping[str, object]) -> Response:
        return cls(status, json.dumps(body).encode(), "application/json")

    @classmethod
    def text(
        cls, status: int, body: str, content_type: str = "text/plain; charset=utf-8"
    ) -> Response:
        return cls(status, body.encode(), content_type)

    async def send(self, send: Send, *, head_only: bool = False) -> None:
        headers = [
            (b"content-type", self.content_type.encode()),
            (b"content-length", str(len(self.body)).encode()),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
            *((k.encode(), v.encode()) for k, v in self.headers),
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head_only else self.body})


def error(status: int, message: str, **extra: object) -> Response:
    return Response.json(status, {"error": message, **extra})


@dataclass(frozen=True)
class Request:
    """An HTTP request's head (the body is read by the handler that wants it). A handler
    that streams its answer sends it with `send` itself and returns None."""

    method: str
    path: str
    target: str
    headers: Headers
    receive: Receive
    send: Send

    @classmethod
    def of(cls, scope: Scope, receive: Receive, send: Send) -> Request:
        query = scope.get("query_string", b"").decode("latin-1")
        path = str(scope.get("path", "/"))
        return cls(
            method=str(scope.get("method", "GET")),
            path=path,
            target=f"{path}?{query}" if query else path,
            headers=headers_of(scope),
            receive=receive,
            send=send,
        )

    @property
    def query(self) -> Mapping[str, Sequence[str]]:
        return query_of(self.target)


def headers_of(scope: Scope) -> Headers:
    """The request's headers, names in lower case, values as sent (ISO-8859-1)."""
    return [
        (name.decode("latin-1").lower(), value.decode("latin-1"))
        for name, value in scope.get("headers", [])
    ]


def all_headers(headers: Headers, name: str) -> list[str]:
    return [v for k, v in headers if k == name]


def single_header(headers: Headers, name: str) -> str | None:
    """A header's value; None when it is absent or sent more than once (ambiguous)."""
    values = all_headers(headers, name)
    return values[0] if len(values) == 1 else None


def presented_key(headers: Headers, query: Mapping[str, Sequence[str]]) -> str | None:
    """The API key a client sent: Authorization Token/Bearer, `token` subprotocol, or ?token=."""
    auth = single_header(headers, "authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() in {"token", "bearer"} and value.strip():
            return value.strip()
    offered = [
        p.strip()
        for header in all_headers(headers, "sec-websocket-protocol")
        for p in header.split(",")
    ]
    if len(offered) >= 2 and offered[0].lower() == "token":
        return offered[1]
    tokens = query.get("token")
    return tokens[-1] if tokens else None


def key_ok(presented: str | None, keys: Sequence[str]) -> bool:
    """Constant-time check against every configured key (no early exit)."""
    if presented is None:
        return False
    candidate = presented.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key.encode())
    return matched


def options_for(runtime: Runtime, target: str) -> StreamOptions:
    """Parse a request target's query against the loaded model (raises InvalidParameter)."""
    engine = runtime.engine
    languages = engine.languages if engine else ("en",)
    multilingual = engine.multilingual if engine else False
    return parse_options(query_of(target), languages=languages, multilingual=multilingual)


SessionHandler = Callable[[Runtime, WebSocket], Awaitable[None]]
HttpHandler = Callable[[Request], Awaitable[Response | None]]


class App:
    """The ASGI application: routes to health, metrics, models, the page, REST and sessions."""

    def __init__(
        self,
        runtime: Runtime,
        sessions: Mapping[str, SessionHandler],
        rest: Mapping[str, HttpHandler] | None = None,
        web_root: Path | None = None,
    ) -> None:
        self.runtime = runtime
        self.sessions = dict(sessions)
        self.rest = dict(rest or {})
        self.web_root = (web_root or default_web_root()).resolve()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(Request.of(scope, receive, send), send)
        elif scope["type"] == "websocket":
            await self._websocket(WebSocket(scope, receive, send))

    # ------------------------------------------------------------------ HTTP

    async def _http(self, request: Request, send: Send) -> None:
        response = await self._route(request)
        if response is not None:
            await response.send(send, head_only=request.method == "HEAD")

    async def _route(self, request: Request) -> Response | None:
        path, method = request.path, request.method
        if path in self.sessions:
            refusal = self._auth(request.headers, request.query)
            if refusal is not None:
                return refusal
            if method == "POST" and path in self.rest:
                return await self.rest[path](request)
            return error(426, f"{path} is a WebSocket endpoint; send an Upgrade request")
        if path in self.rest:
            if method != "POST":
                return error(405, f"{path} takes POST", allow="POST")
            refusal = self._auth(request.headers, request.query)
            return refusal or await self.rest[path](request)
        if method not in ("GET", "HEAD"):
            return error(405, f"{method} is not served at {path[:100]}")
        if path == "/healthz":
            return Response.json(200, {"status": "ok"})
        if path == "/readyz":
            rt = self.runtime
            return Response.json(200 if rt.ready else 503, rt.readiness())
        if path == "/metrics":
            return self._metrics(request)
        if path == "/v1/models":
            return self._models()
        return self._static(path)

    def _auth(self, headers: Headers, query: Mapping[str, Sequence[str]]) -> Response | None:
        keys = self.runtime.settings.auth.api_keys
        if keys and not key_ok(presented_key(headers, query), keys):
            return error(
                401,
                "missing or wrong API key: send 'Authorization: Token KEY' (or Bearer), the "
                "subprotocols 'token, KEY', or ?token=KEY",
            )
        return None

    def _metrics(self, request: Request) -> Response:
        rt = self.runtime
        auth = rt.settings.auth
        if auth.metrics_require_key and not key_ok(
            presented_key(request.headers, request.query), auth.api_keys
        ):
            return error(401, "metrics need an API key: 'Authorization: Bearer KEY'")

        def refresh() -> None:
            if rt.scheduler is not None:
                rt.metrics.queue_depth.set(rt.scheduler.depth)
            rt.metrics.ready.set(1 if rt.ready else 0)

        return Response(200, rt.metrics.render(refresh), CONTENT_TYPE_LATEST)

    def _models(self) -> Response:
        rt = self.runtime
        engine = rt.engine
        if engine is None or rt.model is None:
            return Response.json(503, {"models": [], "state": rt.phase.value})
        return Response.json(
            200,
            {
                "models": [
                    {
                        "name": rt.model.name,
                        "uuid": rt.model.uuid,
                        "version": rt.model.version,
                        "arch": rt.model.arch,
                        "languages": list(engine.languages),
                        "multilingual": engine.multilingual,
                        "source": rt.model_source,
                        "device": engine.device,
                        "compute_type": engine.compute_type,
                        "default": True,
                    }
                ]
            },
        )

    def _static(self, path: str) -> Response:
        relative = path.lstrip("/") or "index.html"
        try:
            target = (self.web_root / relative).resolve()
            found = target.is_relative_to(self.web_root) and target.is_file()
        except (OSError, ValueError):  # a name too long, a NUL byte, ...
            found = False
        if not found:
            return error(404, f"nothing at {path[:100]}")
        kind = _TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0]
        return Response(200, target.read_bytes(), kind or "application/octet-stream")

    # ------------------------------------------------------------------ WebSocket

    async def _websocket(self, ws: WebSocket) -> None:
        await ws.handshake()
        refusal = self._upgrade_refusal(ws)
        if refusal is not None:
            await ws.refuse(refusal.status, refusal.body, refusal.content_type)
            return
        offered = [p.lower() for p in ws.scope.get("subprotocols", [])]
        await ws.accept("token" if "token" in offered else None)
        await self.sessions[ws.path](self.runtime, ws)

    def _upgrade_refusal(self, ws: WebSocket) -> Response | None:
        path = ws.path
        if path not in self.sessions:
            endpoints = " or ".join(sorted(self.sessions))
            return error(404, f"no WebSocket endpoint at {path[:100]}; use {endpoints}")
        headers = headers_of(ws.scope)
        refusal = self._auth(headers, query_of(ws.target))
        if refusal is not None:
            return refusal
        sent_origins = all_headers(headers, "origin")
        if len(sent_origins) > 1:
            return error(400, "the Origin header was sent more than once")
        origins = self.runtime.settings.auth.allowed_origins
        if origins and sent_origins and sent_origins[0].rstrip("/") not in origins:
            return error(403, f"origin {sent_origins[0][:100]} is not allowed to connect")
        if not self.runtime.ready or path != LISTEN_PATH:
            return None  # refused with an Error after the handshake while loading
        try:
            options = options_for(self.runtime, ws.target)
        except InvalidParameter as exc:
            return error(400, exc.message, parameter=exc.name)
        if options.diarize and not self.runtime.speakers.available:
            return error(
                400,
                "diarization needs the speaker encoder's weights on the server: run "
                "'python -m cache fetch resemblyzer-encoder' there, or start it with "
                "--speaker-model PATH",
                parameter="diarize",
            )
        return None
