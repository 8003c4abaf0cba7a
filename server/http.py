"""HTTP on the WebSocket port: health, readiness, metrics, models, web page, handshake checks."""

from __future__ import annotations

import hmac
import json
import mimetypes
from collections.abc import Sequence
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from server.connection import options_for
from server.metrics import CONTENT_TYPE_LATEST
from server.protocol import InvalidParameter, query_of
from server.runtime import Runtime

LISTEN_PATH = "/v1/listen"
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css"}


def default_web_root() -> Path:
    return Path(__file__).resolve().parent.parent / "clients" / "web"


def response(
    status: int, body: bytes | str | dict[str, object], content_type: str | None = None
) -> Response:
    if isinstance(body, dict):
        payload = json.dumps(body).encode()
        content_type = content_type or "application/json"
    elif isinstance(body, str):
        payload = body.encode()
        content_type = content_type or "text/plain; charset=utf-8"
    else:
        payload = body
    headers = Headers()
    headers["Content-Type"] = content_type or "application/octet-stream"
    headers["Content-Length"] = str(len(payload))
    headers["Cache-Control"] = "no-store"
    headers["X-Content-Type-Options"] = "nosniff"
    return Response(status, HTTPStatus(status).phrase, headers, payload)


def _error(status: int, message: str, **extra: object) -> Response:
    return response(status, {"error": message, **extra})


def single_header(request: Request, name: str) -> str | None:
    """A header's value; None when it is absent or sent more than once (ambiguous)."""
    values = request.headers.get_all(name)
    return values[0] if len(values) == 1 else None


def presented_key(request: Request) -> str | None:
    """The API key a client sent: Authorization Token/Bearer, `token` subprotocol, or ?token=."""
    auth = single_header(request, "Authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() in {"token", "bearer"} and value.strip():
            return value.strip()
    offered = [
        p.strip()
        for header in request.headers.get_all("Sec-WebSocket-Protocol")
        for p in header.split(",")
    ]
    if len(offered) >= 2 and offered[0].lower() == "token":
        return offered[1]
    tokens = query_of(request.path).get("token")
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


def select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """Answer `token` when the browser sent its key that way; never echo the key."""
    return Subprotocol("token") if any(p.lower() == "token" for p in offered) else None


class HttpRoutes:
    """`process_request` for the websockets server."""

    def __init__(self, runtime: Runtime, web_root: Path | None = None) -> None:
        self.runtime = runtime
        self.web_root = (web_root or default_web_root()).resolve()

    def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        upgrade = any("websocket" in v.lower() for v in request.headers.get_all("Upgrade"))
        if path == LISTEN_PATH:
            return self._listen(request, upgrade)
        if upgrade:
            return _error(404, f"no WebSocket endpoint at {path}; use {LISTEN_PATH}")
        if path == "/healthz":
            return response(200, {"status": "ok"})
        if path == "/readyz":
            rt = self.runtime
            return response(200 if rt.ready else 503, rt.readiness())
        if path == "/metrics":
            return self._metrics(request)
        if path == "/v1/models":
            return self._models()
        return self._static(path)

    def _listen(self, request: Request, upgrade: bool) -> Response | None:
        rt = self.runtime
        auth = rt.settings.auth
        if auth.api_keys and not key_ok(presented_key(request), auth.api_keys):
            return _error(
                401,
                "missing or wrong API key: send 'Authorization: Token KEY', the subprotocols "
                "'token, KEY', or ?token=KEY",
            )
        if not upgrade:
            return _error(426, f"{LISTEN_PATH} is a WebSocket endpoint; send an Upgrade request")
        if auth.allowed_origins:
            for origin in request.headers.get_all("Origin"):  # every one, if sent twice
                if origin.rstrip("/") not in auth.allowed_origins:
                    return _error(403, f"origin {origin[:100]} is not allowed to connect")
        if not rt.ready:
            return None  # the connection handler refuses it with an Error and a close code
        try:
            options_for(rt, request.path)
        except InvalidParameter as exc:
            return _error(400, exc.message, parameter=exc.name)
        return None

    def _metrics(self, request: Request) -> Response:
        rt = self.runtime
        auth = rt.settings.auth
        if auth.metrics_require_key and not key_ok(presented_key(request), auth.api_keys):
            return _error(401, "metrics need an API key: 'Authorization: Bearer KEY'")

        def refresh() -> None:
            if rt.scheduler is not None:
                rt.metrics.queue_depth.set(rt.scheduler.depth)
            rt.metrics.ready.set(1 if rt.ready else 0)

        body = rt.metrics.render(refresh)
        return response(200, body, CONTENT_TYPE_LATEST)

    def _models(self) -> Response:
        rt = self.runtime
        engine = rt.engine
        if engine is None or rt.model is None:
            return response(503, {"models": [], "state": rt.phase.value})
        return response(
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
            return _error(404, f"nothing at {path[:100]}")
        kind = _TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0]
        return response(200, target.read_bytes(), kind or "application/octet-stream")
