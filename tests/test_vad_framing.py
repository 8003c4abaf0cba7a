"""Framer: frames depend only on the samples, never on how the stream was chunked."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vad.base import VadConfigError
from vad.framing import SILENCE_FLOOR_DBFS, Framer, frame_dbfs, frames_dbfs
from vad.segmenter import Segmenter, SegmenterConfig, SegmentEvent
from vad.webrtc import WebRtcClassifier


def load_wav(path: Path) -> npt.NDArray[np.float32]:
    with wave.open(str(path)) as wav:
        assert wav.getframerate() == 16_000 and wav.getnchannels() == 1
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


def split(samples: npt.NDArray[np.float32], sizes: list[int]) -> list[npt.NDArray[np.float32]]:
    """Cut samples into chunks of the given sizes, cycling through them."""
    chunks = []
    pos = 0
    i = 0
    while pos < len(samples):
        size = sizes[i % len(sizes)]
        chunks.append(samples[pos : pos + size])
        pos += size
        i += 1
    return chunks


def frames_of(chunks: list[npt.NDArray[np.float32]], frame_ms: int) -> list[list[float]]:
    framer = Framer(frame_ms)
    out: list[list[float]] = []
    for chunk in chunks:
        out.extend(frame.tolist() for frame in framer.push(chunk))
    return out


SIGNAL = np.random.default_rng(7).uniform(-1, 1, 16_000 + 123).astype(np.float32)


@pytest.mark.parametrize("frame_ms", [10, 20, 30, 32])
@pytest.mark.parametrize("chunk_sizes", [[1], [3, 7, 1001], [160], [16_000], [479, 481]])
def test_fixed_chunkings_give_identical_frames(frame_ms: int, chunk_sizes: list[int]) -> None:
    expected = frames_of([SIGNAL], frame_ms)
    assert expected == frames_of(split(SIGNAL, chunk_sizes), frame_ms)
    frame_samples = 16 * frame_ms
    assert len(expected) == len(SIGNAL) // frame_samples
    assert all(len(frame) == frame_samples for frame in expected)


@settings(max_examples=60, deadline=None)
@given(
    frame_ms=st.sampled_from([10, 20, 30, 32]),
    sizes=st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=20).filter(
        lambda s: any(s)
    ),
)
def test_random_chunkings_give_identical_frames(frame_ms: int, sizes: list[int]) -> None:
    chunks = split(SIGNAL, [s if s else 1 for s in sizes])
    chunks.insert(len(chunks) // 2, np.zeros(0, dtype=np.float32))  # an empty push is harmless
    assert frames_of(chunks, frame_ms) == frames_of([SIGNAL], frame_ms)


def test_remainder_is_kept_and_flushed_zero_padded() -> None:
    framer = Framer(30)
    assert framer.frame_samples == 480
    assert framer.push(np.ones(700, dtype=np.float32))[0].shape == (480,)
    assert framer.pending_samples == 220
    tail = framer.flush()
    assert tail is not None and tail.shape == (480,)
    assert float(tail[:220].min()) == 1.0 and float(np.abs(tail[220:]).max()) == 0.0
    assert framer.flush() is None


def test_frames_do_not_alias_the_callers_buffer() -> None:
    buffer = np.ones(480, dtype=np.float32)
    (frame,) = Framer(30).push(buffer)
    buffer[:] = 0.0
    assert float(frame.min()) == 1.0


@pytest.mark.parametrize(("frame_ms", "sample_rate_hz"), [(0, 16_000), (-10, 16_000), (1, 44_100)])
def test_bad_frame_sizes_are_refused(frame_ms: int, sample_rate_hz: int) -> None:
    with pytest.raises(VadConfigError, match="frame_ms"):
        Framer(frame_ms, sample_rate_hz)


def test_stereo_input_is_refused() -> None:
    with pytest.raises(VadConfigError, match="mono"):
        Framer(30).push(np.zeros((2, 480), dtype=np.float32))


def test_frame_dbfs() -> None:
    assert frame_dbfs(np.zeros(480, dtype=np.float32)) == -100.0
    assert frame_dbfs(np.ones(480, dtype=np.float32)) == pytest.approx(0.0)
    assert frame_dbfs(np.full(480, 0.1, dtype=np.float32)) == pytest.approx(-20.0, abs=1e-4)


def segment(chunks: list[npt.NDArray[np.float32]]) -> list[SegmentEvent]:
    framer = Framer(30)
    classifier = WebRtcClassifier(frame_ms=30)
    segmenter = Segmenter(SegmenterConfig(frame_ms=30, max_utterance_ms=4_000))
    events: list[SegmentEvent] = []
    for chunk in chunks:
        for frame in framer.push(chunk):
            events.extend(segmenter.push(classifier.is_speech(frame), frame_dbfs(frame)))
    ended = segmenter.flush()
    if ended is not None:
        events.append(ended)
    return events


@pytest.fixture(scope="module")
def speech(audio_dir: Path) -> npt.NDArray[np.float32]:
    gap = np.zeros(16_000, dtype=np.float32)
    return np.concatenate(
        [
            gap,
            load_wav(audio_dir / "jfk_inaugural.wav"),
            gap,
            load_wav(audio_dir / "timit_LDC93S1.wav"),
        ]
    )


@pytest.mark.parametrize("chunk_sizes", [[1], [17, 333], [160], [16_000], [8191, 5, 4097]])
def test_segmenter_events_do_not_depend_on_chunking(
    speech: npt.NDArray[np.float32], chunk_sizes: list[int]
) -> None:
    reference = segment([speech])
    assert sum(1 for e in reference if not getattr(e, "discard", True)) >= 3
    assert segment(split(speech, chunk_sizes)) == reference


@settings(max_examples=8, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=400_000), max_size=30))
def test_segmenter_events_do_not_depend_on_random_splits(
    speech: npt.NDArray[np.float32], cuts: list[int]
) -> None:
    points = sorted({c % len(speech) for c in cuts})
    assert segment(np.split(speech, points)) == segment([speech])


def test_frames_dbfs_is_frame_dbfs_of_each_whole_frame() -> None:
    rng = np.random.default_rng(7)
    audio = np.concatenate(
        [np.zeros(480, np.float32), (0.1 * rng.standard_normal(1000)).astype(np.float32)]
    )
    levels = frames_dbfs(audio, 320)
    assert len(levels) == 4, "the 200-sample tail is not a frame"
    expected = [frame_dbfs(audio[i * 320 : (i + 1) * 320]) for i in range(4)]
    assert np.allclose(levels, expected)
    assert levels[0] == SILENCE_FLOOR_DBFS
    assert len(frames_dbfs(audio[:100], 320)) == 0
