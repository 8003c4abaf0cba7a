"""The pure rules that decide which decode of an utterance is kept and which are dropped."""

from __future__ import annotations

import pytest

from server.asr import DecodeOptions, HallucinationFilter, collapse_loops, outranks

pytestmark = pytest.mark.unit

LIMIT = DecodeOptions().compression_ratio_threshold


def test_a_sampled_decode_that_does_not_loop_beats_a_likelier_loop() -> None:
    # Measured on whisper-base translating German: the greedy decode looped on "simple,"
    # and scored best, so the final was dropped as repetitive though a sampled decode at
    # a higher temperature read the sentence.
    looping, plain = (LIMIT + 1.0, -0.3), (1.6, -0.9)
    assert outranks(plain, looping, LIMIT)
    assert not outranks(looping, plain, LIMIT)


def test_otherwise_the_likelier_decode_wins() -> None:
    assert outranks((1.5, -0.4), (1.4, -0.6), LIMIT)
    assert not outranks((1.5, -0.6), (1.4, -0.4), LIMIT)
    assert outranks((LIMIT + 2, -0.2), (LIMIT + 1, -0.5), LIMIT)  # both loop: likelier


def test_verdicts() -> None:
    check = HallucinationFilter()
    assert check.verdict("", -0.1, 0.0, 1.0) == "empty"
    assert check.verdict("hello there", -1.5, 0.9, 1.0) == "no_speech"
    assert check.verdict("so " * 40, -0.1, 0.0, LIMIT + 1) == "repetitive"
    assert check.verdict("thank you", -0.9, 0.1, 1.0) == "known_phrase"
    assert check.verdict("thank you", -0.2, 0.05, 1.0) is None, "a confident one is kept"
    assert check.verdict("the meeting starts at nine", -0.3, 0.1, 1.2) is None


def test_loops_are_cut_to_three() -> None:
    assert collapse_loops("we go " * 6 + "home") == "we go we go we go home"
    assert collapse_loops("no no no") == "no no no"
