"""Thin glue between one websocket and one Session; the ONE place errors become close codes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from server.audio import AudioDecodeError, StreamDecoder, decoder_for
from server.protocol import (
    CloseStream,
    Error,
    ErrorCode,
    InvalidParameter,
    Metadata,
    ProtocolError,
    Results,
    ServerMessage,
    StreamOptions,
    parse_control,
    parse_options,
    query_of,
    to_json,
)
from server.runtime import Phase, Runtime, model_info
from server.scheduler import Job
from server.session import (
    Action,
    Cancel,
    Close,
    Promote,
    Send,
    Session,
    SessionConfig,
    Transcribe,
)
from server.transcription import AsrRequest, AsrResult

log = logging.getLogger(__name__)

_MAX_QUEUED_INTERIMS = 4
_CLOSE_WAIT_S = 5.0


class SessionLog(logging.LoggerAdapter[logging.Logger]):
    """Adds the session's fields (request_id) to each record as `extra`, not to the message.

    server.__main__'s formatters show them: a `[request_id]` prefix in text, keys in JSON.
    """

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


@dataclass
class _Outgoing:
    text: str | None
    final: bool
    close: Close | None = None


def options_for(runtime: Runtime, path: str) -> StreamOptions:
    """Parse the handshake query against the loaded model (raises InvalidParameter)."""
    engine = runtime.engine
    languages = engine.languages if engine else ("en",)
    multilingual = engine.multilingual if engine else False
    return parse_options(query_of(path), languages=languages, multilingual=multilingual)


class Connection:
    """Runs one session: reads frames, feeds the Session, sends its events, enforces limits."""

    def __init__(self, runtime: Runtime, ws: ServerConnection) -> None:
        self.runtime = runtime
        self.ws = ws
        self.request_id = str(uuid.uuid4())
        self.log = SessionLog(log, {"request_id": self.request_id})
        self._loop = asyncio.get_running_loop()
        self._out: deque[_Outgoing] = deque()
        self._out_ready = asyncio.Event()
        self._backlog_ok = asyncio.Event()
        self._backlog_ok.set()
        self._closed = asyncio.Event()
        self._close_code: int | None = None
        self._closer: asyncio.Task[None] | None = None
        self._submitted_s: dict[int, tuple[float, bool]] = {}
        self._jobs: dict[int, Job[AsrRequest, AsrResult]] = {}
        self._finals_queued = 0
        self._control_tokens = runtime.settings.limits.max_control_per_s
        self._control_stamp = time.monotonic()
        self.session: Session | None = None
        self.decoder: StreamDecoder | None = None

    # ------------------------------------------------------------------ entry

    async def run(self) -> None:
        rt = self.runtime
        limits = rt.settings.limits
        started = time.monotonic()
        if rt.model is None or rt.classifier_factory is None:
            await self._refuse_unready()
            return
        request = self.ws.request
        assert request is not None
        try:
            options = options_for(rt, request.path)
        except InvalidParameter as exc:
            # Only when the handshake began while the model was loading (not validated then).
            await self._refuse_unready(
                f"{exc.name}: {exc.message}", "INVALID_MESSAGE", CloseCode.POLICY_VIOLATION
            )
            return
        stream = rt.settings.stream
        self.decoder = decoder_for(options)
        self.session = Session(
            request_id=self.request_id,
            options=options,
            config=SessionConfig(
                endpointing_ms=stream.endpointing_ms,
                max_utterance_ms=int(stream.max_utterance_s * 1000),
                interim_interval_ms=stream.interim_interval_ms,
                first_interim_ms=stream.first_interim_ms,
                max_pending_finals=limits.max_pending_finals,
            ),
            classifier=rt.classifier_factory(),
            model=rt.model,
        )
        refusal = self._admission()
        if refusal is not None:
            error_code, message, close_code = refusal
            rt.metrics.refused_total.labels(error_code.lower()).inc()
            self.log.info("refused: %s", error_code)
            self._apply(self.session.fail(error_code, message, close_code))
            await asyncio.gather(self._send_loop(), self._discard_incoming())
            return
        rt.connections.add(self)
        rt.metrics.sessions_total.inc()
        rt.metrics.sessions_active.inc()
        self.log.info(
            "session start: encoding=%s rate=%d channels=%d interim=%s",
            options.encoding or "container",
            options.sample_rate_hz,
            options.channels,
            options.interim_results,
        )
        sender = asyncio.create_task(self._send_loop())
        watcher = asyncio.create_task(self._watch_connection())
        client_gone = False
        try:
            client_gone = await self._read_loop(started) or await self._discard_incoming()
        except Exception:
            self.log.exception("session failed")
            self._apply(
                self.session.fail(
                    "INTERNAL",
                    "internal error in this session; reconnect",
                    CloseCode.INTERNAL_ERROR,
                )
            )
        finally:
            if client_gone and self._close_code is None:
                # The client went away: nobody is waiting for its results.
                self.session.client_gone()
                self._closed.set()
                self._out_ready.set()
            with contextlib.suppress(Exception):
                await sender
            if self._closer is not None:
                with contextlib.suppress(Exception):
                    await self._closer
            watcher.cancel()
            self.decoder.close()
            if rt.scheduler is not None:
                rt.scheduler.cancel_session(self.request_id)
            rt.connections.discard(self)
            rt.metrics.sessions_active.dec()
            rt.metrics.audio_seconds_total.inc(self.session.counters.audio_s)
            # The code this end sent (websockets itself sends 1009 for an oversized frame
            # and may drop the TCP connection before the echo arrives), else the peer's.
            sent = self.ws.protocol.close_sent
            code = self._close_code or (sent.code if sent else None) or self.ws.close_code or 1006
            rt.metrics.closes_total.labels(str(code)).inc()
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
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(to_json(Error(code, message)))
            await self.ws.send(to_json(metadata))
        await self._close(close_code, code)

    def _admission(self) -> tuple[ErrorCode, str, CloseCode] | None:
        rt = self.runtime
        if rt.phase is Phase.DRAINING:
            return (
                "SHUTTING_DOWN",
                "the server is shutting down; reconnect",
                CloseCode.GOING_AWAY,
            )
        if len(rt.connections) >= rt.settings.limits.max_sessions:
            return (
                "SESSION_LIMIT",
                f"the server is at its limit of {rt.settings.limits.max_sessions} sessions; "
                "retry later or on another server",
                CloseCode.TRY_AGAIN_LATER,
            )
        assert rt.scheduler is not None
        wait_s = rt.scheduler.estimated_final_wait_s()
        if wait_s > rt.settings.scheduler.max_queue_wait_s:
            return (
                "OVERLOADED",
                f"the server is overloaded (estimated wait {wait_s:.1f} s); retry later",
                CloseCode.TRY_AGAIN_LATER,
            )
        return None

    # ------------------------------------------------------------------ reading

    async def _read_loop(self, started: float) -> bool:
        """Read until the session stops reading; True when the client disconnected."""
        assert self.session is not None
        limits = self.runtime.settings.limits
        session_deadline = started + limits.max_session_s
        while self.session.open and not self._closed.is_set():
            if self.session.backlog_full:
                self._backlog_ok.clear()
                await self._backlog_ok.wait()
                continue
            now = time.monotonic()
            if now >= session_deadline:
                # Checked here too: recv() never times out while frames are buffered.
                self._fail(
                    "SESSION_TOO_LONG",
                    f"sessions are limited to {limits.max_session_s:.0f} s; reconnect",
                )
                return False
            idle_s = limits.idle_timeout_s
            try:
                async with asyncio.timeout(min(idle_s, session_deadline - now)):
                    frame = await self.ws.recv()
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
            except ConnectionClosed:
                return self._close_code is None
            if isinstance(frame, bytes):
                await self._on_audio(frame)
            else:
                await self._on_text(frame)
            # recv() returns without yielding while frames are buffered: yield once per
            # frame so that this session's sender and the other sessions get their turn.
            await asyncio.sleep(0)
        return False

    async def _watch_connection(self) -> None:
        """The connection closed under us (client gone, keepalive timeout): stop waiting.

        A reader paused on a full backlog would otherwise notice only when the queued
        finals of a client that is no longer there have been transcribed.
        """
        await self.ws.wait_closed()
        self._closed.set()
        self._backlog_ok.set()
        self._out_ready.set()

    async def _discard_incoming(self) -> bool:
        """Read and drop frames until the connection closes; True when the client closed it.

        Frames left unread fill websockets' queue, which then stops reading the socket, and
        a client still sending would never have its close frame seen: our close would wait
        for the timeout and abort.
        """
        while True:
            try:
                await self.ws.recv()
            except ConnectionClosed:
                return self._close_code is None

    async def _on_audio(self, data: bytes) -> None:
        assert self.session is not None and self.decoder is not None
        try:
            samples = await self.decoder.feed(data)
        except AudioDecodeError as exc:
            self._apply(self.session.feed_samples(exc.samples))
            self._apply(self.session.fail("INVALID_AUDIO", str(exc), CloseCode.INVALID_DATA))
            return
        self._apply(self.session.feed_samples(samples))

    async def _end_of_audio(self) -> None:
        """CloseStream: the decoder's last samples (and any warning about them) first."""
        assert self.session is not None and self.decoder is not None
        try:
            tail = await self.decoder.finish()
        except AudioDecodeError as exc:
            self._apply(self.session.feed_samples(exc.samples))
            self._apply(self.session.fail("INVALID_AUDIO", str(exc), CloseCode.INVALID_DATA))
            return
        if tail.warning is not None:
            self._enqueue(Error("INVALID_AUDIO", tail.warning))
        self._apply(self.session.feed_samples(tail.samples))

    async def _on_text(self, text: str) -> None:
        assert self.session is not None
        limits = self.runtime.settings.limits
        now = time.monotonic()
        rate = limits.max_control_per_s
        self._control_tokens = min(
            2 * rate, self._control_tokens + (now - self._control_stamp) * rate
        )
        self._control_stamp = now
        self._control_tokens -= 1
        if self._control_tokens < -rate:
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
                self._submit(action)
            elif isinstance(action, Promote | Cancel):
                self._steer(action)
            else:
                self._out.append(_Outgoing(None, True, action))
                self._out_ready.set()
        if not self.session.backlog_full:
            self._backlog_ok.set()

    def _submit(self, action: Transcribe) -> None:
        scheduler = self.runtime.scheduler
        engine = self.runtime.engine
        assert scheduler is not None and engine is not None and self.session is not None
        request = action.request
        if not action.speculative:
            self._submitted_s[action.ticket] = (time.monotonic(), request.final)

        def done(outcome: object) -> None:
            self._jobs.pop(action.ticket, None)
            self._on_result(action.ticket, outcome)

        self._jobs[action.ticket] = scheduler.submit(
            self._loop,
            self.request_id,
            request,
            final=request.final,
            batch_key=(request.language, request.hotwords, request.final),
            on_done=done,
            speculative=action.speculative,
            cost=engine.pack_cost_s(request),
        )

    def _steer(self, action: Promote | Cancel) -> None:
        scheduler = self.runtime.scheduler
        job = self._jobs.get(action.ticket)
        if scheduler is None or job is None:
            return  # already done: a promoted result is in hand, a cancelled one is ignored
        if isinstance(action, Promote):
            self._submitted_s[action.ticket] = (time.monotonic(), True)
            scheduler.promote(job)
        else:
            self._jobs.pop(action.ticket, None)
            scheduler.withdraw(job)

    def _on_result(self, ticket: int, outcome: object) -> None:
        assert self.session is not None
        submitted = self._submitted_s.pop(ticket, None)
        if submitted is not None:
            kind = "final" if submitted[1] else "interim"
            self.runtime.metrics.result_latency.labels(kind).observe(
                time.monotonic() - submitted[0]
            )
        try:
            self._apply(self.session.on_result(ticket, outcome))  # type: ignore[arg-type]
        except Exception:
            self.log.exception("result handling failed")
            self._apply(
                self.session.fail(
                    "INTERNAL", "internal error in this session", CloseCode.INTERNAL_ERROR
                )
            )

    def _enqueue(self, message: ServerMessage) -> None:
        metrics = self.runtime.metrics
        if isinstance(message, Error):
            metrics.errors_total.labels(message.code).inc()
        interim = isinstance(message, Results) and not message.is_final
        if interim:
            queued = sum(1 for o in self._out if not o.final)
            if queued >= _MAX_QUEUED_INTERIMS:
                metrics.interims_dropped.inc()
                return
        else:
            limit = self.runtime.settings.limits.max_outgoing_finals
            if self._finals_queued >= limit and not isinstance(message, Metadata):
                self.log.warning("client is not reading; closing")
                self._out.clear()
                self._finals_queued = 0
                assert self.session is not None
                self.session.client_gone()
                # The sender may be stuck in send() on a full socket: close from here, so
                # that _close's timeout aborts the transport and so unblocks the sender.
                self._closer = self._loop.create_task(
                    self._close(CloseCode.POLICY_VIOLATION, "SLOW_CLIENT")
                )
                return
            self._finals_queued += 1
        self._out.append(_Outgoing(to_json(message), not interim))
        self._out_ready.set()

    # ------------------------------------------------------------------ writing

    async def _send_loop(self) -> None:
        while True:
            await self._out_ready.wait()
            self._out_ready.clear()
            while self._out:
                item = self._out.popleft()
                if item.final:
                    self._finals_queued = max(0, self._finals_queued - 1)
                if item.close is not None:
                    await self._close(item.close.code, item.close.reason)
                    return
                assert item.text is not None
                try:
                    await self.ws.send(item.text)
                except ConnectionClosed:
                    self._closed.set()
                    return
            if self._closed.is_set():
                return

    async def _close(self, code: int, reason: str) -> None:
        self._close_code = code
        self._closed.set()
        self._backlog_ok.set()
        self._out_ready.set()
        try:
            async with asyncio.timeout(_CLOSE_WAIT_S):
                await self.ws.close(code, reason[:100])
        except (TimeoutError, ConnectionClosed):
            transport = self.ws.transport
            if transport is not None:
                transport.abort()

    # ------------------------------------------------------------------ drain

    def drain(self) -> None:
        """Server shutdown: finalize what is open, then close with 1001."""
        if self.session is not None:
            self._apply(self.session.shutdown())
