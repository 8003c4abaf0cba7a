"""Unit tests of the benchmark workload: rotation, duration limit, placement arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.metrics_calc import Span
from bench.workload import (
    SAMPLE_RATE_HZ,
    AudioFile,
    build_stream,
    client_streams,
    limit_duration,
    read_wav,
    rotated,
    speech_spans,
)


def fake_file(name: str, seconds: float, speech: tuple[Span, ...] = ()) -> AudioFile:
    samples = np.full(round(seconds * SAMPLE_RATE_HZ), 7, dtype=np.int16)
    return AudioFile(name=name, samples=samples, reference=f"ref {name}", speech=speech)


def test_each_client_gets_its_own_rotation_of_the_files() -> None:
    files = [fake_file(n, 1.0) for n in "abc"]
    assert [f.name for f in rotated(files, 0)] == ["a", "b", "c"]
    assert [f.name for f in rotated(files, 1)] == ["b", "c", "a"]
    assert [f.name for f in rotated(files, 4)] == ["b", "c", "a"]


def test_duration_limit_keeps_whole_leading_files_and_at_least_one() -> None:
    files = [fake_file("a", 3.0), fake_file("b", 4.0), fake_file("c", 2.0)]
    assert [f.name for f in limit_duration(files, 7.5)] == ["a", "b"]
    assert [f.name for f in limit_duration(files, 1.0)] == ["a"]
    assert [f.name for f in limit_duration(files, None)] == ["a", "b", "c"]


def test_build_stream_places_files_and_utterances_in_stream_time() -> None:
    a = fake_file("a", 2.0, (Span(0.5, 1.5),))
    b = fake_file("b", 1.0, (Span(0.0, 0.4), Span(0.6, 1.0)))
    stream = build_stream(3, [a, b], gap_s=1.0, lead_s=0.5, tail_s=2.0)
    assert stream.index == 3
    assert stream.duration_s == pytest.approx(0.5 + 2.0 + 1.0 + 1.0 + 2.0)
    pa, pb = stream.placements
    assert (pa.start_stream_s, pa.end_stream_s) == pytest.approx((0.5, 2.5))
    assert pa.utterances == (Span(1.0, 2.0),)
    assert (pb.start_stream_s, pb.end_stream_s) == pytest.approx((3.5, 4.5))
    assert pb.speech == Span(3.5, 4.5)
    assert pb.reference == "ref b"
    # the audio is really where the placement says, with silence around it
    at = round(3.5 * SAMPLE_RATE_HZ)
    assert stream.samples[at - 1] == 0 and stream.samples[at] == 7


def test_client_streams_rotate_and_cut_per_client() -> None:
    files = [fake_file("a", 3.0), fake_file("b", 3.0), fake_file("c", 3.0)]
    streams = client_streams(files, 2, duration_s=6.0)
    assert [[p.name for p in s.placements] for s in streams] == [["a", "b"], ["b", "c"]]


def test_speech_spans_split_real_speech_at_its_pause(audio_dir: Path) -> None:
    samples = read_wav(audio_dir / "jfk_inaugural.wav")
    spans = speech_spans(samples)
    # "And so my fellow Americans, ask not ... for you," (pause) "ask what you can do ..."
    assert len(spans) == 2
    assert spans[0].start_stream_s < 0.5
    assert 7.0 < spans[0].end_stream_s < spans[1].start_stream_s < 9.0
    assert spans[1].end_stream_s > 10.0
    assert speech_spans(np.zeros(3 * SAMPLE_RATE_HZ, dtype=np.int16)) == ()
