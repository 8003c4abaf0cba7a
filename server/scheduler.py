"""The batching scheduler: one queue for all sessions, finals first, fair across sessions.

`BatchQueue` is the pure policy (no threads, no clock of its own):
- finals before interims; among finals, start-time fair queuing across sessions: a
  final's virtual start is one past the later of its session's previous final and the
  last one served, so a session uploading at 20x real time queues many finals and gets
  its turn, but a live session's single final goes into the very next round;
- speculative finals (asked for at a pause, before the endpoint confirms it) come after
  finals and before interims; `promote` turns one into a final, `withdraw` drops it;
- a session's newer interim (or speculative) request replaces its queued older one;
- bulk requests (file transcriptions: nobody watches them live) come after everything
  else, first in first out, and starts only while no live final is being transcribed (so
  that a live final arriving meanwhile finds a worker free). So that live load cannot
  starve them, a bulk request that has waited `bulk_aging_s` moves ahead of interims, and
  one that has waited `bulk_max_wait_s` ahead of everything, whatever runs; bulk work never
  takes the worker kept for finals (below);
- a batch holds requests of one lane (bulk or live) and one batch key (what the engine can
  share a call for; finals and speculative finals may share one) and closes when full
  (`max_batch` requests, or
  `max_batch_cost` of their summed costs, e.g. seconds of audio that fit one packed
  window) or when its oldest request's wait reaches `batch_wait_ms`.

`Scheduler` is the thin threaded layer: `workers` inference threads own the engine, each
takes a batch, runs it off the event loop and hands every result back to its requester
on the loop. At least one worker is kept free of background work (interims and bulk
requests) when there is more than one, so that a live final (or a speculative one) never
waits behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")
ReqIn = TypeVar("ReqIn", contravariant=True)


class Transcriber(Protocol[ReqIn, Res]):
    def transcribe_batch(self, requests: Sequence[ReqIn]) -> list[Res]: ...


@dataclass(eq=False)
class Job(Generic[Req, Res]):
    """One transcription request waiting in the queue."""

    session_id: str
    final: bool
    request: Req
    batch_key: Hashable
    enqueued_s: float
    on_done: Callable[[Res | BaseException], None]
    speculative: bool = False
    cost: float = 0.0
    bulk: bool = False
    """A file transcription's request: served after all live work (see BatchQueue)."""
    seq: int = 0
    vstart: int = 0
    cancelled: bool = False

    @property
    def background(self) -> bool:
        """Work that must leave a worker free for finals: interims and bulk requests. A
        speculative final may take any free worker (it usually becomes the final), but
        waits behind finals."""
        return not self.final or self.bulk

    @property
    def kind(self) -> str:
        """The metrics label of the job's lane: final, interim or file."""
        if self.bulk:
            return "file"
        return "final" if self.final else "interim"


@dataclass
class BatchQueue(Generic[Req, Res]):
    """Pure queue policy; all methods take `now_s` from the caller."""

    max_batch: int
    batch_wait_s: float = 0.0
    max_batch_cost: float = math.inf
    bulk_aging_s: float = 10.0
    """A bulk request waiting this long goes ahead of interims."""
    bulk_max_wait_s: float = 30.0
    """A bulk request waiting this long goes ahead of everything (on a background worker)."""
    _finals: list[Job[Req, Res]] = field(default_factory=list)
    _bulk: list[Job[Req, Res]] = field(default_factory=list)
    _interims: dict[str, Job[Req, Res]] = field(default_factory=dict)
    _specs: dict[str, Job[Req, Res]] = field(default_factory=dict)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _vnow: int = 0
    _vlast: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._finals) + len(self._interims) + len(self._specs) + len(self._bulk)

    @property
    def finals_waiting(self) -> int:
        """Live finals in the queue (what a new live session's final would wait behind)."""
        return len(self._finals)

    def submit(self, job: Job[Req, Res]) -> Job[Req, Res] | None:
        """Queue a job; returns the interim it replaced, if any."""
        job.seq = next(self._seq)
        if job.bulk:
            self._bulk.append(job)
            return None
        if job.final and not job.speculative:
            self._enqueue_final(job)
            return None
        lane = self._specs if job.speculative else self._interims
        replaced = lane.pop(job.session_id, None)
        lane[job.session_id] = job
        return replaced

    def _enqueue_final(self, job: Job[Req, Res]) -> None:
        job.vstart = max(self._vnow, self._vlast.get(job.session_id, 0)) + 1
        self._vlast[job.session_id] = job.vstart
        self._finals.append(job)

    def promote(self, job: Job[Req, Res]) -> None:
        """A speculative job became a final: if still queued, it moves to the finals."""
        job.speculative = False
        if self._specs.get(job.session_id) is job:
            del self._specs[job.session_id]
            self._enqueue_final(job)

    def withdraw(self, job: Job[Req, Res]) -> None:
        """Drop a queued job (a speculative one nobody wants any more)."""
        job.cancelled = True
        if self._specs.get(job.session_id) is job:
            del self._specs[job.session_id]

    def drop_session(self, session_id: str) -> list[Job[Req, Res]]:
        """Remove every queued job of a session that went away."""
        gone = [j for j in (*self._finals, *self._bulk) if j.session_id == session_id]
        self._finals = [j for j in self._finals if j.session_id != session_id]
        self._bulk = [j for j in self._bulk if j.session_id != session_id]
        others = [lane.pop(session_id, None) for lane in (self._interims, self._specs)]
        self._vlast.pop(session_id, None)
        return [*gone, *(j for j in others if j is not None)]

    def next_batch(
        self, now_s: float, *, allow_background: bool = True, allow_bulk: bool = True
    ) -> tuple[list[Job[Req, Res]], float | None]:
        """Pop the next batch if one is due; else return ([], seconds until one is due or None).
        `allow_background` False: only live finals and speculative ones; `allow_bulk` False:
        no bulk request unless it has waited `bulk_max_wait_s` (see the module)."""
        finals = sorted(self._finals, key=lambda j: (j.vstart, j.seq))
        specs = sorted(self._specs.values(), key=lambda j: j.seq)
        if not allow_background:
            candidates = finals + specs
        else:
            starved, aged, young = self._bulk_by_age(now_s)
            if not allow_bulk:
                aged, young = [], []
            interims = sorted(self._interims.values(), key=lambda j: j.seq)
            candidates = starved + finals + specs + aged + interims + young
        if not candidates:
            return [], None
        head = candidates[0]
        same: list[Job[Req, Res]] = []
        cost = 0.0
        full = False
        for job in candidates:
            if (job.final, job.bulk, job.batch_key) != (head.final, head.bulk, head.batch_key):
                continue
            if len(same) == self.max_batch or (same and cost + job.cost > self.max_batch_cost):
                full = True
                break
            same.append(job)
            cost += job.cost
        waited_s = now_s - min(j.enqueued_s for j in same)
        if not full and len(same) < self.max_batch and waited_s < self.batch_wait_s:
            return [], self.batch_wait_s - waited_s
        for job in same:
            if job.bulk:
                self._bulk.remove(job)
            elif job.speculative:
                del self._specs[job.session_id]
            elif job.final:
                self._finals.remove(job)
                self._vnow = max(self._vnow, job.vstart)
            else:
                del self._interims[job.session_id]
        return same, None

    def _bulk_by_age(
        self, now_s: float
    ) -> tuple[list[Job[Req, Res]], list[Job[Req, Res]], list[Job[Req, Res]]]:
        """Bulk jobs, oldest first, split by their wait: starved, aged and young."""
        starved: list[Job[Req, Res]] = []
        aged: list[Job[Req, Res]] = []
        young: list[Job[Req, Res]] = []
        for job in self._bulk:  # submission order is age order
            waited_s = now_s - job.enqueued_s
            if waited_s >= self.bulk_max_wait_s:
                starved.append(job)
            elif waited_s >= self.bulk_aging_s:
                aged.append(job)
            else:
                young.append(job)
        return starved, aged, young


@dataclass
class SchedulerStats:
    """Running averages the admission check and /metrics read."""

    batch_s_ewma: float = 0.5
    batches: int = 0
    items: int = 0

    def record(self, size: int, seconds: float) -> None:
        self.batches += 1
        self.items += size
        alpha = 0.2
        self.batch_s_ewma = (1 - alpha) * self.batch_s_ewma + alpha * seconds

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 1.0


Observer = Callable[[int, float, str, Sequence[float]], None]
"""(batch size, inference seconds, kind (final, interim or file), queue waits in seconds)
after each batch."""


class Scheduler(Generic[Req, Res]):
    """Worker threads that drain a BatchQueue through one transcriber."""

    def __init__(
        self,
        engine: Transcriber[Req, Res],
        *,
        workers: int,
        max_batch: int,
        batch_wait_ms: int,
        max_batch_cost: float = math.inf,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._queue: BatchQueue[Req, Res] = BatchQueue(
            max_batch, batch_wait_ms / 1000.0, max_batch_cost
        )
        self._cond = threading.Condition()
        self._workers = workers
        self._background_slots = max(1, workers - 1)
        self._busy_background = 0
        self._busy = 0
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._observer = observer
        self._clock = clock
        self.stats = SchedulerStats()
        self.max_batch = max_batch

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        for i in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"inference-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)

    # -------------------------------------------------------------- queue

    def submit(
        self,
        loop: asyncio.AbstractEventLoop,
        session_id: str,
        request: Req,
        *,
        final: bool,
        batch_key: Hashable,
        on_done: Callable[[Res | BaseException], None],
        speculative: bool = False,
        cost: float = 0.0,
        bulk: bool = False,
    ) -> Job[Req, Res]:
        """Queue a request; `on_done` runs on `loop` with the result or the exception.
        `cost` counts against the batch's `max_batch_cost`; `bulk` puts it in the file lane."""

        def deliver(outcome: Res | BaseException) -> None:
            if not job.cancelled:
                on_done(outcome)

        def threadsafe(outcome: Res | BaseException) -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(deliver, outcome)

        job: Job[Req, Res] = Job(
            session_id,
            final,
            request,
            batch_key,
            self._clock(),
            threadsafe,
            speculative,
            cost,
            bulk,
        )
        with self._cond:
            replaced = self._queue.submit(job)
            if replaced is not None:
                replaced.cancelled = True
            self._cond.notify()
        return job

    def promote(self, job: Job[Req, Res]) -> None:
        with self._cond:
            self._queue.promote(job)
            self._cond.notify()

    def withdraw(self, job: Job[Req, Res]) -> None:
        with self._cond:
            self._queue.withdraw(job)

    def cancel_session(self, session_id: str) -> None:
        with self._cond:
            for job in self._queue.drop_session(session_id):
                job.cancelled = True

    @property
    def depth(self) -> int:
        return len(self._queue)

    def estimated_final_wait_s(self) -> float:
        """How long a new final would wait: the finals ahead of it, over the workers. A
        batch is counted as holding what batches have held so far (at most `max_batch`):
        packed CPU batches close at one window, long before `max_batch` requests."""
        with self._cond:
            ahead = self._queue.finals_waiting + self._busy
        per_batch = min(float(self.max_batch), max(1.0, self.stats.mean_batch_size))
        batches = ahead / per_batch
        return batches * self.stats.batch_s_ewma / self._workers

    # -------------------------------------------------------------- workers

    def _take(self) -> tuple[list[Job[Req, Res]], bool] | None:
        """The next batch and whether it counts as background work (None: stopping)."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                allow = self._busy_background < self._background_slots
                # A bulk request starts only while no live final runs: a live final that
                # comes during it then finds the other worker free.
                live_finals_running = self._busy > self._busy_background
                batch, wait_s = self._queue.next_batch(
                    self._clock(), allow_background=allow, allow_bulk=not live_finals_running
                )
                if batch:
                    background = batch[0].background  # promotion may change it later
                    self._busy += 1
                    self._busy_background += background
                    return batch, background
                self._cond.wait(timeout=wait_s)

    def _done(self, background: bool) -> None:
        with self._cond:
            self._busy -= 1
            self._busy_background -= background
            self._cond.notify_all()

    def _work(self) -> None:
        while (taken := self._take()) is not None:
            batch, background = taken
            try:
                self._run(batch)
            finally:
                self._done(background)

    def _run(self, batch: Sequence[Job[Req, Res]]) -> None:
        live = [job for job in batch if not job.cancelled]
        if not live:
            return
        started = self._clock()
        waits = [started - job.enqueued_s for job in live]
        try:
            results = self._engine.transcribe_batch([job.request for job in live])
        except Exception:
            log.exception("a batch of %d failed; retrying its items one by one", len(live))
            self._run_singly(live)
            return
        elapsed = self._clock() - started
        self.stats.record(len(live), elapsed)
        if self._observer is not None:
            self._observer(len(live), elapsed, live[0].kind, waits)
        for job, result in zip(live, results, strict=True):
            job.on_done(result)

    def _run_singly(self, jobs: Sequence[Job[Req, Res]]) -> None:
        for job in jobs:
            try:
                (result,) = self._engine.transcribe_batch([job.request])
            except Exception as exc:
                log.exception("transcription failed for session %s", job.session_id)
                job.on_done(exc)
            else:
                job.on_done(result)
