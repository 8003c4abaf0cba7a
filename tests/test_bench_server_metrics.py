"""Unit tests of the /metrics summary the capacity benchmark records per level."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from bench.server_metrics import summarise


def exported() -> str:
    registry = CollectorRegistry()
    batch = Histogram(
        "streamscribe_batch_size", "b", ["kind"], buckets=(1, 2, 4, 8), registry=registry
    )
    wait = Histogram("streamscribe_queue_wait_seconds", "w", ["kind"], registry=registry)
    dropped = Counter("streamscribe_interims_dropped", "d", registry=registry)
    for size in (1, 3, 4):
        batch.labels("final").observe(size)
    batch.labels("interim").observe(2)
    wait.labels("final").observe(0.25)
    wait.labels("final").observe(0.75)
    dropped.inc(5)
    return generate_latest(registry).decode()


def test_summarise_gives_counts_sums_and_means_per_kind() -> None:
    summary = summarise(exported())
    assert summary["final_batch_count"] == 3
    assert summary["final_batch_sum"] == 8
    assert summary["final_batch_mean"] == pytest.approx(8 / 3, abs=1e-3)
    assert summary["interim_batch_mean"] == 2
    assert summary["final_queue_wait_s_mean"] == pytest.approx(0.5)
    assert summary["interims_dropped"] == 5
    assert "interim_queue_wait_s_count" not in summary  # never observed: no series


def test_summarise_of_unrelated_text_is_empty() -> None:
    assert summarise("# HELP other x\n# TYPE other counter\nother_total 3.0\n") == {}
