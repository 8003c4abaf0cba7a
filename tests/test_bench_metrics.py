"""Unit tests of the benchmark's arithmetic: send log, latencies, caption delay, WER, capacity."""

from __future__ import annotations

import pytest

from bench.metrics_calc import (
    CapacityRule,
    Caption,
    LevelResult,
    SendLog,
    Span,
    capacity,
    caption_delays_s,
    corpus_wer,
    final_latencies_s,
    lost_spans,
    meets,
    normalise,
    percentile,
    settled_latencies_s,
    speech_end_latencies_s,
    speech_end_stream_s,
    transcript,
)


def paced_log(chunks: int, chunk_s: float = 0.1, t0: float = 100.0) -> SendLog:
    """Chunk k (stream [k*chunk_s, (k+1)*chunk_s]) sent at t0 + (k+1)*chunk_s."""
    log = SendLog()
    for k in range(chunks):
        log.record((k + 1) * chunk_s, t0 + (k + 1) * chunk_s)
    return log


def cap(
    arrival: float,
    start: float,
    end: float,
    text: str,
    final: bool = True,
    settled: float | None = None,
) -> Caption:
    return Caption(arrival, start, end, text, final, settled)


def test_wall_time_sent_maps_a_sample_to_the_chunk_that_carried_it() -> None:
    log = paced_log(10)
    assert log.wall_time_sent(0.05) == pytest.approx(100.1)
    assert log.wall_time_sent(0.1) == pytest.approx(100.1)  # the last sample of chunk 0
    assert log.wall_time_sent(0.1004) == pytest.approx(100.1)  # within the rounding tolerance
    assert log.wall_time_sent(0.15) == pytest.approx(100.2)
    assert log.wall_time_sent(7.0) == pytest.approx(101.0)  # past the end: the last chunk
    assert log.sent_stream_s == pytest.approx(1.0)


def test_send_log_refuses_out_of_order_chunks_and_empty_lookups() -> None:
    log = SendLog()
    with pytest.raises(ValueError, match="nothing was sent"):
        log.wall_time_sent(0.0)
    log.record(0.2, 1.0)
    with pytest.raises(ValueError, match="stream order"):
        log.record(0.1, 2.0)


def test_percentile_interpolates_and_handles_no_values() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile([5.0, 1.0, 3.0], 100) == 5.0


def test_final_latency_is_arrival_minus_when_the_span_end_was_sent() -> None:
    log = paced_log(30)  # 3 s of audio
    captions = [
        cap(101.5, 0.2, 1.2, "hello there"),  # end 1.2 sent at 101.2 -> 0.3
        cap(101.0, 0.2, 0.9, "hello", final=False),  # interims do not count
        cap(103.9, 1.5, 2.95, "general kenobi"),  # end 2.95 -> chunk ending 3.0 at 103.0 -> 0.9
        cap(104.0, 2.9, 3.0, "   "),  # empty finals do not count
    ]
    assert final_latencies_s(captions, log) == pytest.approx([0.3, 0.9])


def test_settled_latency_uses_when_the_text_stopped_changing() -> None:
    log = paced_log(30)
    captions = [cap(105.0, 0.0, 1.0, "a b", settled=101.5), cap(102.0, 1.0, 2.0, "c")]
    assert settled_latencies_s(captions, log) == pytest.approx([0.5, 0.0])


def test_caption_delay_takes_the_first_text_overlapping_each_utterance() -> None:
    log = paced_log(50)  # 5 s
    utterances = [Span(0.5, 2.0), Span(3.0, 4.5)]
    captions = [
        cap(101.4, 0.4, 1.0, "so", final=False),  # first text on utterance 1: 101.4 - 100.5
        cap(102.5, 0.4, 2.2, "so it goes"),
        cap(103.1, 0.4, 2.2, "late repeat", final=False),  # ends before utterance 2 starts
        cap(103.9, 2.9, 3.6, "", final=False),  # empty text does not count
        cap(104.2, 2.9, 3.8, "and then", final=False),  # 104.2 - 103.0
    ]
    delays, uncovered = caption_delays_s(utterances, captions, log)
    assert delays == pytest.approx([0.9, 1.2])
    assert uncovered == 0


def test_caption_delay_counts_uncovered_and_skips_unsent_utterances() -> None:
    log = paced_log(30)  # 3 s sent
    utterances = [Span(0.5, 1.0), Span(1.5, 2.5), Span(2.8, 3.5)]
    captions = [cap(101.5, 0.3, 1.1, "one")]
    delays, uncovered = caption_delays_s(utterances, captions, log)
    assert delays == pytest.approx([1.0])
    assert uncovered == 1  # the second; the third was never completely sent


def test_lost_spans_counts_files_without_any_final_text() -> None:
    spans = [Span(0.0, 2.0), Span(3.0, 5.0), Span(6.0, 7.0)]
    captions = [
        cap(1.0, 0.1, 1.9, "first"),
        cap(1.0, 3.2, 4.0, "second", final=False),  # an interim alone does not save it
        cap(1.0, 6.5, 7.5, "third"),
    ]
    assert lost_spans(spans, captions) == 1


def test_transcript_joins_finals_in_stream_order() -> None:
    captions = [
        cap(2.0, 3.0, 4.0, " world. "),
        cap(1.0, 0.0, 1.0, "Hello,"),
        cap(1.5, 1.0, 2.0, "ignored interim", final=False),
    ]
    assert transcript(captions) == "Hello, world."


def test_normalise_drops_case_punctuation_and_fillers() -> None:
    assert normalise("Um, Hello  World!") == "hello world"
    assert normalise("Mr. Smith's 2 dogs.") == normalise("mister smith's two dogs")


def test_corpus_wer_counts_errors_over_all_reference_words() -> None:
    result = corpus_wer(
        ["Ask not what your country can do for you.", "We must find a new home."],
        ["ask not what you country can do for you", "we must find a new home in the stars"],
    )
    # pair 1: one substitution in 9 words; pair 2: three insertions in 6 words
    assert (result.errors, result.reference_words) == (4, 15)
    assert result.wer == pytest.approx(4 / 15)
    assert corpus_wer(["Hello there."], ["hello, there"]).wer == 0.0
    assert corpus_wer(["a whole sentence here"], [""]).wer == 1.0


def test_corpus_wer_rejects_mismatched_or_empty_input() -> None:
    with pytest.raises(ValueError, match="one hypothesis per reference"):
        corpus_wer(["a"], [])
    with pytest.raises(ValueError, match="empty"):
        corpus_wer(["Um, uh."], ["x"])


def level(n: int, p95: float | None, wer: float | None, refusals: int = 0) -> LevelResult:
    return LevelResult(streams=n, final_p95_s=p95, wer=wer, offline_wer=0.05, refusals=refusals)


def test_capacity_is_the_largest_level_within_latency_and_wer_bounds() -> None:
    rule = CapacityRule()
    levels = [
        level(1, 0.6, 0.05),
        level(2, 0.9, 0.058),
        level(4, 1.4, 0.0599),
        level(8, 1.6, 0.05),  # too slow
        level(16, 1.0, 0.07),  # too inaccurate
    ]
    assert capacity(levels, rule) == 4
    assert not meets(level(4, 1.0, 0.05, refusals=1), rule)
    assert meets(level(4, 1.0, 0.05, refusals=1), CapacityRule(allow_refusals=True))
    assert not meets(level(1, None, 0.05), rule)
    assert capacity([level(1, 2.0, 0.05)], rule) == 0


def test_speech_end_latency_counts_the_wait_for_trailing_silence() -> None:
    log = paced_log(60)  # 6 s
    utterances = [Span(0.5, 2.0), Span(3.0, 5.5)]
    assert speech_end_stream_s(2.6, utterances) == pytest.approx(2.0)  # ends in silence
    assert speech_end_stream_s(4.0, utterances) == pytest.approx(4.0)  # cut mid-speech
    assert speech_end_stream_s(0.3, utterances) == pytest.approx(0.3)  # before any speech
    captions = [cap(102.9, 0.3, 2.6, "first"), cap(104.5, 2.6, 4.0, "second part")]
    # 102.9 - sent(2.0)=102.0 ; 104.5 - sent(4.0)=104.0
    assert speech_end_latencies_s(captions, utterances, log) == pytest.approx([0.9, 0.5])
