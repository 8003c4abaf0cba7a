"""Unit tests of the accuracy benchmark's evaluation sets and its word-error scoring (no model)."""

from __future__ import annotations

import hashlib
import itertools
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from bench.accuracy import WordErrors, lost_utterances, score_words
from bench.evalsets import (
    LONG_STREAMS,
    QUIET_DBFS,
    SET_NAMES,
    EvalSet,
    EvalSetError,
    build_set,
    mulaw_decode,
    mulaw_encode,
    power_dbfs,
    shifted,
    speaker_of,
    speech_level_dbfs,
    speech_mask,
    to_float,
)
from bench.metrics_calc import Caption, Span
from bench.workload import SAMPLE_RATE_HZ, WorkloadError, read_references
from tests.support.paths import SHARED_DIR


@cache
def built(name: str) -> EvalSet:
    return build_set(name, SHARED_DIR)


def fingerprint(eval_set: EvalSet) -> list[tuple[str, str, str, tuple[Span, ...]]]:
    return [
        (i.name, hashlib.sha256(i.samples.tobytes()).hexdigest(), i.reference, i.speech)
        for i in eval_set.items
    ]


def share_above_hz(samples: np.ndarray, cutoff_hz: float) -> float:
    power = np.abs(np.fft.rfft(to_float(samples))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / SAMPLE_RATE_HZ)
    return float(power[freqs > cutoff_hz].sum() / power.sum())


@pytest.mark.parametrize("name", SET_NAMES)
def test_every_set_is_the_same_bytes_when_built_twice(name: str) -> None:
    first = build_set(name, SHARED_DIR)
    assert first.items
    assert fingerprint(first) == fingerprint(build_set(name, SHARED_DIR))
    assert all(i.samples.dtype == np.int16 and i.reference and i.speech for i in first.items)


def test_long_references_are_the_clips_references_joined_in_order() -> None:
    refs = {d: read_references(SHARED_DIR / d) for d in ("audio", "speech-dev")}
    long = built("long")
    assert [i.name for i in long.items] == [name for name, _ in LONG_STREAMS]
    for item, (_, sources) in zip(long.items, LONG_STREAMS, strict=True):
        assert item.sources == sources
        expected = " ".join(refs[s.split("/")[0]][s.split("/")[1]] for s in sources)
        assert item.reference == expected
    spk1 = long.items[1]
    assert spk1.reference.startswith("The child almost hurt the small dog. Drop the two when")


def test_long_pauses_are_seeded_and_natural() -> None:
    lj = built("long").items[0]
    clips = [i for i in built("audio").items if i.name.startswith("ljspeech_")]
    pauses_s = lj.duration_s - sum(i.duration_s for i in clips)
    assert len(clips) == 5 and 4 * 0.4 <= pauses_s <= 4 * 1.2


def test_noise_at_10_db_snr_over_speech_and_everywhere() -> None:
    for clean, noisy in zip(built("long").items, built("long-snr10").items, strict=True):
        assert noisy.reference == clean.reference and noisy.speech == clean.speech
        noise = to_float(noisy.samples) - to_float(clean.samples)
        snr_db = speech_level_dbfs(clean) - power_dbfs(noise)
        assert abs(snr_db - 10.0) < 0.5, clean.name
        pauses = ~speech_mask(clean)
        assert abs(power_dbfs(noise[pauses]) - power_dbfs(noise)) < 0.5, clean.name


def test_quiet_speech_is_at_minus_45_dbfs() -> None:
    for item in built("quiet").items:
        assert abs(speech_level_dbfs(item) - QUIET_DBFS) < 0.5, item.name


def test_telephone_band_has_no_energy_above_4_khz() -> None:
    assert share_above_hz(built("long").items[0].samples, 4_000) > 1e-2  # wideband before
    for clean, phone in zip(built("long").items, built("telephone").items, strict=True):
        assert share_above_hz(phone.samples, 4_000) < 1e-4, phone.name
        assert len(phone.samples) == len(clean.samples) and phone.speech == clean.speech


def test_mulaw_round_trip_stays_within_one_step() -> None:
    pcm = np.arange(-32_000, 32_000, 7, dtype=np.int16)
    decoded = mulaw_decode(mulaw_encode(pcm)).astype(np.int32)
    error = np.abs(decoded - pcm.astype(np.int32))
    assert np.all(error <= np.maximum(8, np.abs(pcm.astype(np.int32)) // 16))
    assert mulaw_encode(np.array([0], dtype=np.int16))[0] == 0xFF
    assert mulaw_decode(np.array([0x80], dtype=np.uint8))[0] == 32_124


def test_unrelated_streams_change_talker_at_every_clip() -> None:
    refs = read_references(SHARED_DIR / "audio")
    for item in built("unrelated").items:
        talkers = [speaker_of(s) for s in item.sources]
        assert all(a != b for a, b in itertools.pairwise(talkers))
        assert len(set(item.sources)) == len(item.sources) >= 3
        assert 35.0 <= item.duration_s <= 60.0
        assert item.reference == " ".join(refs[s.split("/")[1]] for s in item.sources)


def test_unknown_set_is_refused() -> None:
    with pytest.raises(EvalSetError, match="long-snr10"):
        build_set("noisy", SHARED_DIR)


def test_scoring_counts_substitutions_deletions_insertions() -> None:
    assert score_words("the cat sat on the mat", "the cat sit on mat") == WordErrors(6, 1, 1, 0)
    assert score_words("ask not", "ask not what now") == WordErrors(2, 0, 0, 2)
    assert score_words("Hello, World!", "hello world") == WordErrors(2, 0, 0, 0)
    assert score_words("ask not what", "") == WordErrors(3, 0, 3, 0)
    total = WordErrors(6, 1, 1, 0) + WordErrors(2, 0, 0, 2)
    assert total == WordErrors(8, 1, 1, 2) and total.wer == pytest.approx(0.5)


def test_an_utterance_is_lost_when_no_final_word_overlaps_it() -> None:
    speech = (Span(0.0, 1.0), Span(2.0, 3.0), Span(4.0, 5.0))
    final = Caption(9.0, 0.0, 5.0, "a b", True, words=(Span(0.2, 0.5), Span(2.9, 3.4)))
    interim = Caption(9.0, 4.0, 5.0, "c", False, words=(Span(4.2, 4.5),))
    assert lost_utterances(speech, [final, interim]) == (Span(4.0, 5.0),)
    assert lost_utterances(speech, []) == speech


def test_sets_are_read_from_the_shared_dir(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match=r"refs\.tsv"):
        build_set("audio", tmp_path)


def test_a_shifted_item_is_the_same_speech_framed_later() -> None:
    item = built("audio").items[0]
    assert shifted(item, 0) is item
    later = shifted(item, 7)
    assert later.reference == item.reference
    assert np.array_equal(later.samples, item.samples[7 * SAMPLE_RATE_HZ // 1000 :])


def test_a_replay_cell_over_shifts_reports_mean_and_spread_over_offline() -> None:
    from bench.replay import _cell

    offline = [WordErrors(200, 10, 0, 0), WordErrors(200, 9, 1, 0)]
    assert _cell([WordErrors(200, 10, 1, 1)], offline[:1]).split() == ["0.0600", "10/1/1"]
    runs = [WordErrors(200, 10, 2, 0), WordErrors(200, 8, 1, 3)]  # 12 and 12 errors: +1, +1
    assert _cell(runs, offline).split() == ["12.0", "+1.00", "[+1.00,+1.00]"]
    runs = [WordErrors(200, 10, 0, 0), WordErrors(200, 12, 2, 0)]  # +0 and +2 points
    assert _cell(runs, offline).split() == ["12.0", "+1.00", "[+0.00,+2.00]"]
