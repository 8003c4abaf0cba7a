"""Unit tests of the WhisperLive segment tracker: dedupe, interims, settle times."""

from __future__ import annotations

import pytest

from bench.peer_segments import PeerSegment, PeerTranscript, parse_segments


def seg(start: float, end: float, text: str, completed: bool = False) -> PeerSegment:
    return PeerSegment(start, end, text, completed)


def test_parse_segments_reads_string_times_and_skips_broken_entries() -> None:
    message = {
        "uid": "x",
        "segments": [
            {"start": "0.140", "end": "4.140", "text": " Hi.", "completed": True},
            {"start": "4.2", "end": "5.0", "text": " there"},
            {"start": "oops", "end": "5.0", "text": "bad"},
            "not a dict",
        ],
    }
    assert parse_segments(message) == [seg(0.14, 4.14, " Hi.", True), seg(4.2, 5.0, " there")]
    assert parse_segments({"message": "SERVER_READY"}) is None


def test_completed_segments_become_one_final_each_despite_repeats() -> None:
    t = PeerTranscript()
    first = seg(0.0, 2.0, " One.", True)
    t.observe(10.0, [first, seg(2.0, 3.0, " Tw")])
    t.observe(11.0, [first, seg(2.0, 3.5, " Two.")])
    t.observe(12.0, [first, seg(2.0, 3.5, " Two.", True), seg(3.5, 4.0, " Thr")])
    finals = t.finals
    assert [(f.text, f.arrival_wall_s) for f in finals] == [(" One.", 10.0), (" Two.", 12.0)]
    assert all(f.is_final for f in finals)
    # " Two." was already the in-progress text at 11.0: that is when it settled
    assert finals[1].settled_wall_s == 11.0
    # " One." was never seen in progress: it settled when it was completed
    assert finals[0].settled_wall_s == 10.0
    assert t.pending_text == " Thr"


def test_interims_are_counted_only_when_the_in_progress_text_changes() -> None:
    t = PeerTranscript()
    t.observe(1.0, [seg(0.0, 1.0, " We")])
    t.observe(1.5, [seg(0.0, 1.0, " We")])  # same text again: no update
    t.observe(2.0, [seg(0.0, 2.0, " We must")])
    t.observe(2.5, [seg(0.0, 2.0, "")])  # empty text is not a caption
    t.observe(3.0, [seg(0.0, 3.0, " We must go")])
    assert [c.text for c in t.interims] == [" We", " We must", " We must go"]
    assert not any(c.is_final for c in t.interims)


def test_settle_time_resets_when_the_text_changes_back_and_forth() -> None:
    t = PeerTranscript()
    t.observe(1.0, [seg(5.0, 6.0, " a b")])
    t.observe(2.0, [seg(5.0, 6.5, " a c")])
    t.observe(3.0, [seg(5.0, 6.5, " a b")])
    t.observe(9.0, [seg(5.0, 6.5, " a b", True)])
    assert t.finals[0].settled_wall_s == pytest.approx(3.0)
    assert t.pending_text == ""
