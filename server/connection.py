"""Thin glue between one WebSocket and one Session; the ONE place errors become close codes.

A `Connection` reads frames, decodes audio (off the event loop for containers), feeds the
pure `Session`, carries out its actions (transcriptions through the scheduler, messages
through the `Outbox`) and enforces the per-connection limits: idle time, session length,
control-frame rate, unread results. It reads no further while the session's finals backlog
is full, so a client cannot queue unbounded work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from websockets.frames import CloseCode

from server.audio import AudioDecodeError, StreamDecoder, decoder_for
from server.dispatch import Dispatcher
from server.limits import RateLimiter, Refusal, admission
from server.protocol import (
    CloseStream,
    Error,
    ErrorCode,
    InvalidParameter,
    Metadata,
    ProtocolError,
    Results,
    ServerMessage,
    parse_control,
    to_json,
)
from server.runtime import Phase, Runtime, model_info
from server.session import (
    Action,
    Cancel,
    Label,
    Promote,
    Send,
    Session,
    SpeakerLabel,
    Transcribe,
)
from server.transcription import AsrResult
from server.websocket import Disconnected, WebSocket
from server.wire import Wire

log = logging.getLogger(__name__)


class SessionLog(logging.LoggerAdapter[logging.Logger]):
    """Adds the session's fields (request_id) to each record as `extra`, not to the message.

    server.__main__'s formatters show them: a `[request_id]` prefix in text, keys in JSON.
    """

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


async def serve_listen(runtime: Runtime, ws: WebSocket) -> None:
    """The /v1/listen session handler (the socket is accepted)."""
    await Connection(runtime, ws).run()


class Connection:
    """Runs one session: reads frames, feeds the Session, sends its events, enforces limits."""

    def __init__(self, runtime: Runtime, ws: WebSocket) -> None:
        self.runtime = runtime
        self.ws = ws
        self.request_id = str(uuid.uuid4())
        self.log = SessionLog(log, {"request_id": self.request_id})
        limits = runtime.settings.limits
        self.wire = Wire(ws, limits.max_outgoing_finals)
        self._dispatcher: Dispatcher | None = None
        self._control = RateLimiter.per_second(limits.max_control_per_s, time.monotonic())
        self.session: Session | None = None
        self.decoder: StreamDecoder | None = None

    # ------------------------------------------------------------------ Drainable

    def drain(self) -> None:
        """Server shutdown: finalize what is open, then close with 1001."""
        if self.session is not None:
            self._apply(self.session.shutdown())

    async def closed(self) -> None:
        await self.ws.wait_gone()

    def abort(self) -> None:
        self.ws.abort()

    # ------------------------------------------------------------------ entry

    async def run(self) -> None:
        rt = self.runtime
        started = time.monotonic()
        if rt.model is None or rt.classifier_factory is None:
            await self._refuse_unready()
            return
        from server.http import options_for

        try:
            options = options_for(rt, self.ws.target)
        except InvalidParameter as exc:
            # Only when the handshake began while the model was loading (not validated then).
            await self._refuse_unready(
                f"{exc.name}: {exc.message}", "INVALID_MESSAGE", CloseCode.POLICY_VIOLATION
            )
            return
        self.decoder = decoder_for(options)
        self.session = Session(
            request_id=self.request_id,
            options=options,
            config=rt.session_config,
            classifier=rt.classifier_factory(),
            model=rt.model,
        )
        refusal = self._admission()
        if refusal is not None:
            rt.metrics.refused_total.labels(refusal.code.lower()).inc()
            self.log.info("refused: %s", refusal.code)
            self._apply(self.session.fail(refusal.code, refusal.message, refusal.close_code))
            await asyncio.gather(self.wire.send_loop(), self.wire.discard_incoming())
            return
        self._dispatcher = Dispatcher(
            rt, self.request_id, self._on_result, on_labels=self._on_labels
        )
        self.log.info(
            "session start: encoding=%s rate=%d channels=%d interim=%s",
            options.encoding or "container",
            options.sample_rate_hz,
            options.channels,
            options.interim_results,
        )
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
                self.decoder.close()
                dispatcher.cancel_all()
                rt.metrics.audio_seconds_total.inc(session.counters.audio_s)
                self._log_end(started)

    def _log_end(self, started: float) -> None:
        assert self.session is not None
        # The code this end sent (the WebSocket layer itself sends 1009 for an oversized
        # frame and may drop the TCP connection before the echo arrives), else the peer's.
        code = self.wire.ended_with
        self.runtime.metrics.closes_total.labels(str(code)).inc()
        counters = self.session.counters
        self.log.info(
            "session end: duration_s=%.1f audio_s=%.1f utterances=%d finals=%d "
            "interims=%d close_code=%s",
            time.monotonic() - started,
            counters.audio_s,
            counters.utterances,
            counters.finals,
            counters.interims,
            code,
        )

    async def _refuse_unready(
        self,
        message: str = "the model is still loading; retry in a few seconds",
        code: ErrorCode = "OVERLOADED",
        close_code: CloseCode = CloseCode.TRY_AGAIN_LATER,
    ) -> None:
        """Refuse a session that has no Session yet (model loading, or a bad query then)."""
        self.runtime.metrics.refused_total.labels(code.lower()).inc()
        metadata = Metadata(
            request_id=self.request_id,
            created=datetime.now(UTC),
            duration_s=0.0,
            channels=1,
            model=self.runtime.model or model_info(self.runtime.settings.model.model, "loading"),
        )
        with contextlib.suppress(Disconnected):
            await self.ws.send_text(to_json(Error(code, message)))
            await self.ws.send_text(to_json(metadata))
        await self.wire.close(close_code, code)

    def _admission(self) -> Refusal | None:
        rt = self.runtime
        assert rt.scheduler is not None
        return admission(
            draining=rt.phase is Phase.DRAINING,
            sessions=len(rt.connections),
            max_sessions=rt.max_sessions,
            estimated_wait_s=rt.scheduler.estimated_final_wait_s(),
            max_wait_s=rt.settings.scheduler.max_queue_wait_s,
        )

    # ------------------------------------------------------------------ reading

    async def _read_loop(self, started: float) -> bool:
        """Read until the session stops reading; True when the client disconnected."""
        assert self.session is not None
        limits = self.runtime.settings.limits
        session_deadline = started + limits.max_session_s
        while self.session.open and not self.wire.closed.is_set():
            if self.session.backlog_full:
                self.wire.backlog_ok.clear()
                await self.wire.backlog_ok.wait()
                continue
            now = time.monotonic()
            if now >= session_deadline:
                # Checked here too: a flooding client always has a frame ready.
                self._fail(
                    "SESSION_TOO_LONG",
                    f"sessions are limited to {limits.max_session_s:.0f} s; reconnect",
                )
                return False
            idle_s = limits.idle_timeout_s
            try:
                async with asyncio.timeout(min(idle_s, session_deadline - now)):
                    frame = await self.ws.receive()
            except TimeoutError:
                if not self.session.open:
                    return False
                if time.monotonic() >= session_deadline:
                    continue  # reported at the top of the loop
                self._fail(
                    "IDLE_TIMEOUT",
                    f"no audio or KeepAlive for {idle_s:g} s; send KeepAlive while silent",
                )
                return False
            except Disconnected:
                return self.wire.close_code is None
            if isinstance(frame, bytes):
                await self._on_audio(frame)
            else:
                await self._on_text(frame)
            # A burst of buffered frames is read without a pause: yield once per frame so
            # that this session's sender and the other sessions get their turn.
            await asyncio.sleep(0)
        return False

    async def _on_audio(self, data: bytes) -> None:
        assert self.session is not None and self.decoder is not None
        try:
            samples = await self.decoder.feed(data)
        except AudioDecodeError as exc:
            self._invalid_audio(exc)
            return
        self._apply(self.session.feed_samples(samples))

    async def _end_of_audio(self) -> None:
        """CloseStream: the decoder's last samples (and any warning about them) first."""
        assert self.session is not None and self.decoder is not None
        try:
            tail = await self.decoder.finish()
        except AudioDecodeError as exc:
            self._invalid_audio(exc)
            return
        if tail.warning is not None:
            self._enqueue(Error("INVALID_AUDIO", tail.warning))
        self._apply(self.session.feed_samples(tail.samples))

    def _invalid_audio(self, exc: AudioDecodeError) -> None:
        assert self.session is not None
        self._apply(self.session.feed_samples(exc.samples))
        self._apply(self.session.fail("INVALID_AUDIO", str(exc), CloseCode.INVALID_DATA))

    async def _on_text(self, text: str) -> None:
        assert self.session is not None
        if not self._control.take(time.monotonic()):
            rate = self.runtime.settings.limits.max_control_per_s
            self._fail(
                "RATE_LIMITED",
                f"more than {rate:g} text frames per second; send audio as binary frames",
            )
            return
        try:
            message = parse_control(text)
        except ProtocolError as exc:
            self._enqueue(Error(exc.code, exc.message))
            return
        if isinstance(message, CloseStream) and self.session.open:
            await self._end_of_audio()
            if not self.session.open:
                return
        self._apply(self.session.control(message))

    def _fail(self, code: ErrorCode, message: str) -> None:
        assert self.session is not None
        self._apply(self.session.fail(code, message, CloseCode.POLICY_VIOLATION))

    # ------------------------------------------------------------------ actions

    def _apply(self, actions: list[Action]) -> None:
        assert self.session is not None
        for action in actions:
            if isinstance(action, Send):
                self._enqueue(action.message)
            elif isinstance(action, Transcribe):
                assert self._dispatcher is not None
                self._dispatcher.submit(action)
            elif isinstance(action, Promote | Cancel):
                assert self._dispatcher is not None
                self._dispatcher.steer(action)
            elif isinstance(action, Label):
                assert self._dispatcher is not None
                self._dispatcher.label(action)
            else:
                self.wire.queue_close(action)
        if not self.session.backlog_full:
            self.wire.backlog_ok.set()

    def _on_labels(self, ticket: int, outcome: Sequence[SpeakerLabel] | BaseException) -> None:
        assert self.session is not None
        if isinstance(outcome, BaseException):
            self.log.error("speaker assignment failed", exc_info=outcome)
            self._apply(self.session.internal_error())
            return
        self._apply(self.session.on_speakers(ticket, outcome))

    def _on_result(self, ticket: int, outcome: AsrResult | BaseException) -> None:
        assert self.session is not None
        try:
            self._apply(self.session.on_result(ticket, outcome))
        except Exception:
            self.log.exception("result handling failed")
            self._apply(self.session.internal_error())

    def _enqueue(self, message: ServerMessage) -> None:
        metrics = self.runtime.metrics
        if isinstance(message, Error):
            metrics.errors_total.labels(message.code).inc()
        if isinstance(message, Metadata):
            self.wire.outbox.push_unbounded(to_json(message))
            self.wire.wake()
            return
        interim = isinstance(message, Results) and not message.is_final
        verdict = self.wire.outbox.push(to_json(message), interim=interim)
        if verdict == "dropped":
            metrics.interims_dropped.inc()
        elif verdict == "overflow":
            self._slow_client()
        self.wire.wake()

    def _slow_client(self) -> None:
        """The client leaves its results unread: drop them and close the session."""
        assert self.session is not None
        self.log.warning("client is not reading; closing")
        self.wire.outbox.clear()
        self.session.client_gone()
        # The sender may be stuck in send() on a full socket: close from here, so that
        # _close's timeout aborts the transport and so unblocks the sender.
        self.wire.close_soon(CloseCode.POLICY_VIOLATION, "SLOW_CLIENT")

    # ------------------------------------------------------------------ writing
