"""Unit tests of scoring one load level from client records, and of the printed table."""

from __future__ import annotations

import numpy as np
import pytest

from bench.drivers import ClientResult
from bench.metrics_calc import CapacityRule, Caption, SendLog, Span
from bench.report import format_table, score_level
from bench.servers import ResourceUsage
from bench.workload import SAMPLE_RATE_HZ, AudioFile, ClientStream, build_stream

USAGE = ResourceUsage(cpu_s=30.0, wall_s=20.0, rss_peak_mb=512.0, rss_mean_mb=400.0)


def fake_file(name: str, reference: str) -> AudioFile:
    samples = np.ones(2 * SAMPLE_RATE_HZ, dtype=np.int16)
    return AudioFile(name=name, samples=samples, reference=reference, speech=(Span(0.5, 1.5),))


FILES = [fake_file("a.wav", "ask not what your country"), fake_file("b.wav", "new home")]
OFFLINE = {"a.wav": "ask not what your country", "b.wav": "a new home"}


def streamed(stream: ClientStream, t0: float = 1000.0) -> SendLog:
    """The whole stream sent in 100 ms chunks, exactly on time."""
    log = SendLog()
    chunks = round(stream.duration_s * 10)
    for k in range(chunks):
        log.record((k + 1) / 10, t0 + (k + 1) / 10)
    return log


def test_score_level_measures_latency_delay_wer_and_losses() -> None:
    # client 0: a.wav at 0.5-2.5 (speech 1.0-2.0), b.wav at 3.5-5.5 (speech 4.0-5.0)
    s0 = build_stream(0, FILES, gap_s=1.0, lead_s=0.5, tail_s=1.0)
    s1 = build_stream(1, FILES[::-1], gap_s=1.0, lead_s=0.5, tail_s=1.0)
    r0 = ClientResult(client=0, send_log=streamed(s0))
    r0.captions = [
        Caption(1001.6, 0.9, 1.5, "ask not", False),  # caption delay 1001.6 - 1001.0
        Caption(1002.4, 0.9, 2.1, "Ask not what your country!", True),  # final latency 0.3
        Caption(1005.5, 3.9, 5.1, "new home", True),  # caption delay 1.5, latency 0.4
    ]
    r0.interim_updates = 1
    r1 = ClientResult(client=1, refused=True, errors=["OVERLOADED: full"])
    report = score_level("ours", [s0, s1], [r0, r1], OFFLINE, USAGE, CapacityRule())
    assert (report.streams, report.accepted, report.refusals) == (2, 1, 1)
    assert (report.utterances, report.utterances_lost, report.finals) == (2, 0, 2)
    assert report.final_p50_s == pytest.approx(0.35)
    assert report.final_p95_s == pytest.approx(0.395)
    assert report.speech_end_p50_s == pytest.approx(0.45)  # from speech ends 2.0 and 5.0
    assert report.caption_delay_p50_s == pytest.approx(1.05)
    assert report.captions_missing == 0
    assert report.wer == 0.0
    # offline inserts "a", scored over the accepted client only
    assert report.offline_wer == pytest.approx(1 / 7, abs=1e-4)
    assert report.interim_per_s_per_stream == pytest.approx(1 / s0.duration_s, abs=1e-3)
    assert report.cpu_cores == pytest.approx(1.5)
    assert report.errors == ("OVERLOADED: full",)
    assert not report.meets_target  # a refusal


def test_score_level_counts_a_file_without_finals_as_lost() -> None:
    s0 = build_stream(0, FILES, gap_s=1.0, lead_s=0.5, tail_s=1.0)
    r0 = ClientResult(client=0, send_log=streamed(s0))
    r0.captions = [Caption(1002.4, 0.9, 2.1, "ask not what your country", True)]
    r0.pending_text = "new home"
    report = score_level("peer", [s0], [r0], OFFLINE, USAGE, CapacityRule())
    assert report.utterances_lost == 1
    assert report.captions_missing == 1
    assert report.wer == pytest.approx(2 / 7, abs=1e-4)
    assert report.wer_with_pending == 0.0
    assert not report.meets_target  # WER far above the ceiling


def test_score_level_meets_the_target_when_fast_and_accurate() -> None:
    s0 = build_stream(0, FILES, gap_s=1.0, lead_s=0.5, tail_s=1.0)
    r0 = ClientResult(client=0, send_log=streamed(s0))
    r0.captions = [
        Caption(1002.4, 0.9, 2.1, "ask not what your country", True),
        Caption(1005.5, 3.9, 5.1, "a new home", True),
    ]
    report = score_level("ours", [s0], [r0], OFFLINE, USAGE, CapacityRule())
    assert report.meets_target
    table = format_table([report]).splitlines()
    assert table[0].split()[:3] == ["target", "N", "refused"]
    assert table[2].split()[:4] == ["ours", "1", "0", "0"]
    assert table[2].split()[-1] == "yes"


def test_client_details_keep_each_clients_transcript_and_latencies() -> None:
    s0 = build_stream(0, FILES, gap_s=1.0, lead_s=0.5, tail_s=1.0)
    s1 = build_stream(1, FILES[::-1], gap_s=1.0, lead_s=0.5, tail_s=1.0)
    r0 = ClientResult(client=0, send_log=streamed(s0), close_code=1000)
    r0.captions = [Caption(1002.4, 0.9, 2.1, "Ask not what your country", True)]
    r1 = ClientResult(client=1, refused=True, close_code=1013)
    report = score_level("ours", [s0, s1], [r0, r1], OFFLINE, USAGE, CapacityRule())
    d0, d1 = report.clients
    assert d0.files == ("a.wav", "b.wav") and d1.files == ("b.wav", "a.wav")
    assert d0.final_latencies_s == pytest.approx((0.3,))
    assert (d0.lost, d0.transcript, d0.close_code) == (1, "Ask not what your country", 1000)
    assert (d1.refused, d1.close_code, d1.final_latencies_s) == (True, 1013, ())
    assert report.to_json()["clients"][1]["close_code"] == 1013  # type: ignore[index]


def test_server_metrics_travel_into_the_json() -> None:
    s0 = build_stream(0, FILES, gap_s=1.0, lead_s=0.5, tail_s=1.0)
    r0 = ClientResult(client=0, send_log=streamed(s0))
    metrics = {"final_batch_mean": 2.5, "final_batch_count": 4.0}
    report = score_level("ours", [s0], [r0], OFFLINE, USAGE, CapacityRule(), metrics)
    assert report.to_json()["server_metrics"] == metrics
