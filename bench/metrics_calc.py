"""Pure benchmark arithmetic: latencies from send/arrival times, WER, lost utterances, capacity.

Times named `*_wall_s` are `time.monotonic()` seconds on the benchmark's clock; times named
`*_stream_s` are seconds of stream time (0 is the first sample a client sent).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

import jiwer
from whisper_normalizer.english import EnglishTextNormalizer


@dataclass(frozen=True)
class Caption:
    """One piece of text a server sent: an interim or a final, with its stream-time span."""

    arrival_wall_s: float
    start_stream_s: float
    end_stream_s: float
    text: str
    is_final: bool
    # When the text of this final stopped changing (peer: its in-progress text); None = arrival.
    settled_wall_s: float | None = None
    words: tuple[Span, ...] = ()  # each word's stream-time span, where the server sent them


@dataclass(frozen=True)
class Span:
    """A stretch of stream time, e.g. one reference utterance or one file's speech."""

    start_stream_s: float
    end_stream_s: float


class SendLog:
    """When each chunk's last sample was sent, to map stream time to the wall clock."""

    def __init__(self) -> None:
        self._end_stream_s: list[float] = []
        self._sent_wall_s: list[float] = []

    def record(self, end_stream_s: float, sent_wall_s: float) -> None:
        """Log that audio up to `end_stream_s` had been handed to the socket at `sent_wall_s`."""
        if self._end_stream_s and end_stream_s < self._end_stream_s[-1]:
            raise ValueError("chunks must be recorded in stream order")
        self._end_stream_s.append(end_stream_s)
        self._sent_wall_s.append(sent_wall_s)

    def __len__(self) -> int:
        return len(self._end_stream_s)

    @property
    def sent_stream_s(self) -> float:
        """Stream seconds sent so far."""
        return self._end_stream_s[-1] if self._end_stream_s else 0.0

    def wall_time_sent(self, stream_s: float, tolerance_s: float = 1e-3) -> float:
        """Wall time at which the sample at `stream_s` had been sent (the chunk holding it).

        A time past the last chunk (a span end rounded up) maps to the last chunk.
        """
        if not self._end_stream_s:
            raise ValueError("nothing was sent")
        index = bisect.bisect_left(self._end_stream_s, stream_s - tolerance_s)
        index = min(index, len(self._end_stream_s) - 1)
        return self._sent_wall_s[index]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def final_latencies_s(captions: Iterable[Caption], send_log: SendLog) -> list[float]:
    """Arrival of each non-empty final minus the wall time its span's last sample was sent."""
    return [
        c.arrival_wall_s - send_log.wall_time_sent(c.end_stream_s)
        for c in captions
        if c.is_final and c.text.strip()
    ]


def settled_latencies_s(captions: Iterable[Caption], send_log: SendLog) -> list[float]:
    """Like `final_latencies_s`, but from when each final's text last changed."""
    return [
        (c.arrival_wall_s if c.settled_wall_s is None else c.settled_wall_s)
        - send_log.wall_time_sent(c.end_stream_s)
        for c in captions
        if c.is_final and c.text.strip()
    ]


def speech_end_stream_s(end_stream_s: float, utterances: Sequence[Span]) -> float:
    """Where the speech a span ends in really stopped: a span ending in silence is pulled
    back to the last reference utterance's end; a span cut mid-speech keeps its own end."""
    before = [u for u in utterances if u.start_stream_s < end_stream_s]
    if not before:
        return end_stream_s
    return min(end_stream_s, max(u.end_stream_s for u in before))


def speech_end_latencies_s(
    captions: Iterable[Caption], utterances: Sequence[Span], send_log: SendLog
) -> list[float]:
    """Arrival of each non-empty final minus when the last speech in its span was sent.

    Comparable across servers whatever their endpointing: the wait for trailing silence
    counts here, while `final_latencies_s` starts at the span's end.
    """
    return [
        c.arrival_wall_s - send_log.wall_time_sent(speech_end_stream_s(c.end_stream_s, utterances))
        for c in captions
        if c.is_final and c.text.strip()
    ]


def _overlaps(caption: Caption, span: Span) -> bool:
    return caption.start_stream_s < span.end_stream_s and caption.end_stream_s > span.start_stream_s


def caption_delays_s(
    utterances: Sequence[Span], captions: Sequence[Caption], send_log: SendLog
) -> tuple[list[float], int]:
    """Per utterance: first non-empty text overlapping it minus when its first sample was sent.

    Returns the delays and the number of utterances that no text ever covered. Utterances
    that were not completely sent (a cut-short stream) are skipped.
    """
    by_arrival = sorted((c for c in captions if c.text.strip()), key=lambda c: c.arrival_wall_s)
    delays: list[float] = []
    uncovered = 0
    for utterance in utterances:
        if utterance.end_stream_s > send_log.sent_stream_s + 1e-6:
            continue
        first = next((c for c in by_arrival if _overlaps(c, utterance)), None)
        if first is None:
            uncovered += 1
            continue
        delays.append(first.arrival_wall_s - send_log.wall_time_sent(utterance.start_stream_s))
    return delays, uncovered


def lost_spans(spans: Sequence[Span], captions: Iterable[Caption]) -> int:
    """How many spans (one per reference file) no non-empty final overlaps."""
    finals = [c for c in captions if c.is_final and c.text.strip()]
    return sum(1 for span in spans if not any(_overlaps(c, span) for c in finals))


def transcript(captions: Iterable[Caption]) -> str:
    """The finals' text in stream order, joined with spaces."""
    finals = sorted(
        (c for c in captions if c.is_final and c.text.strip()), key=lambda c: c.start_stream_s
    )
    return " ".join(c.text.strip() for c in finals)


@cache
def _normalizer() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


def normalise(text: str) -> str:
    """Lower case, no punctuation, fillers dropped, spellings standardised (Whisper's rules)."""
    result: str = _normalizer()(text)
    return " ".join(result.split())


@dataclass(frozen=True)
class WerResult:
    """Corpus word error rate: errors over all reference words of all pairs."""

    wer: float
    errors: int
    reference_words: int


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str]) -> WerResult:
    """WER over pairs of (reference, hypothesis) texts, both normalised first."""
    if len(references) != len(hypotheses):
        raise ValueError("one hypothesis per reference is needed")
    refs = [normalise(r) for r in references]
    hyps = [normalise(h) for h in hypotheses]
    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    if not pairs:
        raise ValueError("the references are empty after normalisation")
    output = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
    errors = int(output.substitutions + output.deletions + output.insertions)
    words = sum(len(r.split()) for r, _ in pairs)
    return WerResult(wer=errors / words, errors=errors, reference_words=words)


@dataclass(frozen=True)
class CapacityRule:
    """What a load level must meet to count as served."""

    max_final_p95_s: float = 1.5
    max_wer_over_offline: float = 0.01
    allow_refusals: bool = False


@dataclass(frozen=True)
class LevelResult:
    """The numbers that decide whether one target served N streams."""

    streams: int
    final_p95_s: float | None
    wer: float | None
    offline_wer: float
    refusals: int


def meets(level: LevelResult, rule: CapacityRule) -> bool:
    """True when the level is within the latency bound and the WER margin (and refused no one)."""
    if level.final_p95_s is None or level.wer is None:
        return False
    if level.refusals and not rule.allow_refusals:
        return False
    return (
        level.final_p95_s <= rule.max_final_p95_s
        and level.wer <= level.offline_wer + rule.max_wer_over_offline + 1e-9
    )


def capacity(levels: Iterable[LevelResult], rule: CapacityRule) -> int:
    """The largest stream count that meets the rule; 0 when none does."""
    return max((level.streams for level in levels if meets(level, rule)), default=0)
