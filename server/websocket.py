"""One WebSocket of the ASGI server, as the sessions use it: receive, send, close, abort.

The ASGI interface (`receive`/`send` of message dicts) is wrapped in a small class so that
connection code reads like a socket's. The transport extension (`TRANSPORT_EXTENSION`,
set by `server.serving`'s protocol) adds what ASGI lacks and a production server needs:
`abort()` (a client that stops reading can be dropped even while a send waits on its full
socket), an event set when the connection is gone (seen even while nothing reads), and the
close code this end sent.

Errors: `Disconnected` (the connection is closed; `code` says how).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from websockets.frames import CloseCode

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

TRANSPORT_EXTENSION = "streamscribe.transport"


class Disconnected(Exception):
    """The WebSocket is closed (by either end, or the TCP connection dropped)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"connection closed with code {code}")
        self.code = code


@dataclass(frozen=True)
class TransportControl:
    """What the server's protocol gives a session beyond ASGI (see module docstring)."""

    abort: Callable[[], None]
    gone: asyncio.Event
    close_sent: Callable[[], int | None]
    close_received: Callable[[], int | None]


class WebSocket:
    """An accepted (or to be accepted) ASGI WebSocket."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        control = scope.get("extensions", {}).get(TRANSPORT_EXTENSION)
        self._control: TransportControl | None = (
            control if isinstance(control, TransportControl) else None
        )
        self._gone = self._control.gone if self._control else asyncio.Event()
        self.close_code: int | None = None
        """The code the connection closed with, once known."""

    @property
    def path(self) -> str:
        return str(self.scope.get("path", ""))

    @property
    def query_string(self) -> str:
        raw = self.scope.get("query_string", b"")
        return raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)

    @property
    def target(self) -> str:
        """The request target: path and query, as the client sent it."""
        return f"{self.path}?{self.query_string}" if self.query_string else self.path

    async def handshake(self) -> None:
        """Wait for the client's connect event (every ASGI WebSocket starts with one)."""
        message = await self._receive()
        if message["type"] != "websocket.connect":
            raise Disconnected(int(message.get("code", CloseCode.ABNORMAL_CLOSURE)))

    async def accept(self, subprotocol: str | None = None) -> None:
        message: Message = {"type": "websocket.accept"}
        if subprotocol is not None:
            message["subprotocol"] = subprotocol
        await self._send(message)

    async def refuse(self, status: int, body: bytes, content_type: str) -> None:
        """Answer the upgrade request with a plain HTTP response instead of a WebSocket."""
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
        ]
        await self._send(
            {"type": "websocket.http.response.start", "status": status, "headers": headers}
        )
        await self._send({"type": "websocket.http.response.body", "body": body})

    async def receive(self) -> bytes | str:
        """The next message; raises Disconnected once the connection is closed."""
        if self.close_code is not None:
            raise Disconnected(self.close_code)
        message = await self._receive()
        kind = message["type"]
        if kind == "websocket.receive":
            data = message.get("bytes")
            if data is not None:
                return bytes(data)
            return str(message.get("text", ""))
        code = int(message.get("code", CloseCode.NORMAL_CLOSURE))
        if self._control is not None and self._control.close_received() is None:
            code = self.close_sent or CloseCode.ABNORMAL_CLOSURE  # no close frame came
        self.close_code = code
        if self._control is None:
            self._gone.set()  # else the protocol says when the TCP connection is really gone
        raise Disconnected(self.close_code)

    async def send_text(self, text: str) -> None:
        if self._gone.is_set():
            raise Disconnected(self.close_code or CloseCode.ABNORMAL_CLOSURE)
        try:
            await self._send({"type": "websocket.send", "text": text})
        except (OSError, RuntimeError) as exc:  # uvicorn's ClientDisconnected is an OSError
            self._gone.set()
            raise Disconnected(self.close_code or CloseCode.ABNORMAL_CLOSURE) from exc

    async def close(self, code: int, reason: str = "") -> None:
        """Send a close frame (the server completes the closing handshake)."""
        if self._gone.is_set():
            return
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason[:100]})
        except (OSError, RuntimeError):
            self._gone.set()

    def abort(self) -> None:
        """Drop the TCP connection at once (no closing handshake)."""
        self._gone.set()
        if self._control is not None:
            self._control.abort()

    async def wait_gone(self) -> None:
        """Return once the connection is gone (closed by either end, or dropped)."""
        await self._gone.wait()

    @property
    def gone(self) -> bool:
        return self._gone.is_set()

    @property
    def close_sent(self) -> int | None:
        """The close code this end sent, if it sent one."""
        return self._control.close_sent() if self._control else None
