"""Transcript output formats (text, JSON lines, SRT, WebVTT) built from final results (pure).

Cue timings come from each final's `start`/`duration` (stream time, so cues tile the speech
without overlapping); a long final is split into several cues at word boundaries using the
word timings, so no subtitle shows more than two lines of 42 characters (a single word
longer than a line excepted). WebVTT cue text is escaped (`&`, `<`, `>`), so a transcript's
"<" or "-->" cannot open a tag or end a cue early; SRT has no escapes and gets the text as
it is. clients/web/formats.js exports the page's transcript the same way.

Speakers (diarize=true, every word carries `speaker`): a final is first cut into runs of
consecutive words with one speaker, and no cue spans two runs. Text writes one line per run,
`[Speaker N] text`; SRT prefixes the cue text with `[Speaker N] ` (counted in the line
lengths); WebVTT opens the cue text with the voice span `<v Speaker N>`. N is the server's
speaker number. Without speakers every output is as before.
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from server.protocol import DecodedMessage, Metadata, Results, Word

OutputFormat = Literal["text", "json", "srt", "vtt"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("text", "json", "srt", "vtt")

MAX_LINE_CHARS = 42
MAX_CUE_LINES = 2
VTT_HEADER = "WEBVTT\n\n"


@dataclass(frozen=True)
class Cue:
    """One subtitle: text shown from `start_s` to `end_s` (seconds)."""

    start_s: float
    end_s: float
    text: str
    speaker: int | None = None
    """Who speaks the whole cue (diarize=true), else None."""


def speaker_name(speaker: int) -> str:
    """`Speaker N`: the WebVTT voice name, and inside brackets the SRT/text label."""
    return f"Speaker {speaker}"


def speaker_tag(speaker: int | None) -> str:
    """`[Speaker N]` (or "" without a speaker), the prefix of SRT cues and text lines."""
    return "" if speaker is None else f"[{speaker_name(speaker)}]"


def _labelled(speaker: int | None, text: str) -> str:
    tag = speaker_tag(speaker)
    return f"{tag} {text}" if tag else text


def _clock(seconds: float, separator: str) -> str:
    total_ms = max(0, round(seconds * 1000))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt_timestamp(seconds: float) -> str:
    """`HH:MM:SS,mmm` as SRT writes it."""
    return _clock(seconds, ",")


def vtt_timestamp(seconds: float) -> str:
    """`HH:MM:SS.mmm` as WebVTT writes it."""
    return _clock(seconds, ".")


def _wrap(text: str) -> list[str]:
    """Greedy lines of at most MAX_LINE_CHARS, broken at spaces only (a longer word keeps a
    line of its own); clients/web/formats.js wraps the same way."""
    return textwrap.wrap(text, MAX_LINE_CHARS, break_long_words=False, break_on_hyphens=False)


def _group_words(words: Sequence[Word], max_lines: int, tag_chars: int = 0) -> list[list[Word]]:
    """Consecutive words in runs whose text, after a `tag_chars`-long speaker tag when there
    is one, wraps (as `_wrap` does) into at most `max_lines`."""
    groups: list[list[Word]] = []
    current: list[Word] = []
    lines = line_chars = 0
    for word in words:
        chars = len(word.punctuated_word)
        if current and line_chars + 1 + chars <= MAX_LINE_CHARS:
            line_chars += 1 + chars  # same line
        elif current and lines < max_lines:
            lines, line_chars = lines + 1, chars  # next line of this cue
        else:
            if current:
                groups.append(current)
            current, lines, line_chars = [], 1, chars  # first line of a new cue
            if tag_chars and tag_chars + 1 + chars <= MAX_LINE_CHARS:
                line_chars += tag_chars + 1  # after the tag
            elif tag_chars:
                lines += 1  # the tag has the first line to itself
        current.append(word)
    if current:
        groups.append(current)
    return groups


def speaker_runs(words: Sequence[Word]) -> list[list[Word]]:
    """Consecutive words with the same `speaker` (one run when no word has one)."""
    runs: list[list[Word]] = []
    for word in words:
        if runs and runs[-1][-1].speaker == word.speaker:
            runs[-1].append(word)
        else:
            runs.append([word])
    return runs


def _run_text(run: Sequence[Word]) -> str:
    return " ".join(w.punctuated_word for w in run)


def cues_from_final(
    final: Results, offset_s: float = 0.0, max_lines: int = MAX_CUE_LINES
) -> list[Cue]:
    """The cues of one final result, shifted by `offset_s` (empty for an empty transcript).

    Cues never span two speakers; each one fits `max_lines` with its speaker tag.
    """
    text = final.transcript.strip()
    if not text:
        return []
    start_s = offset_s + final.start_s
    end_s = max(start_s, start_s + final.duration_s)
    runs = speaker_runs(final.words)
    if len(runs) <= 1:
        speaker = runs[0][0].speaker if runs else None
        if len(_wrap(_labelled(speaker, text))) <= max_lines or not runs:
            return [Cue(start_s, end_s, text, speaker)]
    groups = [
        group
        for run in runs
        for group in _group_words(run, max_lines, len(speaker_tag(run[0].speaker)))
    ]
    starts = [start_s]
    for group in groups[1:]:
        word_start_s = min(max(offset_s + group[0].start_s, starts[-1]), end_s)
        starts.append(word_start_s)
    ends = [*starts[1:], end_s]
    return [
        Cue(cue_start, cue_end, _run_text(group), group[0].speaker)
        for cue_start, cue_end, group in zip(starts, ends, groups, strict=True)
    ]


def text_lines(final: Results) -> list[str]:
    """A final as transcript lines: its text, or with speakers one `[Speaker N] text` line
    per run (none for an empty transcript)."""
    text = final.transcript.strip()
    if not text:
        return []
    runs = speaker_runs(final.words)
    if len(runs) <= 1:
        return [_labelled(runs[0][0].speaker if runs else None, text)]
    return [_labelled(run[0].speaker, _run_text(run)) for run in runs]


def _wrapped(text: str) -> str:
    return "\n".join(_wrap(text)) or text


def srt_cue(index: int, cue: Cue) -> str:
    """One numbered SRT block, ending with a blank line."""
    timing = f"{srt_timestamp(cue.start_s)} --> {srt_timestamp(cue.end_s)}"
    return f"{index}\n{timing}\n{_wrapped(_labelled(cue.speaker, cue.text))}\n\n"


def vtt_text(text: str) -> str:
    """Cue text as WebVTT needs it: wrapped, then `&`, `<` and `>` as character references."""
    return html.escape(_wrapped(text), quote=False)


def vtt_cue(cue: Cue) -> str:
    """One WebVTT cue block, ending with a blank line."""
    timing = f"{vtt_timestamp(cue.start_s)} --> {vtt_timestamp(cue.end_s)}"
    voice = "" if cue.speaker is None else f"<v {speaker_name(cue.speaker)}>"
    return f"{timing}\n{voice}{vtt_text(cue.text)}\n\n"


def to_srt(cues: Iterable[Cue]) -> str:
    """A whole SRT document."""
    return "".join(srt_cue(i, cue) for i, cue in enumerate(cues, start=1))


def to_vtt(cues: Iterable[Cue]) -> str:
    """A whole WebVTT document."""
    return VTT_HEADER + "".join(vtt_cue(cue) for cue in cues)


class TranscriptWriter:
    """Turns server messages into output text for one format, incrementally.

    `header()` is written first, `on_message()` for every message as it arrives (it returns
    the text to append, often ""), so a transcript file is complete up to the last final
    even if the client is interrupted. `offset_s` shifts stream time, for clients that
    reconnect and start a new stream at 0.
    """

    def __init__(self, output_format: OutputFormat, include_interim: bool = False) -> None:
        self.output_format = output_format
        self.include_interim = include_interim
        self._cue_count = 0

    def header(self) -> str:
        return VTT_HEADER if self.output_format == "vtt" else ""

    def on_message(self, message: DecodedMessage, raw: str, offset_s: float = 0.0) -> str:
        if self.output_format == "json":
            wanted = isinstance(message, Metadata) or (
                isinstance(message, Results) and (message.is_final or self.include_interim)
            )
            return raw.strip() + "\n" if wanted else ""
        if not isinstance(message, Results) or not message.is_final:
            return ""
        if self.output_format == "text":
            return "".join(line + "\n" for line in text_lines(message))
        out: list[str] = []
        for cue in cues_from_final(message, offset_s):
            self._cue_count += 1
            if self.output_format == "srt":
                out.append(srt_cue(self._cue_count, cue))
            else:
                out.append(vtt_cue(cue))
        return "".join(out)
