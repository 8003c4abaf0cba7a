"""Segmenter on synthetic per-frame speech decisions: onset, pre-roll, endpointing, cuts, clicks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vad.base import VadConfigError
from vad.segmenter import Segmenter, SegmenterConfig, SegmentEvent, SpeechEnded, SpeechStarted

LOUD_DBFS = -20.0
QUIET_DBFS = -70.0


def run(
    config: SegmenterConfig, pattern: str, energies: list[float] | None = None
) -> list[tuple[int, SegmentEvent]]:
    """Push a pattern of '#' (voiced) and '.' (not) frames; return (frame index, event) pairs."""
    segmenter = Segmenter(config)
    out: list[tuple[int, SegmentEvent]] = []
    for index, mark in enumerate(pattern):
        speech = mark == "#"
        energy = LOUD_DBFS if speech else QUIET_DBFS
        if energies is not None:
            energy = energies[index]
        out.extend((index, event) for event in segmenter.push(speech, energy))
    assert segmenter.frames_seen == len(pattern)
    return out


def kept(events: list[tuple[int, SegmentEvent]]) -> list[SpeechEnded]:
    return [e for _, e in events if isinstance(e, SpeechEnded) and not e.discard]


CONFIG = SegmenterConfig(
    frame_ms=30,
    pre_roll_ms=300,
    start_window_ms=90,
    start_ratio=0.6,
    endpointing_ms=300,
    max_utterance_ms=6_000,
    cut_search_ms=1_500,
    min_speech_ms=150,
    hangover_ms=60,
)


def test_pre_roll_back_dates_the_start() -> None:
    events = run(CONFIG, "." * 50 + "#" * 30 + "." * 20)
    index, started = events[0]
    assert started == SpeechStarted(start_frame=40, onset_frame=50)
    assert index == 51  # two of the three window frames voiced
    ended = events[1][1]
    assert isinstance(ended, SpeechEnded)
    assert (ended.start_frame, ended.reason, ended.voiced_ms) == (40, "endpoint", 900)
    assert ended.speech_end_frame == 80 + 2  # last voiced frame 79, plus 60 ms of hangover


def test_pre_roll_never_reaches_before_zero_or_the_previous_utterance() -> None:
    events = run(CONFIG, "..###########" + "." * 10 + "######" + "." * 20)
    starts = [e for _, e in events if isinstance(e, SpeechStarted)]
    ends = [e for _, e in events if isinstance(e, SpeechEnded)]
    assert starts[0].start_frame == 0
    assert ends[0].end_frame == 23  # last voiced 12, ten silent frames end it at 22
    assert starts[1] == SpeechStarted(start_frame=23, onset_frame=23)


def test_endpoint_fires_when_trailing_silence_reaches_the_setting() -> None:
    events = run(CONFIG, "." * 5 + "#" * 20 + "." * 30)
    index, ended = events[-1]
    assert isinstance(ended, SpeechEnded) and ended.reason == "endpoint"
    # last voiced frame 24; 300 ms = 10 silent frames: frames 25..34, fired while pushing 34
    assert index == 34
    assert ended.end_frame == 35


def test_short_pauses_do_not_end_the_utterance() -> None:
    events = run(CONFIG, "#" * 10 + "." * 9 + "#" * 10 + "." * 9 + "#" * 10 + "." * 10)
    assert [type(e) for _, e in events] == [SpeechStarted, SpeechEnded]


def test_endpointing_can_be_shortened_while_an_utterance_is_open() -> None:
    segmenter = Segmenter(CONFIG)  # 300 ms = 10 frames
    events: list[SegmentEvent] = []
    for _ in range(20):
        events += segmenter.push(True, LOUD_DBFS)
    for _ in range(4):
        events += segmenter.push(False, QUIET_DBFS)
    assert segmenter.in_speech
    segmenter.set_endpointing_ms(150)  # 5 frames: one more silent frame ends it
    ended = segmenter.push(False, QUIET_DBFS)
    assert len(ended) == 1 and isinstance(ended[0], SpeechEnded)
    assert (ended[0].reason, ended[0].end_frame) == ("endpoint", 25)
    segmenter.set_endpointing_ms(None)
    for _ in range(10):
        segmenter.push(True, LOUD_DBFS)
    assert all(segmenter.push(False, QUIET_DBFS) == [] for _ in range(50))
    with pytest.raises(VadConfigError, match="endpointing_ms"):
        segmenter.set_endpointing_ms(-5)


def test_endpointing_off_waits_for_flush() -> None:
    config = SegmenterConfig(endpointing_ms=None, max_utterance_ms=6_000, cut_search_ms=1_500)
    segmenter = Segmenter(config)
    events: list[SegmentEvent] = []
    for mark in "#" * 20 + "." * 100:
        events += segmenter.push(mark == "#", LOUD_DBFS if mark == "#" else QUIET_DBFS)
    assert [type(e) for e in events] == [SpeechStarted]
    assert segmenter.in_speech
    ended = segmenter.flush()
    assert ended is not None
    assert (ended.reason, ended.end_frame, ended.voiced_ms, ended.discard) == (
        "flush",
        120,
        600,
        False,
    )
    assert not segmenter.in_speech
    assert segmenter.flush() is None


def test_flush_bounds_the_next_pre_roll() -> None:
    segmenter = Segmenter(CONFIG)
    for _ in range(5):
        segmenter.push(False, QUIET_DBFS)
    assert segmenter.flush() is None
    events: list[SegmentEvent] = []
    for _ in range(4):
        events += segmenter.push(True, LOUD_DBFS)
    assert events == [SpeechStarted(start_frame=5, onset_frame=5)]


@pytest.mark.parametrize("click_frames", [1, 2])  # 30 and 60 ms bursts
def test_clicks_give_no_kept_utterance(click_frames: int) -> None:
    pattern = ("." * 40 + "#" * click_frames) * 10 + "." * 40
    events = run(CONFIG, pattern)
    assert kept(events) == []
    ends = [e for _, e in events if isinstance(e, SpeechEnded)]
    assert all(e.discard and e.voiced_ms <= 60 for e in ends)


def test_short_word_is_kept() -> None:
    events = run(CONFIG, "." * 20 + "#" * 8 + "." * 20)  # 240 ms of voice
    assert len(kept(events)) == 1


def test_max_length_cuts_at_the_quiet_gap_in_the_look_back_window() -> None:
    # 200 frames = 6 s max. Continuous speech with a 4-frame pause at frames 170-173.
    pattern = "#" * 170 + "." * 4 + "#" * 100 + "." * 20
    events = run(CONFIG, pattern)
    first_end = next(e for _, e in events if isinstance(e, SpeechEnded))
    assert first_end.reason == "max_length"
    assert 171 <= first_end.end_frame <= 173  # inside the pause, not mid-word
    index, second = [(i, e) for i, e in events if isinstance(e, SpeechStarted)][1]
    assert second.start_frame == first_end.end_frame
    assert second.onset_frame == 174
    assert index == 199  # the cut happens when the utterance reaches 6 s
    assert [type(e) for _, e in events] == [SpeechStarted, SpeechEnded, SpeechStarted, SpeechEnded]


def test_max_length_without_pauses_cuts_at_the_lowest_energy() -> None:
    pattern = "#" * 260 + "." * 20
    energies = [LOUD_DBFS] * 280
    energies[180] = energies[181] = -45.0  # a dip between two words webrtc still calls voiced
    events = run(CONFIG, pattern, energies)
    first_end = next(e for _, e in events if isinstance(e, SpeechEnded))
    assert first_end.reason == "max_length"
    assert first_end.end_frame in (181, 182)
    lengths = []
    start = 0
    for _, event in events:
        if isinstance(event, SpeechStarted):
            start = event.start_frame
        else:
            lengths.append(event.end_frame - start)
    assert max(lengths) <= 200


def test_max_length_cut_with_silent_tail_goes_idle() -> None:
    config = SegmenterConfig(endpointing_ms=None, max_utterance_ms=3_000, cut_search_ms=900)
    events = run(config, "#" * 80 + "." * 100)
    assert [type(e) for _, e in events] == [SpeechStarted, SpeechEnded]
    ended = events[1][1]
    assert isinstance(ended, SpeechEnded) and ended.reason == "max_length"
    assert ended.end_frame > 80  # the cut lies in the silence, after the last word


def test_invalid_settings_are_refused_with_the_setting_named() -> None:
    with pytest.raises(VadConfigError, match="start_ratio"):
        SegmenterConfig(start_ratio=0.0)
    with pytest.raises(VadConfigError, match="max_utterance_ms"):
        SegmenterConfig(max_utterance_ms=1_000, cut_search_ms=3_000)
    with pytest.raises(VadConfigError, match="endpointing_ms"):
        SegmenterConfig(endpointing_ms=-1)


def test_max_backdate_frames() -> None:
    assert CONFIG.max_backdate_frames == 3 + 10


@settings(max_examples=150, deadline=None)
@given(
    frames=st.lists(
        st.tuples(st.booleans(), st.floats(min_value=-100, max_value=0)),
        min_size=0,
        max_size=700,
    ),
    endpointing_ms=st.one_of(st.none(), st.integers(min_value=0, max_value=1_000)),
    flush_at=st.integers(min_value=0, max_value=700),
)
def test_events_always_form_ordered_non_overlapping_utterances(
    frames: list[tuple[bool, float]], endpointing_ms: int | None, flush_at: int
) -> None:
    config = SegmenterConfig(
        endpointing_ms=endpointing_ms,
        max_utterance_ms=3_000,
        cut_search_ms=900,
        pre_roll_ms=210,
    )
    segmenter = Segmenter(config)
    events: list[tuple[int, SegmentEvent]] = []
    for index, (speech, energy) in enumerate(frames):
        if index == flush_at:
            ended = segmenter.flush()
            if ended is not None:
                events.append((index - 1, ended))
        events.extend((index, event) for event in segmenter.push(speech, energy))
    ended = segmenter.flush()
    if ended is not None:
        events.append((len(frames) - 1, ended))
    previous_end = 0
    open_start: SpeechStarted | None = None
    for index, event in events:
        if isinstance(event, SpeechStarted):
            assert open_start is None
            assert previous_end <= event.start_frame <= event.onset_frame <= index
            assert frames[event.onset_frame][0]
            assert index - event.start_frame <= config.max_backdate_frames
            open_start = event
        else:
            assert open_start is not None
            assert event.start_frame == open_start.start_frame
            assert open_start.start_frame < event.end_frame <= index + 1
            assert event.start_frame <= event.speech_end_frame <= event.end_frame
            assert event.end_frame - event.start_frame <= 100  # 3 s of 30 ms frames
            voiced = sum(s for s, _ in frames[event.start_frame : event.end_frame])
            assert event.voiced_ms <= voiced * 30
            previous_end = event.end_frame
            open_start = None
    assert open_start is None
