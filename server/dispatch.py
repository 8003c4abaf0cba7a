"""Carries out one session's engine work: transcriptions through the shared scheduler (on
one lane), speaker labels off the event loop.

A `Dispatcher` belongs to one session (a live stream, a Realtime session or a file request):
it submits each `Transcribe` the session asks for to the scheduler (the live lanes, or the
bulk lane for files), steers speculative requests (`Promote`, `Cancel`), hands every result
back to the session on the event loop, and records how long each result took. With
diarize=true it also finds the talkers of each final's words (`Label`) in a worker thread,
with the session's own speaker tracker (about 13 ms of CPU per second of audio).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from server.runtime import Runtime
from server.scheduler import Job
from server.session import Cancel, Label, Promote, SpeakerLabel, Transcribe
from server.transcription import AsrRequest, AsrResult

if TYPE_CHECKING:
    from server.speakers.cluster import SpeakerTracker

ResultHandler = Callable[[int, AsrResult | BaseException], None]
"""(ticket, the result or the exception), called on the event loop."""
LabelHandler = Callable[[int, Sequence[SpeakerLabel] | BaseException], None]
"""(ticket, each word's (speaker, confidence) or the exception), called on the event loop."""


class Dispatcher:
    """The scheduler as one session sees it."""

    def __init__(
        self,
        runtime: Runtime,
        session_id: str,
        on_result: ResultHandler,
        *,
        on_labels: LabelHandler | None = None,
        bulk: bool = False,
    ) -> None:
        scheduler, engine = runtime.scheduler, runtime.engine
        if scheduler is None or engine is None:
            raise RuntimeError("a session started before the model was loaded")
        self._scheduler = scheduler
        self._engine = engine
        self._metrics = runtime.metrics
        self._session_id = session_id
        self._on_result = on_result
        self._bulk = bulk
        self._loop = asyncio.get_running_loop()
        self._jobs: dict[int, Job[AsrRequest, AsrResult]] = {}
        self._submitted_s: dict[int, tuple[float, str]] = {}
        self._runtime = runtime
        self._on_labels = on_labels
        self._tracker: SpeakerTracker | None = None
        self._labelling: set[asyncio.Task[None]] = set()

    def submit(self, action: Transcribe) -> None:
        request = action.request
        ticket = action.ticket
        if not action.speculative:
            self._submitted_s[ticket] = (time.monotonic(), self._kind(request.final))

        def done(outcome: AsrResult | BaseException) -> None:
            self._jobs.pop(ticket, None)
            submitted = self._submitted_s.pop(ticket, None)
            if submitted is not None:
                latency_s = time.monotonic() - submitted[0]
                self._metrics.result_latency.labels(submitted[1]).observe(latency_s)
            self._on_result(ticket, outcome)

        self._jobs[ticket] = self._scheduler.submit(
            self._loop,
            self._session_id,
            request,
            final=request.final,
            batch_key=(request.language, request.hotwords, request.final, request.task),
            on_done=done,
            speculative=action.speculative,
            cost=self._engine.pack_cost_s(request),
            bulk=self._bulk,
        )

    def steer(self, action: Promote | Cancel) -> None:
        job = self._jobs.get(action.ticket)
        if job is None:
            return  # already done: a promoted result is in hand, a cancelled one is ignored
        if isinstance(action, Promote):
            self._submitted_s[action.ticket] = (time.monotonic(), self._kind(True))
            self._scheduler.promote(job)
        else:
            self._jobs.pop(action.ticket, None)
            self._scheduler.withdraw(job)

    def label(self, action: Label) -> None:
        """Find the talkers of a final's words off the event loop; answer to `on_labels`."""
        task = self._loop.create_task(self._label(action))
        self._labelling.add(task)
        task.add_done_callback(self._labelling.discard)

    async def _label(self, action: Label) -> None:
        assert self._on_labels is not None, "a session that diarizes needs on_labels"
        try:
            labels = await asyncio.to_thread(self._assign, action)
        except Exception as exc:
            self._on_labels(action.ticket, exc)
            return
        self._on_labels(action.ticket, labels)

    def _assign(self, action: Label) -> list[SpeakerLabel]:
        if self._tracker is None:
            from server.speakers.cluster import SpeakerTracker

            self._tracker = SpeakerTracker(self._runtime.speakers.encoder())
        return [
            (label.speaker, label.confidence)
            for label in self._tracker.assign(action.audio, action.word_spans_s)
        ]

    def cancel_all(self) -> None:
        """The session is over: drop its queued requests (results in flight are ignored)."""
        self._scheduler.cancel_session(self._session_id)
        self._jobs.clear()
        self._submitted_s.clear()
        for task in self._labelling:
            task.cancel()

    def _kind(self, final: bool) -> str:
        if self._bulk:
            return "file"
        return "final" if final else "interim"
