"""Turn WhisperLive's repeated segment lists into captions: finals, interims and settle times.

The peer sends, in every message, its last completed segments (never revised) plus at most
one segment in progress. This pure tracker dedupes them: a completed segment becomes one
final the first time it is seen; an in-progress segment becomes an interim whenever its
text changes; and each final records when its text last changed before completion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.metrics_calc import Caption


@dataclass(frozen=True)
class PeerSegment:
    """One entry of a peer message's `segments` list."""

    start_s: float
    end_s: float
    text: str
    completed: bool


def parse_segments(message: Mapping[str, object]) -> list[PeerSegment] | None:
    """The segments of a peer message, or None when the message carries none."""
    raw = message.get("segments")
    if not isinstance(raw, list):
        return None
    segments: list[PeerSegment] = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        try:
            segments.append(
                PeerSegment(
                    start_s=float(item["start"]),
                    end_s=float(item["end"]),
                    text=str(item.get("text", "")),
                    completed=bool(item.get("completed", False)),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return segments


def _key(seconds: float) -> int:
    return round(seconds * 1000)


class PeerTranscript:
    """Accumulates one peer session's messages into captions."""

    def __init__(self) -> None:
        self._finals: dict[tuple[int, int], Caption] = {}
        self._interims: list[Caption] = []
        # in-progress segment start (ms) -> (text, wall time that text first appeared)
        self._pending: dict[int, tuple[str, float]] = {}
        self._last_pending: tuple[int, str] | None = None

    def observe(self, arrival_wall_s: float, segments: Sequence[PeerSegment]) -> None:
        """Take one message's segments, received at `arrival_wall_s`."""
        for seg in segments:
            start_key = _key(seg.start_s)
            if seg.completed:
                key = (start_key, _key(seg.end_s))
                if key in self._finals:
                    continue
                pending = self._pending.get(start_key)
                settled = (
                    pending[1]
                    if pending is not None and pending[0].strip() == seg.text.strip()
                    else arrival_wall_s
                )
                self._finals[key] = Caption(
                    arrival_wall_s=arrival_wall_s,
                    start_stream_s=seg.start_s,
                    end_stream_s=seg.end_s,
                    text=seg.text,
                    is_final=True,
                    settled_wall_s=settled,
                )
                continue
            if self._last_pending == (start_key, seg.text):
                continue
            self._last_pending = (start_key, seg.text)
            previous = self._pending.get(start_key)
            if previous is None or previous[0] != seg.text:
                self._pending[start_key] = (seg.text, arrival_wall_s)
            if seg.text.strip():
                self._interims.append(
                    Caption(
                        arrival_wall_s=arrival_wall_s,
                        start_stream_s=seg.start_s,
                        end_stream_s=seg.end_s,
                        text=seg.text,
                        is_final=False,
                    )
                )

    @property
    def finals(self) -> list[Caption]:
        """Completed segments in stream order."""
        return sorted(self._finals.values(), key=lambda c: c.start_stream_s)

    @property
    def interims(self) -> list[Caption]:
        """Every change of the in-progress segment, in arrival order."""
        return list(self._interims)

    @property
    def pending_text(self) -> str:
        """The in-progress text last seen (what a final flush would still have to deliver)."""
        if self._last_pending is None:
            return ""
        start_key, text = self._last_pending
        if any(k[0] == start_key for k in self._finals):
            return ""
        return text
