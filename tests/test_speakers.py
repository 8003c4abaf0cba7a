"""Speaker diarization: torch-free weight loading, the numpy encoder against resemblyzer's own
embeddings, the streaming assignment rules, and a composed two-speaker conversation."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import diarize
from bench.vadset import read_wav
from cache.registry import fetch
from cache.store import default_cache_dir
from server.speakers import SpeakerConfigError, WeightsError
from server.speakers.cluster import OnlineSpeakers, SpeakerTracker, TrackerConfig, WordSpeaker
from server.speakers.encoder import (
    EMBEDDING,
    SpeakerEncoder,
    WindowEmbeddings,
    fitted_starts,
    partial_starts,
)
from server.speakers.weights import load_checkpoint, load_state_dict
from tests.support.paths import REPO_ROOT, SHARED_DIR

DATA = REPO_ROOT / "tests" / "data" / "speakers"
Vec = npt.NDArray[np.float32]


@pytest.fixture(scope="session")
def speaker_weights() -> Path:
    """resemblyzer's pretrained.pt, assembled from its pinned PyPI wheel (python -m cache fetch)."""
    return fetch("resemblyzer-encoder", default_cache_dir()) / "pretrained.pt"


@pytest.fixture(scope="session")
def encoder(speaker_weights: Path) -> SpeakerEncoder:
    return SpeakerEncoder.load(speaker_weights)


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize("name", ["tiny_zip.pt", "tiny_legacy.pt"])
def test_both_checkpoint_formats_load_into_numpy(name: str) -> None:
    checkpoint = load_checkpoint(DATA / name)
    assert checkpoint["step"] == 7
    state = load_state_dict(DATA / name)
    assert list(state) == ["w", "t", "i", "h"]
    np.testing.assert_array_equal(state["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(state["t"], np.arange(6, dtype=np.float32).reshape(2, 3).T)
    assert state["i"].dtype == np.int64 and state["i"].tolist() == [3, -4]
    assert state["h"].dtype == np.float16 and state["h"].tolist() == [0.5, -1.25]


class _Hostile:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo owned > hostile-marker",))


def test_a_checkpoint_with_any_other_global_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = pickle.dumps({"model_state": {"x": _Hostile()}}, protocol=2)
    path = tmp_path / "hostile.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hostile/data.pkl", payload)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError, match="system"):
        load_checkpoint(path)
    assert not (tmp_path / "hostile-marker").exists()


def test_legacy_checkpoint_with_a_hostile_object_is_refused(tmp_path: Path) -> None:
    parts = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}, _Hostile()):
        pickle.dump(obj, parts, protocol=2)
    path = tmp_path / "hostile_legacy.pt"
    path.write_bytes(parts.getvalue())
    with pytest.raises(WeightsError, match="only tensors"):
        load_checkpoint(path)


def test_truncated_or_missing_checkpoints_raise_weights_error(tmp_path: Path) -> None:
    raw = (DATA / "tiny_legacy.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(raw[:-10])
    with pytest.raises(WeightsError, match="end of the file"):
        load_checkpoint(cut)
    with pytest.raises(WeightsError, match="cannot read"):
        load_checkpoint(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError):
        load_checkpoint(garbage)


def test_our_modules_never_import_torch(speaker_weights: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from server.speakers.cluster import SpeakerTracker\n"
        "from server.speakers.encoder import SpeakerEncoder\n"
        f"enc = SpeakerEncoder.load(Path({str(speaker_weights)!r}))\n"
        "tracker = SpeakerTracker(enc)\n"
        "audio = np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 0.1\n"
        "print(tracker.assign(audio, [(0.1, 0.5), (0.6, 1.9)]))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_pretrained_weights_hold_the_voice_encoder(speaker_weights: Path) -> None:
    state = load_state_dict(speaker_weights)
    assert state["lstm.weight_ih_l0"].shape == (1024, 40)
    assert state["lstm.weight_hh_l2"].shape == (1024, 256)
    assert state["linear.weight"].shape == (256, 256)
    assert all(v.dtype == np.float32 for v in state.values())


# ---------------------------------------------------------------- encoder


FIXTURE_CLIPS = (
    "arctic_aew_a0001",
    "speechbrain_spk2_snt1",
    "vctk_p240_rainbow",
    "pocketsphinx_cards_001",
)


@pytest.mark.parametrize("clip", FIXTURE_CLIPS)
def test_embeddings_match_resemblyzer(encoder: SpeakerEncoder, clip: str) -> None:
    expected = np.load(DATA / "resemblyzer_embeddings.npz")
    audio = read_wav(SHARED_DIR / "speech-dev" / f"{clip}.wav")
    windows = encoder.embed_windows(audio, window_s=1.6, hop_s=0.8)
    partials = expected[f"{clip}/partials"]
    assert windows.embeddings.shape == partials.shape
    cosines = np.sum(windows.embeddings * partials, axis=1)
    assert cosines.min() > 0.99999
    assert np.abs(windows.embeddings - partials).max() < 1e-5
    assert float(encoder.embed(audio) @ expected[f"{clip}/utterance"]) > 0.99999
    assert windows.spans_s[0] == (0.0, min(1.6, len(audio) / 16_000))


def test_window_layouts() -> None:
    # resemblyzer: 3.88 s -> windows at 0, 0.8, 1.6 and 2.4 s (the last 92.5 % audio, kept);
    # 2.6 s -> the window at 1.6 s would hold 62.5 % audio, under min_coverage: dropped;
    # 0.5 s -> one window all the same.
    assert partial_starts(62_080, 160, 80, 0.75) == [0, 80, 160, 240]
    assert partial_starts(41_600, 160, 80, 0.75) == [0, 80]
    assert partial_starts(8_000, 160, 80, 0.75) == [0]
    # fitted: never past the end; a short input is one window of its own length
    assert fitted_starts(389, 160, 80) == [0, 80, 160, 229]
    assert fitted_starts(100, 160, 80) == [0]
    assert fitted_starts(240, 160, 80) == [0, 80]


def test_fitted_windows_stay_inside_the_audio(encoder: SpeakerEncoder) -> None:
    audio = read_wav(SHARED_DIR / "speech-dev" / "arctic_aew_a0001.wav")
    windows = encoder.embed_windows(audio, fit_tail=True)
    assert windows.spans_s[-1][1] == pytest.approx(len(audio) / 16_000)
    assert all(end - start <= 1.6 + 1e-9 for start, end in windows.spans_s)
    norms = np.linalg.norm(windows.embeddings, axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    short = encoder.embed_windows(audio[:8000], fit_tail=True)
    assert short.embeddings.shape == (1, EMBEDDING)
    assert encoder.embed_windows(audio[:0]).embeddings.shape == (0, EMBEDDING)


def _clips(name: str, count: int) -> list[npt.NDArray[np.float32]]:
    return [read_wav(SHARED_DIR / "speech-dev" / f"{name}{i}.wav") for i in range(1, count + 1)]


def _words_over(audio: npt.NDArray[np.float32]) -> list[tuple[float, float]]:
    duration_s = len(audio) / 16_000
    return [(t, t + 0.3) for t in np.arange(0.2, duration_s - 0.4, 0.4)]


def test_two_speakers_separate_and_each_groups(encoder: SpeakerEncoder) -> None:
    spk1 = _clips("speechbrain_spk1_snt", 4)
    spk2 = _clips("speechbrain_spk2_snt", 4)
    pause = np.zeros(4_800, dtype=np.float32)
    tracker = SpeakerTracker(encoder)
    # Each speaker opens with two sentences in one utterance (a 2 s clip alone is too short
    # to found a speaker), then every single sentence, alternating, must be recognised.
    opening = [np.concatenate([clips[0], pause, clips[1]]) for clips in (spk1, spk2)]
    labels: list[tuple[str, int]] = []
    turns = [("spk1", opening[0]), ("spk2", opening[1])]
    turns += [
        (who, clip)
        for pair in zip(spk1, spk2, strict=True)
        for who, clip in zip(("spk1", "spk2"), pair, strict=True)
    ]
    for who, audio in turns:
        result = tracker.assign(audio, _words_over(audio))
        assert len({r.speaker for r in result}) == 1, who
        labels.append((who, result[0].speaker))
    assert {lab for who, lab in labels if who == "spk1"} == {0}
    assert {lab for who, lab in labels if who == "spk2"} == {1}
    assert tracker.speakers == 2


def test_same_and_different_speaker_similarity(encoder: SpeakerEncoder) -> None:
    aew = [encoder.embed(a) for a in _clips("arctic_aew_a000", 2)]
    spk1 = [encoder.embed(a) for a in _clips("speechbrain_spk1_snt", 2)]
    same = min(float(aew[0] @ aew[1]), float(spk1[0] @ spk1[1]))
    different = max(float(a @ b) for a in aew for b in spk1)
    assert same > TrackerConfig().new_speaker_similarity > different


# ---------------------------------------------------------------- assignment rules (pure)


def _voices(count: int, seed: int = 0) -> list[Vec]:
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((count, EMBEDDING)).astype(np.float32)
    return [v / np.linalg.norm(v) for v in raw]


def _windows(talkers: Sequence[Vec], noise: float, seed: int) -> WindowEmbeddings:
    """One window per entry, 1.6 s every 0.8 s, each its talker's voice plus noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for voice in talkers:
        row = voice + noise * rng.standard_normal(EMBEDDING).astype(np.float32) / 16.0
        rows.append(row / np.linalg.norm(row))
    spans = [(0.8 * i, 0.8 * i + 1.6) for i in range(len(talkers))]
    return WindowEmbeddings(np.stack(rows).astype(np.float32), spans)


def _words(n_windows: int, every_s: float = 0.4) -> list[tuple[float, float]]:
    end_s = 0.8 * (n_windows - 1) + 1.6
    return [(t, t + 0.3) for t in np.arange(0.05, end_s - 0.3, every_s)]


def test_invalid_settings_are_refused_with_the_setting_named() -> None:
    with pytest.raises(SpeakerConfigError, match="hop_s"):
        TrackerConfig(hop_s=2.0)
    with pytest.raises(SpeakerConfigError, match="new_speaker_similarity"):
        TrackerConfig(new_speaker_similarity=1.5)
    with pytest.raises(SpeakerConfigError, match="max_speakers"):
        TrackerConfig(max_speakers=0)
    with pytest.raises(SpeakerConfigError, match="change_context_windows"):
        TrackerConfig(change_context_windows=0)


class _RefusingEmbedder:
    """Stands in for the encoder where no embedding may be computed at all."""

    def embed_windows(
        self,
        audio: npt.NDArray[np.float32],
        window_s: float = 1.6,
        hop_s: float = 0.8,
        min_coverage: float = 0.75,
        *,
        fit_tail: bool = False,
    ) -> WindowEmbeddings:
        raise AssertionError("an utterance without words must not be embedded")


def test_an_utterance_without_words_costs_nothing() -> None:
    tracker = SpeakerTracker(_RefusingEmbedder())
    assert tracker.assign(np.zeros(48_000, dtype=np.float32), []) == []
    assert tracker.speakers == 0


def _canonical(sequence: Sequence[int]) -> list[int]:
    """Relabel by order of first appearance: [2, 2, 0, 2, 1] -> [0, 0, 1, 0, 2]."""
    seen: dict[int, int] = {}
    return [seen.setdefault(x, len(seen)) for x in sequence]


utterance_plans = st.lists(
    st.tuples(st.integers(0, 3), st.integers(3, 10)),  # (talker, windows)
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(plan=utterance_plans, seed=st.integers(0, 2**16))
def test_one_talker_utterances_get_labels_in_order_of_appearance(
    plan: list[tuple[int, int]], seed: int
) -> None:
    voices = _voices(4, seed)
    online = OnlineSpeakers()
    labels = []
    for index, (talker, n_windows) in enumerate(plan):
        windows = _windows([voices[talker]] * n_windows, noise=0.5, seed=seed + index)
        result = online.assign_windows(windows, 0.0, _words(n_windows))
        assert len({r.speaker for r in result}) == 1
        assert all(0.0 <= r.confidence <= 1.0 for r in result)
        labels.append(result[0].speaker)
    talkers = [talker for talker, _ in plan]
    assert labels == _canonical(talkers)  # a new label exactly when a new voice appears
    assert online.speakers == len(set(talkers))


mixed_plans = st.lists(
    st.lists(st.tuples(st.integers(0, 3), st.integers(1, 6)), min_size=1, max_size=3),
    min_size=1,
    max_size=8,
)


def _run(
    plan: list[list[tuple[int, int]]], voices: list[Vec], seed: int, peek: bool = False
) -> list[list[WordSpeaker]]:
    online = OnlineSpeakers()
    out = []
    for index, pieces in enumerate(plan):
        talkers = [voices[t] for t, n in pieces for _ in range(n)]
        windows = _windows(talkers, noise=1.0, seed=seed + index)
        words = _words(len(talkers))
        if peek:  # an interim look must not change what the final gets
            online.assign_windows(windows, 0.0, words[: len(words) // 2 + 1], commit=False)
        out.append(online.assign_windows(windows, 0.0, words))
    return out


@settings(max_examples=60, deadline=None)
@given(plan=mixed_plans, seed=st.integers(0, 2**16))
def test_labels_once_emitted_never_change(plan: list[list[tuple[int, int]]], seed: int) -> None:
    voices = _voices(4, seed)
    full = _run(plan, voices, seed)
    for stop in range(1, len(plan)):
        assert _run(plan[:stop], voices, seed) == full[:stop]
    assert _run(plan, voices, seed, peek=True) == full
    emitted = [r.speaker for utterance in full for r in utterance]
    first_seen = list(dict.fromkeys(emitted))
    assert first_seen == sorted(first_seen) == list(range(len(first_seen)))


def test_a_change_of_talker_inside_an_utterance_splits_its_words() -> None:
    a, b = _voices(2, seed=7)
    online = OnlineSpeakers()
    windows = _windows([a] * 6 + [b] * 6, noise=0.5, seed=1)
    # the talkers change at 0.8 * 6 + 0.8 = 5.6 s (the middle of the overlap of windows 5, 6)
    words = [(t, t + 0.3) for t in np.arange(0.1, 5.3, 0.4)]
    words += [(t, t + 0.3) for t in np.arange(5.9, 10.0, 0.4)]
    result = online.assign_windows(windows, 0.0, words)
    truth = [0 if (s + e) / 2 < 5.6 else 1 for s, e in words]
    assert [r.speaker for r in result] == truth
    near_change = [
        r.confidence for (s, e), r in zip(words, result, strict=True) if abs(s - 5.6) < 0.5
    ]
    far = [r.confidence for (s, e), r in zip(words, result, strict=True) if abs(s - 5.6) > 1.5]
    assert max(near_change) < min(far)


def test_a_short_segment_does_not_found_a_speaker() -> None:
    a, b = _voices(2, seed=3)
    online = OnlineSpeakers(TrackerConfig(min_new_speaker_s=2.0))
    assert {
        r.speaker for r in online.assign_windows(_windows([a] * 4, 0.5, 1), 0.0, _words(4))
    } == {0}
    short = WindowEmbeddings(_windows([b], 0.5, 2).embeddings, [(0.0, 1.2)])
    forced = online.assign_windows(short, 0.0, [(0.1, 0.5), (0.6, 1.0)])
    assert {r.speaker for r in forced} == {0}
    assert max(r.confidence for r in forced) < 0.5
    assert online.speakers == 1
    founded = online.assign_windows(_windows([b] * 3, 0.5, 3), 0.0, _words(3))
    assert {r.speaker for r in founded} == {1}


def test_max_speakers_caps_the_labels() -> None:
    voices = _voices(3, seed=5)
    online = OnlineSpeakers(TrackerConfig(max_speakers=2))
    labels = [
        online.assign_windows(_windows([v] * 4, 0.5, i), 0.0, _words(4))[0].speaker
        for i, v in enumerate(voices)
    ]
    assert labels[:2] == [0, 1] and labels[2] in (0, 1)
    assert online.speakers == 2


# ---------------------------------------------------------------- bench metrics


def _conversation() -> diarize.Conversation:
    turns = (
        diarize.Turn("x", 0.0, 4.0, ((0.0, 4.0),)),
        diarize.Turn("y", 3.5, 8.0, ((3.5, 8.0),)),
    )
    return diarize.Conversation("t", 0, np.zeros(16_000 * 9, dtype=np.float32), turns)


def test_word_accuracy_uses_the_best_mapping_and_overlaps_count_either_way() -> None:
    conversation = _conversation()
    words = [(0.5, 0.8, 5), (1.0, 1.4, 5), (3.6, 3.9, 2), (5.0, 5.3, 2), (6.0, 6.3, 2)]
    assert diarize.word_accuracy(conversation, words) == 1.0
    assert diarize.word_accuracy(conversation, [(s, e, 0) for s, e, _ in words]) == 0.6
    swapped = [(0.5, 0.8, 2), (1.0, 1.4, 2), (3.6, 3.9, 5), (5.0, 5.3, 5), (6.0, 6.3, 2)]
    assert diarize.word_accuracy(conversation, swapped) == 0.8


def test_der_counts_confusion_and_nothing_for_a_perfect_answer() -> None:
    conversation = _conversation()
    perfect = [(0.0, 4.0, 1), (3.5, 8.0, 2)]
    assert diarize.diarization_error(conversation, perfect)[0] < 0.02
    one_label = [(0.0, 4.0, 1), (3.5, 8.0, 1)]
    der, _, _, confusion = diarize.diarization_error(conversation, one_label)
    assert confusion > 0.4 and der > 0.4


# ---------------------------------------------------------------- end to end


@pytest.mark.integration
def test_a_composed_two_speaker_conversation_is_labelled(encoder: SpeakerEncoder) -> None:
    conversation = diarize.compose(SHARED_DIR, 2, seed=2)
    assert len(conversation.speakers) == 2 and len(conversation.turns) >= 6
    utterances = diarize.transcribe(conversation, cache_dir=None)
    scored = diarize.score_conversation(conversation, utterances, lambda: SpeakerTracker(encoder))
    assert scored.words > 50
    assert scored.word_accuracy >= 0.9
    assert scored.found == 2
