"""One session's streaming speaker labels: utterances and word spans in, (speaker, confidence) out.

Rules, applied to one final utterance at a time (`SpeakerTracker.assign`):

* No words, nothing to do: no audio is embedded and no state changes.
* Windows: the audio from `edge_s` before the first word to `edge_s` after the last is
  embedded in windows of `window_s` every `hop_s` (the last one ends at the audio's end).
* Talker changes inside the utterance: at the start of each window, the mean embedding of
  the `change_context_windows` windows that end before it is compared with that of the ones
  starting there (windows straddling the point are skipped: they hold both sides). Points
  whose cosine similarity is below `split_similarity` and the lowest within
  `change_context_windows` windows either side become changes, least similar first, each
  at least `min_split_windows` windows from the ends and from the changes already taken.
  The runs of windows between changes are the segments; a straddling window goes with the
  run before but, holding both talkers, takes no part in the rules below.
* Segment -> speaker, in time order: the segment's mean embedding is compared with every
  speaker's centroid. The most similar speaker at or above `new_speaker_similarity` takes
  it; otherwise a new speaker (the next label: 0, 1, 2, ... in order of appearance) when the
  segment spans at least `min_new_speaker_s` and fewer than `max_speakers` exist; otherwise
  (a short or surplus segment) the most similar speaker, with low confidence. The first
  segment of a session founds speaker 0 whatever its length. A change inside the utterance
  that leaves a side too short to found a speaker and unlike every speaker is undone (the
  weaker of the side's changes, one at a time), and the segments are decided again.
* Centroids are running means: a segment that matched or founded a speaker adds its window
  embeddings to that speaker's sum (centroid = normalised sum); a segment given to the most
  similar speaker without reaching the threshold adds none.
* Word -> segment: a word takes the segment holding its midpoint. The boundary between two
  segments lies halfway between the end of the last window before the change and the start
  of the first after it, moved to the widest pause between words within `hop_s` of it.
* Confidence: 0.5 + margin / (2 * `confidence_margin`), clipped to [0, 1], where margin is
  how much more similar the segment is to its speaker than to the best alternative (another
  speaker, or the new-speaker threshold; for a new speaker: how far below the threshold the
  most similar existing speaker lies). Words within `hop_s` of a segment boundary have it
  scaled down towards half, linearly with closeness.
* Stability: a label is returned once and never revised; later utterances only move the
  centroids used for later words. `commit=False` (for interims) computes labels the same
  way without changing any state: a new speaker gets the label the next commit would give.

Cost per utterance: embedding its windows (the encoder, about 10 ms per window of CPU) plus
O(n log n) for the change search over its n <= 30 windows and O(n * speakers) to assign.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from server.speakers import SpeakerConfigError
from server.speakers.encoder import SAMPLE_RATE_HZ, Array32, WindowEmbeddings

Array64 = npt.NDArray[np.float64]


class WindowEmbedder(Protocol):
    """What the tracker needs from the encoder (`SpeakerEncoder` provides it)."""

    def embed_windows(
        self,
        audio: Array32,
        window_s: float = ...,
        hop_s: float = ...,
        min_coverage: float = ...,
        *,
        fit_tail: bool = ...,
    ) -> WindowEmbeddings: ...


@dataclass(frozen=True)
class TrackerConfig:
    """Speaker assignment settings (see the module docstring for what each rule does).

    Defaults from `python -m bench diarize --tune` on the tuning seeds.
    """

    window_s: float = 1.6
    hop_s: float = 0.8
    edge_s: float = 0.2
    new_speaker_similarity: float = 0.75
    split_similarity: float = 0.7
    min_split_windows: int = 2
    change_context_windows: int = 3
    min_new_speaker_s: float = 2.5
    max_speakers: int = 8
    confidence_margin: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.hop_s <= self.window_s:
            raise SpeakerConfigError(f"need 0 < hop_s ({self.hop_s}) <= window_s ({self.window_s})")
        for name in ("edge_s", "min_new_speaker_s"):
            if getattr(self, name) < 0:
                raise SpeakerConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("new_speaker_similarity", "split_similarity"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise SpeakerConfigError(
                    f"{name} is a cosine similarity in [-1, 1], got {getattr(self, name)}"
                )
        for name in ("min_split_windows", "change_context_windows"):
            if getattr(self, name) < 1:
                raise SpeakerConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_speakers < 1:
            raise SpeakerConfigError(f"max_speakers must be >= 1, got {self.max_speakers}")
        if self.confidence_margin <= 0:
            raise SpeakerConfigError(f"confidence_margin must be > 0, got {self.confidence_margin}")


class WordSpeaker(NamedTuple):
    speaker: int
    confidence: float


@dataclass(frozen=True)
class Segment:
    """A run of windows [first, stop) given to one speaker, and the span its words take."""

    first: int
    stop: int
    speaker: int
    confidence: float
    new: bool
    start_s: float
    end_s: float


@dataclass
class _Speaker:
    total: Array64
    windows: int

    @property
    def centroid(self) -> Array64:
        norm = float(np.linalg.norm(self.total))
        result: Array64 = self.total / norm if norm > 0 else self.total
        return result


class OnlineSpeakers:
    """The pure state machine: window embeddings and word spans in, labels out (no audio)."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self._speakers: list[_Speaker] = []

    @property
    def speakers(self) -> int:
        """How many speakers have been found so far."""
        return len(self._speakers)

    def assign_windows(
        self,
        windows: WindowEmbeddings,
        offset_s: float,
        word_spans_s: Sequence[tuple[float, float]],
        *,
        commit: bool = True,
    ) -> list[WordSpeaker]:
        """(speaker, confidence) per word, from the embeddings of the utterance's windows.

        Window spans are relative to `offset_s` in the utterance; word spans are in it.
        """
        if not word_spans_s:
            return []
        if windows.embeddings.shape[0] == 0:
            raise SpeakerConfigError("words were given but no audio windows to label them by")
        spans = [(start + offset_s, end + offset_s) for start, end in windows.spans_s]
        segments = self.segments(windows.embeddings, spans, word_spans_s, commit=commit)
        return [self._word_label(segments, start, end) for start, end in word_spans_s]

    def segments(
        self,
        embeddings: Array32,
        spans_s: Sequence[tuple[float, float]],
        word_spans_s: Sequence[tuple[float, float]],
        *,
        commit: bool = True,
    ) -> list[Segment]:
        """Split the windows into talkers and give each a speaker (updating state if commit)."""
        emb = embeddings.astype(np.float64)
        runs, cuts = self._split(emb, spans_s)
        while len(runs) > 1:  # undo a change that leaves a side no speaker can take
            trial = [_Speaker(s.total.copy(), s.windows) for s in self._speakers]
            kinds = [kind for _, _, kind in self._decide(trial, emb, spans_s, runs)]
            if "short" not in kinds:
                break
            side = kinds.index("short")
            weaker = max(
                (c for c in (side - 1, side) if 0 <= c < len(cuts)), key=lambda c: cuts[c][1]
            )
            runs[weaker : weaker + 2] = [(runs[weaker][0], runs[weaker + 1][1])]
            del cuts[weaker]
        speakers = (
            self._speakers
            if commit
            else [_Speaker(s.total.copy(), s.windows) for s in self._speakers]
        )
        decisions = self._decide(speakers, emb, spans_s, runs)
        bounds = self._boundaries([time_s for time_s, _ in cuts], word_spans_s)
        segments: list[Segment] = []
        for (first, stop), (start_s, end_s), (speaker, confidence, kind) in zip(
            runs, bounds, decisions, strict=True
        ):
            new = kind == "new"
            if segments and segments[-1].speaker == speaker:
                merged = segments.pop()
                first, start_s = merged.first, merged.start_s
                confidence = min(confidence, merged.confidence)
                new = new or merged.new
            segments.append(Segment(first, stop, speaker, confidence, new, start_s, end_s))
        return segments

    def _decide(
        self,
        speakers: list[_Speaker],
        emb: Array64,
        spans_s: Sequence[tuple[float, float]],
        runs: Sequence[tuple[int, int]],
    ) -> list[tuple[int, float, str]]:
        """`_choose` for each run in order, leaving out windows that straddle a change."""
        mixed = {
            i
            for _, stop in runs[:-1]
            for i in range(stop - 1, -1, -1)
            if spans_s[i][1] > spans_s[stop][0] + 1e-6
        }
        decisions = []
        for first, stop in runs:
            clean = [i for i in range(first, stop) if i not in mixed] or list(range(first, stop))
            duration_s = spans_s[stop - 1][1] - spans_s[first][0]
            decisions.append(_choose(speakers, emb[clean], duration_s, self.config))
        return decisions

    def _split(
        self, emb: Array64, spans_s: Sequence[tuple[float, float]]
    ) -> tuple[list[tuple[int, int]], list[tuple[float, float]]]:
        """Runs of windows [first, stop) between the talker changes found, and each change's
        (time_s, similarity).

        A change "at k" puts window k first in its run; the windows that straddle it (those
        overlapping window k's start) go to the run before and are not compared.
        """
        n = emb.shape[0]
        least = self.config.min_split_windows
        context = self.config.change_context_windows
        similarity: dict[int, float] = {}
        straddle: dict[int, int] = {}
        for k in range(least, n - least + 1):
            ends_before = k
            while ends_before > 0 and spans_s[ends_before - 1][1] > spans_s[k][0] + 1e-6:
                ends_before -= 1
            if ends_before == 0:
                continue
            before = emb[max(0, ends_before - context) : ends_before].sum(axis=0)
            after = emb[k : k + context].sum(axis=0)
            norms = float(np.linalg.norm(before) * np.linalg.norm(after)) or 1.0
            similarity[k] = float(before @ after) / norms
            straddle[k] = ends_before
        cuts: list[int] = []
        for k in sorted(similarity, key=similarity.__getitem__):
            if similarity[k] >= self.config.split_similarity:
                break
            nearby = (similarity.get(j, math.inf) for j in range(k - context, k + context + 1))
            if similarity[k] <= min(nearby) and all(abs(k - cut) >= least for cut in cuts):
                cuts.append(k)
        cuts.sort()
        edges = [0, *cuts, n]
        changes = [((spans_s[straddle[k] - 1][1] + spans_s[k][0]) / 2, similarity[k]) for k in cuts]
        return list(itertools.pairwise(edges)), changes

    def _boundaries(
        self, times_s: Sequence[float], word_spans_s: Sequence[tuple[float, float]]
    ) -> list[tuple[float, float]]:
        """Each run's (start_s, end_s) for word assignment; the outer ends are unbounded."""
        gaps = _pauses(word_spans_s)
        cuts: list[float] = []
        for guess in times_s:
            near = [g for g in gaps if abs(g[0] - guess) <= self.config.hop_s]
            cuts.append(max(near, key=lambda g: g[1])[0] if near else guess)
        edges = [-math.inf, *cuts, math.inf]
        return list(itertools.pairwise(edges))

    def _word_label(self, segments: Sequence[Segment], start_s: float, end_s: float) -> WordSpeaker:
        mid = (start_s + end_s) / 2
        index = next((i for i, s in enumerate(segments) if mid < s.end_s), len(segments) - 1)
        segment = segments[index]
        confidence = segment.confidence
        distance = min(
            (abs(mid - edge) for edge in (segment.start_s, segment.end_s) if math.isfinite(edge)),
            default=math.inf,
        )
        if distance < self.config.hop_s:
            confidence *= 0.5 + 0.5 * distance / self.config.hop_s
        return WordSpeaker(segment.speaker, round(confidence, 3))


@dataclass
class SpeakerTracker:
    """One session's speaker labels: crops and embeds each final utterance, then assigns."""

    embedder: WindowEmbedder
    config: TrackerConfig = field(default_factory=TrackerConfig)

    def __post_init__(self) -> None:
        self.online = OnlineSpeakers(self.config)

    @property
    def speakers(self) -> int:
        """How many speakers have been found so far."""
        return self.online.speakers

    def assign(
        self,
        audio: Array32,
        word_spans_s: Sequence[tuple[float, float]],
        *,
        commit: bool = True,
    ) -> list[WordSpeaker]:
        """(speaker, confidence) for each word; spans are (start_s, end_s) in `audio`."""
        if not word_spans_s:
            return []
        duration_s = len(audio) / SAMPLE_RATE_HZ
        first_s = max(0.0, min(start for start, _ in word_spans_s) - self.config.edge_s)
        last_s = min(duration_s, max(end for _, end in word_spans_s) + self.config.edge_s)
        if last_s <= first_s:  # words outside the audio: use all of it
            first_s, last_s = 0.0, duration_s
        piece = audio[round(first_s * SAMPLE_RATE_HZ) : round(last_s * SAMPLE_RATE_HZ)]
        windows = self.embedder.embed_windows(
            piece, self.config.window_s, self.config.hop_s, fit_tail=True
        )
        return self.online.assign_windows(windows, first_s, word_spans_s, commit=commit)


def _pauses(word_spans_s: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """(midpoint, length) of each pause between consecutive words, in time order."""
    ordered = sorted(word_spans_s)
    return [
        ((a_end + b_start) / 2, b_start - a_end)
        for (_, a_end), (b_start, _) in itertools.pairwise(ordered)
        if b_start > a_end
    ]


def _choose(
    speakers: list[_Speaker], windows: Array64, duration_s: float, config: TrackerConfig
) -> tuple[int, float, str]:
    """(speaker, confidence, kind) for a segment's windows, updating `speakers`.

    kind: "match" (an existing speaker), "new" (founded one), "short" (too short to found
    one, given the most similar) or "full" (`max_speakers` reached, given the most similar).
    """
    total = windows.sum(axis=0)
    norm = float(np.linalg.norm(total))
    mean = total / norm if norm > 0 else total
    sims = np.array([float(mean @ s.centroid) for s in speakers])
    order = np.argsort(-sims)
    best = int(order[0]) if len(order) else -1
    best_sim = float(sims[best]) if best >= 0 else -1.0
    second = float(sims[order[1]]) if len(order) > 1 else -1.0
    threshold = config.new_speaker_similarity
    scale = 2 * config.confidence_margin
    kept = _clip(0.5 + (best_sim - max(second, threshold)) / scale)
    if best >= 0 and best_sim >= threshold:
        speakers[best].total += total
        speakers[best].windows += windows.shape[0]
        return best, kept, "match"
    if best >= 0 and duration_s < config.min_new_speaker_s:
        return best, kept, "short"
    if best >= 0 and len(speakers) >= config.max_speakers:
        return best, kept, "full"
    speakers.append(_Speaker(total.copy(), windows.shape[0]))
    return len(speakers) - 1, _clip(0.5 + (threshold - best_sim) / scale), "new"


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))
