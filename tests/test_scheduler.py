"""The batching scheduler: the pure queue policy, then the worker threads with a stand-in engine."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from server.scheduler import BatchQueue, Job, Scheduler


def job(session: str, final: bool, t: float, key: str = "en", payload: str = "") -> Job[str, str]:
    return Job(session, final, payload or f"{session}-{t}", key, t, lambda _: None)


def test_finals_first_then_interims() -> None:
    q: BatchQueue[str, str] = BatchQueue(max_batch=8)
    q.submit(job("a", False, 0.0))
    q.submit(job("b", True, 1.0))
    batch, _ = q.next_batch(2.0)
    assert [j.request for j in batch] == ["b-1.0"]
    batch, _ = q.next_batch(2.0)
    assert [j.request for j in batch] == ["a-0.0"]


def test_newer_interim_replaces_older() -> None:
    q: BatchQueue[str, str] = BatchQueue(max_batch=8)
    q.submit(job("a", False, 0.0))
    replaced = q.submit(job("a", False, 1.0))
    assert replaced is not None and replaced.request == "a-0.0"
    assert len(q) == 1


def test_round_robin_across_sessions_for_finals() -> None:
    q: BatchQueue[str, str] = BatchQueue(max_batch=1)
    for t in range(5):  # a fast uploader queues five finals first
        q.submit(job("bulk", True, float(t)))
    q.submit(job("live", True, 10.0))
    order = [q.next_batch(11.0)[0][0].session_id for _ in range(6)]
    assert order[:2] == ["bulk", "live"], "the live session's first final is in round one"


def test_batches_share_a_key_and_respect_max() -> None:
    q: BatchQueue[str, str] = BatchQueue(max_batch=2)
    q.submit(job("a", True, 0.0, key="en"))
    q.submit(job("b", True, 0.1, key="fr"))
    q.submit(job("c", True, 0.2, key="en"))
    q.submit(job("d", True, 0.3, key="en"))
    batch, _ = q.next_batch(1.0)
    assert [j.session_id for j in batch] == ["a", "c"]
    batch, _ = q.next_batch(1.0)
    assert [j.session_id for j in batch] == ["b"]


def test_partial_batch_waits_until_deadline() -> None:
    q: BatchQueue[str, str] = BatchQueue(max_batch=4, batch_wait_s=0.05)
    q.submit(job("a", True, 1.0))
    batch, wait = q.next_batch(1.01)
    assert batch == [] and wait is not None and abs(wait - 0.04) < 1e-9
    batch, _ = q.next_batch(1.05)
    assert len(batch) == 1


def test_interims_can_be_held_back() -> None:
    q: BatchQueue[str, str] = BatchQueue(max_batch=4)
    q.submit(job("a", False, 0.0))
    assert q.next_batch(1.0, allow_background=False) == ([], None)


def bulk(session: str, t: float) -> Job[str, str]:
    return Job(session, True, f"{session}-{t}", "en", t, lambda _: None, bulk=True)


def test_bulk_waits_behind_all_live_work() -> None:
    q: BatchQueue[str, str] = BatchQueue(max_batch=1)
    q.submit(bulk("file", 0.0))
    q.submit(job("a", False, 0.5))
    q.submit(Job("b", True, "b-guess", "en", 0.6, lambda _: None, speculative=True))
    q.submit(job("c", True, 0.7))
    order = [q.next_batch(1.0)[0][0].request for _ in range(4)]
    assert order == ["c-0.7", "b-guess", "a-0.5", "file-0.0"]


def test_aged_bulk_goes_ahead_of_interims_then_of_everything() -> None:
    q: BatchQueue[str, str] = BatchQueue(max_batch=1, bulk_aging_s=2.0, bulk_max_wait_s=30.0)
    q.submit(bulk("file", 0.0))
    q.submit(job("a", False, 0.5))
    q.submit(job("c", True, 0.7))
    assert q.next_batch(2.5)[0][0].request == "c-0.7", "a live final still comes first"
    assert q.next_batch(2.5)[0][0].request == "file-0.0", "aged: ahead of the interim"
    q.submit(bulk("file", 3.0))
    q.submit(job("d", True, 40.0))
    assert q.next_batch(40.0)[0][0].request == "file-3.0", "starved: ahead of finals too"


def test_bulk_is_background_work_and_shares_no_batch_with_live() -> None:
    q: BatchQueue[str, str] = BatchQueue(max_batch=8)
    q.submit(bulk("file", 0.0))
    assert q.next_batch(100.0, allow_background=False) == ([], None), "never on the finals worker"
    q.submit(job("c", True, 1.0))
    batch, _ = q.next_batch(100.0)
    assert [j.request for j in batch] == ["file-0.0"], "starved bulk first, alone"
    assert q.finals_waiting == 1 and len(q) == 1


def test_bulk_can_be_held_back_unless_starved() -> None:
    q: BatchQueue[str, str] = BatchQueue(max_batch=1, bulk_aging_s=2.0, bulk_max_wait_s=30.0)
    q.submit(bulk("file", 0.0))
    assert q.next_batch(5.0, allow_bulk=False) == ([], None)
    assert q.next_batch(30.0, allow_bulk=False)[0][0].request == "file-0.0"


def test_bulk_requests_are_served_in_submission_order() -> None:
    q: BatchQueue[str, str] = BatchQueue(max_batch=1)
    for session, t in (("f1", 0.0), ("f2", 0.1), ("f1", 0.2)):
        q.submit(bulk(session, t))
    order = [q.next_batch(0.5)[0][0].request for _ in range(3)]
    assert order == ["f1-0.0", "f2-0.1", "f1-0.2"]


def test_drop_session() -> None:
    q: BatchQueue[str, str] = BatchQueue(max_batch=4)
    q.submit(job("a", True, 0.0))
    q.submit(job("a", False, 0.0))
    q.submit(job("b", True, 0.0))
    q.submit(bulk("a", 0.0))
    assert len(q.drop_session("a")) == 3 and len(q) == 1


class GatedEngine:
    """Stand-in transcriber: records each call and blocks until the test opens its gate."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.entered = threading.Semaphore(0)
        self.gates: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def gate(self, request: str) -> threading.Event:
        with self.lock:
            return self.gates.setdefault(request, threading.Event())

    def transcribe_batch(self, requests: Sequence[str]) -> list[str]:
        with self.lock:
            self.calls.append(list(requests))
        self.entered.release()
        for r in requests:
            assert self.gate(r).wait(10)
            if r.startswith("boom"):
                raise RuntimeError("engine failure")
        return [r.upper() for r in requests]


async def test_one_worker_stays_free_for_finals() -> None:
    engine = GatedEngine()
    scheduler: Scheduler[str, str] = Scheduler(engine, workers=2, max_batch=4, batch_wait_ms=0)
    scheduler.start()
    loop = asyncio.get_running_loop()
    results: dict[str, asyncio.Future[object]] = {}

    def submit(session: str, request: str, final: bool) -> None:
        fut: asyncio.Future[object] = loop.create_future()
        results[request] = fut
        scheduler.submit(
            loop, session, request, final=final, batch_key="en", on_done=fut.set_result
        )

    try:
        submit("s1", "i1", final=False)
        assert await asyncio.to_thread(engine.entered.acquire, True, 5)
        submit("s2", "i2", final=False)
        submit("s3", "f3", final=True)
        assert await asyncio.to_thread(engine.entered.acquire, True, 5)
        assert engine.calls[1] == ["f3"], "the second worker took the final, not the interim"
        engine.gate("f3").set()
        assert await asyncio.wait_for(results["f3"], 5) == "F3"
        engine.gate("i1").set()
        engine.gate("i2").set()
        assert await asyncio.wait_for(results["i2"], 5) == "I2"
        assert await asyncio.wait_for(results["i1"], 5) == "I1"
    finally:
        for gate in engine.gates.values():
            gate.set()
        scheduler.stop()


async def test_failed_batch_retries_items_singly() -> None:
    engine = GatedEngine()
    for name in ("ok", "boom"):
        engine.gate(name).set()
    scheduler: Scheduler[str, str] = Scheduler(engine, workers=1, max_batch=4, batch_wait_ms=50)
    loop = asyncio.get_running_loop()
    futures = {name: loop.create_future() for name in ("ok", "boom")}
    for name, fut in futures.items():
        scheduler.submit(loop, name, name, final=True, batch_key="en", on_done=fut.set_result)
    scheduler.start()
    try:
        assert await asyncio.wait_for(futures["ok"], 5) == "OK"
        failure = await asyncio.wait_for(futures["boom"], 5)
        assert isinstance(failure, RuntimeError)
        assert engine.calls[0] == ["ok", "boom"], "both went in one batch first"
    finally:
        scheduler.stop()


def test_speculative_jobs_sit_between_finals_and_interims() -> None:
    q: BatchQueue[str, str] = BatchQueue(max_batch=1)
    interim = job("a", False, 0.0)
    guess = Job("b", True, "b-guess", "en", 0.5, lambda _: None, speculative=True)
    q.submit(interim)
    q.submit(guess)
    q.submit(job("c", True, 1.0))
    order = [q.next_batch(2.0)[0][0].request for _ in range(3)]
    assert order == ["c-1.0", "b-guess", "a-0.0"]


def test_speculative_finals_share_a_batch_with_finals_but_not_interims() -> None:
    q: BatchQueue[str, str] = BatchQueue(max_batch=4)
    q.submit(job("a", False, 0.0))
    q.submit(Job("b", True, "b-guess", "en", 0.5, lambda _: None, speculative=True))
    q.submit(job("c", True, 1.0))
    batch, _ = q.next_batch(2.0)
    assert [j.request for j in batch] == ["c-1.0", "b-guess"]
    batch, _ = q.next_batch(2.0)
    assert [j.request for j in batch] == ["a-0.0"]


def test_batch_closes_at_its_cost_budget() -> None:
    """A batch holds what fits one packed window; a single over-budget job still goes alone."""
    q: BatchQueue[str, str] = BatchQueue(max_batch=8, max_batch_cost=31.0)
    for name, cost in (("a", 12.0), ("b", 9.0), ("c", 9.0), ("d", 40.0), ("e", 2.0)):
        q.submit(Job(name, True, name, "en", 0.0, lambda _: None, cost=cost))
    sizes = [[j.request for j in q.next_batch(1.0)[0]] for _ in range(3)]
    assert sizes == [["a", "b", "c"], ["d"], ["e"]]


def test_promote_and_withdraw() -> None:
    q: BatchQueue[str, str] = BatchQueue(max_batch=4)
    guess = Job("b", True, "g", "en", 0.0, lambda _: None, speculative=True)
    q.submit(guess)
    q.promote(guess)
    assert not guess.speculative and q.finals_waiting == 1
    other = Job("c", True, "h", "en", 0.0, lambda _: None, speculative=True)
    q.submit(other)
    q.withdraw(other)
    assert other.cancelled and len(q) == 1
    assert q.next_batch(1.0, allow_background=False)[0] == [guess]


async def test_wait_estimate_counts_batches_as_big_as_they_have_been() -> None:
    """Packed CPU batches close at one window (about 2 finals), far below max_batch 16: the
    admission estimate must count the finals ahead in batches of that size."""
    scheduler: Scheduler[str, str] = Scheduler(
        GatedEngine(), workers=2, max_batch=16, batch_wait_ms=0
    )
    loop = asyncio.get_running_loop()
    for _ in range(5):
        scheduler.stats.record(2, 1.0)
    scheduler.stats.batch_s_ewma = 2.0
    for i in range(8):
        scheduler.submit(loop, f"s{i}", f"f{i}", final=True, batch_key="en", on_done=print)
    # 8 finals ahead / 2 per batch = 4 batches of 2.0 s over 2 workers.
    assert scheduler.estimated_final_wait_s() == 4.0


class GatedRun:
    """A two-worker scheduler over a GatedEngine; `submit` keeps each request's future."""

    def __init__(self) -> None:
        self.engine = GatedEngine()
        self.scheduler: Scheduler[str, str] = Scheduler(
            self.engine, workers=2, max_batch=4, batch_wait_ms=0
        )
        self.results: dict[str, asyncio.Future[object]] = {}

    def submit(self, session: str, request: str, *, bulk: bool) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[object] = loop.create_future()
        self.results[request] = fut
        self.scheduler.submit(
            loop, session, request, final=True, batch_key="en", on_done=fut.set_result, bulk=bulk
        )

    async def entered(self, timeout_s: float = 5) -> bool:
        """Whether the engine started a call within `timeout_s`."""
        return await asyncio.to_thread(self.engine.entered.acquire, True, timeout_s)

    async def result(self, request: str) -> object:
        return await asyncio.wait_for(self.results[request], 5)

    async def __aenter__(self) -> GatedRun:
        self.scheduler.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        for gate in self.engine.gates.values():
            gate.set()
        self.scheduler.stop()


async def test_bulk_work_leaves_the_finals_worker_free() -> None:
    async with GatedRun() as run:
        run.submit("file", "b1", bulk=True)
        assert await run.entered()
        run.submit("file2", "b2", bulk=True)
        run.submit("live", "f1", bulk=False)
        assert await run.entered()
        assert run.engine.calls[1] == ["f1"], "the free worker took the live final, not bulk work"
        run.engine.gate("f1").set()
        assert await run.result("f1") == "F1"
        assert len(run.engine.calls) == 2, "b2 waits for the background worker"
        run.engine.gate("b1").set()
        run.engine.gate("b2").set()
        assert await run.result("b2") == "B2"


async def test_bulk_work_waits_while_a_live_final_runs() -> None:
    async with GatedRun() as run:
        run.submit("live", "f1", bulk=False)
        assert await run.entered()
        run.submit("file", "b1", bulk=True)
        assert not await run.entered(0.2), "b1 waits"
        run.engine.gate("f1").set()
        run.engine.gate("b1").set()
        assert await run.result("b1") == "B1"
        assert run.engine.calls == [["f1"], ["b1"]]
