"""Window packing: the pure layout/split rules, then the real engine packing shared speech."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.metrics_calc import corpus_wer
from bench.workload import load_files
from server import packing
from server.asr import DecodeOptions, WhisperEngine
from server.packing import Span
from server.transcription import AsrRequest

pytestmark = pytest.mark.integration  # the real tiny.en model

RATE = packing.SAMPLE_RATE_HZ


def tone(seconds: float, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_plan_fills_windows_in_order_and_gives_long_items_their_own() -> None:
    windows = packing.plan_windows([10, 10, 8, 29, 3, 3], window_s=30, gap_s=1)
    # 10+1+10+1+8 = 30 fits; 29 cannot share; 3 and 3 share the last window.
    assert windows == [[0, 1, 2], [3], [4, 5]]
    assert packing.plan_windows([], window_s=30, gap_s=1) == []


def test_lay_out_puts_gaps_between_members_and_reports_their_spans() -> None:
    audio, spans = packing.lay_out([tone(1.0), tone(0.5)], gap_s=1.0)
    assert len(audio) == int(2.5 * RATE)
    assert spans == [Span(0.0, 1.0), Span(2.0, 2.5)]
    assert not audio[RATE : 2 * RATE].any(), "the gap is silence"


def test_words_go_to_the_span_holding_or_nearest_their_midpoint() -> None:
    spans = [Span(0.0, 4.0), Span(5.0, 9.0)]
    assert packing.assign([1.0, 4.2, 4.8, 9.5, 20.0], spans) == [0, 0, 1, 1, 1]


def test_speech_extent_finds_the_loud_part_and_ignores_silence() -> None:
    audio = np.concatenate([np.zeros(RATE, np.float32), tone(2.0), np.zeros(RATE, np.float32)])
    extent = packing.speech_extent_s(audio)
    assert extent is not None
    assert extent[0] == pytest.approx(1.0, abs=0.03) and extent[1] == pytest.approx(3.0, abs=0.03)
    assert packing.speech_extent_s(np.zeros(RATE, np.float32)) is None
    assert packing.speech_extent_s(np.zeros(10, np.float32)) is None


def level_db(audio: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(audio)))))


def test_members_are_levelled_to_one_loudness_within_bounds() -> None:
    quiet, loud = tone(2.0, level=0.01), tone(2.0, level=0.9)
    target_db = packing.TARGET_LEVEL_DBFS
    assert level_db(packing.levelled(quiet)) == pytest.approx(target_db, abs=0.5)
    assert level_db(packing.levelled(loud)) == pytest.approx(target_db, abs=0.5)
    faint = tone(2.0, level=0.0003)  # -73 dBFS: below the floor, left alone
    assert np.array_equal(packing.levelled(faint), faint)
    whisper = tone(2.0, level=0.003)  # -53 dBFS: raised by the most allowed, not to target
    gained_db = level_db(packing.levelled(whisper)) - level_db(whisper)
    assert gained_db == pytest.approx(packing.MAX_GAIN_DB, abs=0.1)


@pytest.mark.parametrize(
    ("words", "extent", "redo"),
    [
        ([], (0.3, 4.0), True),  # speech but no words: Whisper skipped it
        ([(0.4, 1.0), (1.1, 1.8)], (0.3, 6.0), True),  # its tail was lost
        ([(3.0, 4.0), (4.0, 5.8)], (0.3, 6.0), True),  # its head was lost
        ([(0.4, 1.0), (4.0, 5.6)], (0.3, 6.0), False),
        ([], (0.3, 0.9), False),  # too little sound to expect words (a cough)
        ([], None, False),  # silence
        ([(0.4, 3.5), (3.6, 5.8)], (0.3, 6.0), True),  # a word stretched over skipped speech
    ],
)
def test_needs_redo(
    words: list[tuple[float, float]], extent: tuple[float, float] | None, redo: bool
) -> None:
    assert packing.needs_redo(words, extent) is redo


@pytest.fixture(scope="module")
def engines(model_dir: Path) -> tuple[WhisperEngine, WhisperEngine]:
    def load(pack_s: float) -> WhisperEngine:
        return WhisperEngine(
            model_dir,
            name="tiny.en",
            device="cpu",
            cpu_threads=2,
            workers=1,
            decode=DecodeOptions(pack_window_s=pack_s),
        )

    return load(30.0), load(0.0)


def utterances(audio_dir: Path) -> tuple[list[np.ndarray], list[int], list[str]]:
    """Every VAD utterance of the shared files (with 0.3 s before and 0.5 s after, as the
    server cuts them), the file each came from, and the files' references."""
    files = load_files(audio_dir)
    clips: list[np.ndarray] = []
    owners: list[int] = []
    for index, f in enumerate(files):
        audio = f.samples.astype(np.float32) / 32768.0
        for span in f.speech:
            start = max(0, int((span.start_stream_s - 0.3) * RATE))
            clips.append(audio[start : int((span.end_stream_s + 0.5) * RATE)])
            owners.append(index)
    return clips, owners, [f.reference for f in files]


def test_packed_finals_match_unpacked_accuracy_with_fewer_windows(
    engines: tuple[WhisperEngine, WhisperEngine], audio_dir: Path
) -> None:
    packed_engine, plain_engine = engines
    clips, owners, refs = utterances(audio_dir)
    requests = [AsrRequest(clip) for clip in clips]

    def wer(engine: WhisperEngine) -> float:
        texts = [""] * len(refs)
        for start in range(0, len(requests), 8):  # the scheduler's batches of queued finals
            for i, result in enumerate(engine.transcribe_batch(requests[start : start + 8])):
                texts[owners[start + i]] += " " + result.text
        return corpus_wer(refs, texts).wer

    windows = sum(
        len(packing.plan_windows([r.duration_s for r in requests[s : s + 8]], window_s=30, gap_s=1))
        for s in range(0, len(requests), 8)
    )
    assert windows < len(requests) / 2, "the shared utterances pack at least two to a window"
    assert wer(packed_engine) <= wer(plain_engine) + 0.01


def test_a_quiet_talker_sharing_a_window_with_a_loud_one_is_heard(
    engines: tuple[WhisperEngine, WhisperEngine], audio_dir: Path
) -> None:
    """The TIMIT file is 20 dB quieter than the others; unlevelled, Whisper skipped it in
    packed windows and its neighbour's first words were given to it."""
    packed_engine, _ = engines
    quiet = load_files(audio_dir, ["timit_LDC93S1.wav"])[0].samples.astype(np.float32) / np.float32(
        32768
    )
    loud = load_files(audio_dir, ["cmuarctic_a0024.wav"])[0].samples.astype(
        np.float32
    ) / np.float32(32768)
    first, second = packed_engine.transcribe_batch([AsrRequest(quiet), AsrRequest(loud)])
    assert "greasy wash water" in first.text.lower()
    assert second.text.lower().startswith("it was my reports")


def test_each_member_gets_its_own_words_and_silence_stays_empty(
    engines: tuple[WhisperEngine, WhisperEngine], audio_dir: Path
) -> None:
    packed_engine, _ = engines
    clips, _, _ = utterances(audio_dir)
    speech = [c for c in clips if len(c) > RATE][:2]
    silence = np.zeros(2 * RATE, np.float32)
    results = packed_engine.transcribe_batch(
        [
            AsrRequest(speech[0]),
            AsrRequest(silence),
            AsrRequest(speech[1]),
            AsrRequest(speech[0], final=False),
            AsrRequest(speech[1], final=False),
        ]
    )
    assert results[1].text == "" and results[1].words == ()
    for clip, result in ((speech[0], results[0]), (speech[1], results[2])):
        assert result.text and result.rejected is None
        assert result.words, "finals keep word timings"
        duration_s = len(clip) / RATE
        assert all(0.0 <= w.start_s <= w.end_s <= duration_s for w in result.words)
        assert "".join(w.text for w in result.words).strip() == result.text
    for final, interim in ((results[0], results[3]), (results[2], results[4])):
        assert interim.text and interim.words == (), "interims carry no words"
        assert corpus_wer([final.text], [interim.text]).wer < 0.3


@settings(max_examples=200, deadline=None)
@given(
    durations=st.lists(st.floats(0.1, 29.0), max_size=20),
    window_s=st.floats(5.0, 30.0),
    gap_s=st.floats(0.0, 2.0),
)
def test_plan_keeps_order_covers_every_item_once_and_fits_its_windows(
    durations: list[float], window_s: float, gap_s: float
) -> None:
    windows = packing.plan_windows(durations, window_s=window_s, gap_s=gap_s)
    assert [i for w in windows for i in w] == list(range(len(durations)))
    for window in windows:
        used_s = sum(durations[i] for i in window) + gap_s * (len(window) - 1)
        assert len(window) == 1 or used_s <= window_s + 1e-9


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 3 * RATE), min_size=1, max_size=6),
    gap_s=st.sampled_from([0.0, 0.5, 1.0]),
    midpoints=st.lists(st.floats(-5.0, 40.0), max_size=30),
)
def test_layout_spans_are_ordered_and_every_word_has_one_owner(
    lengths: list[int], gap_s: float, midpoints: list[float]
) -> None:
    audio, spans = packing.lay_out([np.full(n, 0.1, np.float32) for n in lengths], gap_s)
    assert len(audio) == sum(lengths) + round(gap_s * RATE) * (len(lengths) - 1)
    for span, n in zip(spans, lengths, strict=True):
        assert span.end_s - span.start_s == pytest.approx(n / RATE)
    assert all(a.end_s <= b.start_s for a, b in itertools.pairwise(spans))
    owners = packing.assign(sorted(midpoints), spans)
    assert all(0 <= o < len(spans) for o in owners)
    assert owners == sorted(owners), "words in time order keep the members' order"
