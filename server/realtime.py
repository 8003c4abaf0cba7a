"""`GET /v1/realtime?intent=transcription`: glue between one WebSocket and one pure
`RealtimeSession` (server.realtime_session), the OpenAI Realtime transcription session.

It reads client events (text frames), hands them to the session, carries out what the
session asks (transcriptions through the scheduler's live lanes, events through the
`Outbox`) and enforces the per-connection limits as the Deepgram live path does: session
length, idle time (any event resets it), unread events (a client that does not read is
closed), and no reading while the session's finals backlog is full. Close codes: 1008 a
limit or a connection without `intent=transcription`, 1011 an internal error, 1013 a
server that is loading or full, 1001 the drain (open speech is committed and transcribed
first).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid

from websockets.frames import CloseCode

from server.connection import SessionLog
from server.dispatch import Dispatcher
from server.limits import admission
from server.protocol import ErrorCode, query_of
from server.realtime_session import Emit, RealtimeAction, RealtimeSession, new_id
from server.runtime import Phase, Runtime
from server.session import Cancel, Close, Promote, Transcribe
from server.transcription import AsrResult
from server.websocket import Disconnected, WebSocket
from server.wire import Wire

log = logging.getLogger(__name__)


async def serve_realtime(runtime: Runtime, ws: WebSocket) -> None:
    """The /v1/realtime session handler (the socket is accepted)."""
    await RealtimeConnection(runtime, ws).run()


def _error_event(code: str, message: str, kind: str = "invalid_request_error") -> str:
    error = {"type": kind, "code": code, "message": message, "param": None, "event_id": None}
    return json.dumps({"type": "error", "event_id": new_id("event"), "error": error})


class RealtimeConnection:
    """Runs one Realtime transcription session over an accepted WebSocket."""

    def __init__(self, runtime: Runtime, ws: WebSocket) -> None:
        self.runtime = runtime
        self.ws = ws
        self.request_id = str(uuid.uuid4())
        self.log = SessionLog(log, {"request_id": self.request_id})
        limits = runtime.settings.limits
        self.wire = Wire(ws, limits.max_outgoing_finals)
        self.session: RealtimeSession | None = None
        self._dispatcher: Dispatcher | None = None

    # ------------------------------------------------------------------ Drainable

    def drain(self) -> None:
        if self.session is not None:
            self._apply(self.session.shutdown())

    async def closed(self) -> None:
        await self.ws.wait_gone()

    def abort(self) -> None:
        self.ws.abort()

    # ------------------------------------------------------------------ entry

    async def run(self) -> None:
        refusal = self._refusal()
        if refusal is not None:
            code, message, close_code = refusal
            self.runtime.metrics.refused_total.labels(code).inc()
            with contextlib.suppress(Disconnected):
                await self.ws.send_text(_error_event(code, message))
            await self.wire.close(close_code, code)
            return
        rt = self.runtime
        assert rt.model is not None and rt.engine is not None and rt.classifier_factory
        self.session = RealtimeSession(
            request_id=self.request_id,
            model=rt.model,
            config=rt.session_config,
            classifier_factory=rt.classifier_factory,
            languages=rt.engine.languages,
            multilingual=rt.engine.multilingual,
        )
        self._dispatcher = Dispatcher(rt, self.request_id, self._on_result)
        started = time.monotonic()
        self.log.info("realtime session start")
        self._apply(self.session.start())
        session, dispatcher = self.session, self._dispatcher
        with rt.session(self):
            try:
                await self.wire.serve(
                    lambda: self._read_loop(started),
                    failed=lambda: self._apply(session.internal_error()),
                    client_gone=session.client_gone,
                    log=self.log,
                )
            finally:
                dispatcher.cancel_all()
                rt.metrics.audio_seconds_total.inc(session.audio_s)
                ended = self.wire.ended_with
                rt.metrics.closes_total.labels(str(ended)).inc()
                self.log.info(
                    "realtime session end: duration_s=%.1f audio_s=%.1f close_code=%s",
                    time.monotonic() - started,
                    session.audio_s,
                    ended,
                )

    def _refusal(self) -> tuple[str, str, CloseCode] | None:
        rt = self.runtime
        intents = query_of(self.ws.target).get("intent", [])
        if intents != ["transcription"]:
            return (
                "unsupported_intent",
                "this server serves Realtime transcription sessions only: connect to "
                "/v1/realtime?intent=transcription",
                CloseCode.POLICY_VIOLATION,
            )
        if rt.model is None or rt.scheduler is None or rt.classifier_factory is None:
            return (
                "overloaded",
                "the model is still loading; retry in a few seconds",
                CloseCode.TRY_AGAIN_LATER,
            )
        refused = admission(
            draining=rt.phase is Phase.DRAINING,
            sessions=len(rt.connections),
            max_sessions=rt.max_sessions,
            estimated_wait_s=rt.scheduler.estimated_final_wait_s(),
            max_wait_s=rt.settings.scheduler.max_queue_wait_s,
        )
        if refused is None:
            return None
        return refused.code.lower(), refused.message, refused.close_code

    # ------------------------------------------------------------------ reading

    async def _read_loop(self, started: float) -> bool:
        """Read until the session stops reading; True when the client disconnected."""
        assert self.session is not None
        limits = self.runtime.settings.limits
        deadline = started + limits.max_session_s
        while self.session.open and not self.wire.closed.is_set():
            if self.session.backlog_full:
                self.wire.backlog_ok.clear()
                await self.wire.backlog_ok.wait()
                continue
            now = time.monotonic()
            if now >= deadline:
                self._fail(
                    "SESSION_TOO_LONG", f"sessions are limited to {limits.max_session_s:.0f} s"
                )
                return False
            try:
                async with asyncio.timeout(min(limits.idle_timeout_s, deadline - now)):
                    frame = await self.ws.receive()
            except TimeoutError:
                if time.monotonic() >= deadline or not self.session.open:
                    continue
                self._fail(
                    "IDLE_TIMEOUT",
                    f"no event for {limits.idle_timeout_s:g} s; keep appending audio",
                )
                return False
            except Disconnected:
                return self.wire.close_code is None
            if isinstance(frame, bytes):
                message = "send JSON text events; audio goes base64 in input_audio_buffer.append"
                self._enqueue(_error_event("invalid_event", message))
            else:
                self._apply(self.session.receive(frame))
            await asyncio.sleep(0)  # a burst of buffered frames: let the others run
        return False

    def _fail(self, code: ErrorCode, message: str) -> None:
        assert self.session is not None
        self._apply(self.session.fail(code, message, CloseCode.POLICY_VIOLATION))

    # ------------------------------------------------------------------ actions

    def _apply(self, actions: list[RealtimeAction]) -> None:
        assert self.session is not None and self._dispatcher is not None
        for action in actions:
            if isinstance(action, Emit):
                self._enqueue(json.dumps(action.event, ensure_ascii=False))
            elif isinstance(action, Transcribe):
                self._dispatcher.submit(action)
            elif isinstance(action, Promote | Cancel):
                self._dispatcher.steer(action)
            elif isinstance(action, Close):
                self.wire.queue_close(action)
        if not self.session.backlog_full:
            self.wire.backlog_ok.set()

    def _on_result(self, ticket: int, outcome: AsrResult | BaseException) -> None:
        assert self.session is not None
        try:
            self._apply(self.session.on_result(ticket, outcome))
        except Exception:
            self.log.exception("result handling failed")
            self._apply(self.session.internal_error())

    def _enqueue(self, text: str) -> None:
        if self.wire.outbox.push(text, interim=False) == "overflow":
            self.log.warning("client is not reading; closing")
            self.wire.outbox.clear()
            if self.session is not None:
                self.session.client_gone()
            self.wire.close_soon(CloseCode.POLICY_VIOLATION, "SLOW_CLIENT")
        self.wire.wake()

    # ------------------------------------------------------------------ writing
