"""The one port: uvicorn serving HTTP (h11) and WebSockets (the websockets library, sans-I/O).

uvicorn is used as a library, not as a runner: the app binds the socket itself (so port 0
works and the port is known at once), starts uvicorn's server on it, and decides when it
stops. Two small protocol subclasses add what a live-transcription server needs:

- `GuardedH11Protocol`: a request head must arrive within the handshake timeout (uvicorn
  has no header timeout: a client dribbling a request line would hold a socket forever);
- `SessionWebSocketProtocol`: gives each WebSocket the `server.websocket` transport
  extension (abort, gone, close code sent).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from server.websocket import TRANSPORT_EXTENSION, TransportControl

SERVER_HEADER = "streamscribe"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head."""

    head_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE and self._head_timer is not None:
            self._head_timer.cancel()  # the request head is in
            self._head_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()  # type: ignore[union-attr]
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timeout)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


class SessionWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets (sans-I/O) protocol, plus the transport extension."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._gone = asyncio.Event()
        self._failed = False

    def handle_parser_exception(self) -> None:
        """A frame broke the protocol or the size limit: send the close frame (1009, 1002...)
        and shut our side, but read on until the client closes. uvicorn closes the socket at
        once, and with the rest of an oversized frame still unread the kernel answers with a
        reset that can destroy the close frame before the client reads it (it saw 1006)."""
        if self._failed:
            return  # the parser discards the rest; the close frame is out
        self._failed = True
        sent = self.conn.close_sent
        code = sent.code if sent is not None else 1002
        reason = sent.reason if sent is not None else ""
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][TRANSPORT_EXTENSION] = TransportControl(
                abort=self._abort,
                gone=self._gone,
                close_sent=self._close_sent,
                close_received=self._close_received,
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone.set()
        super().connection_lost(exc)

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            # An upgrade answered with a plain HTTP response is a finished handshake too;
            # uvicorn would log "returned without completing handshake" as an error.
            self.handshake_complete = True

    def _abort(self) -> None:
        self._gone.set()
        self.transport.abort()

    def _close_sent(self) -> int | None:
        sent = self.conn.close_sent
        return int(sent.code) if sent is not None else None

    def _close_received(self) -> int | None:
        received = self.conn.close_rcvd
        return int(received.code) if received is not None else None


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def build_server(
    app: Any,
    *,
    max_frame_bytes: int,
    head_timeout_s: float,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> uvicorn.Server:
    """A uvicorn server for `app`, ready for `start(server, sock)`."""

    class Http(GuardedH11Protocol):
        pass

    Http.head_timeout_s = head_timeout_s
    config = uvicorn.Config(
        app,
        http=Http,
        ws=SessionWebSocketProtocol,
        lifespan="off",
        ws_max_size=max_frame_bytes,
        # Pings keep NAT and proxy mappings alive, but never time out: a session whose
        # finals backlog pauses reading would miss the pong; dead peers are caught by
        # the idle timeout instead.
        ws_ping_interval=20.0,
        ws_ping_timeout=None,
        ws_per_message_deflate=False,
        log_config=None,
        access_log=False,
        server_header=False,
        headers=[("server", SERVER_HEADER)],
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        ssl_version=ssl.PROTOCOL_TLS_SERVER,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    return server


async def start(server: uvicorn.Server, sock: socket.socket) -> None:
    await server.startup(sockets=[sock])


async def stop(server: uvicorn.Server) -> None:
    """Stop accepting, close what is left (uvicorn sends 1012 to open WebSockets)."""
    await server.shutdown()
