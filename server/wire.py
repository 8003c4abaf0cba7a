"""One accepted WebSocket's way out and lifecycle, shared by the session glues.

`Wire` owns what the Deepgram live glue (server.connection) and the Realtime glue
(server.realtime) do alike: the session's `Outbox` sent in order by one sender task, the
close (with a bounded wait for the client's reply, then an abort), the client that stops
reading (closed with 1008 even while a send waits on its full socket), the connection that
goes away while nothing reads, and the frames still arriving after the session stopped
reading (drained, or the client's close frame would never be seen).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from websockets.frames import CloseCode

from server.outbox import Outbox
from server.session import Close
from server.websocket import Disconnected, WebSocket

CLOSE_WAIT_S = 5.0
"""How long a close waits for the client's reply (and a stuck send) before an abort."""


class Wire:
    def __init__(self, ws: WebSocket, max_outgoing_finals: int) -> None:
        self.ws = ws
        self.outbox: Outbox[Close] = Outbox(max_finals=max_outgoing_finals)
        self.closed = asyncio.Event()
        """Set once a close began or the connection went away: stop reading."""
        self.backlog_ok = asyncio.Event()
        """Cleared while the session's finals backlog is full (the reader waits on it)."""
        self.backlog_ok.set()
        self.close_code: int | None = None
        """The code this end closed with, once it did."""
        self._ready = asyncio.Event()
        self._closer: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Something was queued (or the session ended): the sender looks again."""
        self._ready.set()

    def stop(self) -> None:
        """The session is over without a close of ours (the client went away)."""
        self.closed.set()
        self.backlog_ok.set()
        self._ready.set()

    def close_soon(self, code: CloseCode, reason: str) -> None:
        """Close from outside the sender, which may be stuck in a send on a full socket:
        the close's timeout then aborts the transport and so unblocks it."""
        self._closer = asyncio.get_running_loop().create_task(self.close(code, reason))

    async def send_loop(self) -> None:
        """Send the outbox in order until it holds a close (or the connection is gone)."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while (item := self.outbox.pop()) is not None:
                if item.close is not None:
                    await self.close(item.close.code, item.close.reason)
                    return
                assert item.text is not None
                try:
                    await self.ws.send_text(item.text)
                except Disconnected:
                    self.closed.set()
                    return
            if self.closed.is_set():
                return

    async def close(self, code: int, reason: str) -> None:
        self.close_code = code
        self.stop()
        try:
            async with asyncio.timeout(CLOSE_WAIT_S):
                await self.ws.close(code, reason)
                await self.ws.wait_gone()
        except TimeoutError:
            self.ws.abort()

    async def watch(self) -> None:
        """The connection closed under us (client gone, keepalive timeout): stop waiting.

        A reader paused on a full backlog would otherwise notice only when the queued
        finals of a client that is no longer there have been transcribed.
        """
        await self.ws.wait_gone()
        self.stop()

    async def discard_incoming(self) -> bool:
        """Read and drop frames until the connection closes; True when the client closed it.

        Frames left unread would stop the server reading the socket, and a client still
        sending would never have its close frame seen: our close would wait for the
        timeout and abort.
        """
        while True:
            try:
                await self.ws.receive()
            except Disconnected:
                return self.close_code is None

    async def serve(
        self,
        read: Callable[[], Awaitable[bool]],
        *,
        failed: Callable[[], None],
        client_gone: Callable[[], None],
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ) -> None:
        """A session's life on this connection: the sender and the watcher run while `read`
        reads the client (True when the client closed); then what still arrives is drained
        and the sender finishes. An exception in `read` is logged and `failed` tells the
        session (which queues an Error and a 1011 close); a client that went away without
        our close calls `client_gone` (nobody is waiting for its results)."""
        sender = asyncio.create_task(self.send_loop())
        watcher = asyncio.create_task(self.watch())
        gone = False
        try:
            gone = await read() or await self.discard_incoming()
        except Exception:
            log.exception("session failed")
            failed()
        finally:
            if gone and self.close_code is None:
                client_gone()
                self.stop()
            await self.finish(sender)
            watcher.cancel()

    async def finish(self, sender: asyncio.Task[None]) -> None:
        """Wait for the sender and any close in flight (their errors are the client's)."""
        with contextlib.suppress(Exception):
            await sender
        if self._closer is not None:
            with contextlib.suppress(Exception):
                await self._closer

    @property
    def ended_with(self) -> int:
        """The code this end sent (the WebSocket layer itself sends 1009 for an oversized
        frame and may drop the connection before the echo), else the peer's, else 1006."""
        return self.close_code or self.ws.close_sent or self.ws.close_code or 1006

    def queue_close(self, close: Close) -> None:
        self.outbox.push_close(close)
        self._ready.set()
