"""Pure tests of the client output formats: SRT/VTT timestamps, cue splitting, speaker labels,
the writer."""

from __future__ import annotations

import html
import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from clients.formats import (
    MAX_CUE_LINES,
    MAX_LINE_CHARS,
    Cue,
    TranscriptWriter,
    cues_from_final,
    speaker_runs,
    srt_timestamp,
    text_lines,
    to_srt,
    to_vtt,
    vtt_timestamp,
)
from server.protocol import ModelInfo, Results, Word, from_json

MODEL = ModelInfo(name="tiny.en", version="cpu-int8", arch="whisper", uuid="u-1")


def final(start_s: float, duration_s: float, text: str, words: tuple[Word, ...] = ()) -> Results:
    return Results(
        request_id="r",
        model=MODEL,
        start_s=start_s,
        duration_s=duration_s,
        is_final=True,
        speech_final=True,
        from_finalize=False,
        transcript=text,
        confidence=0.9,
        words=words,
    )


def timed_words(
    text: str, start_s: float, step_s: float, speakers: list[int] | None = None
) -> tuple[Word, ...]:
    return tuple(
        Word(
            word=w.strip(",.").lower(),
            punctuated_word=w,
            start_s=start_s + i * step_s,
            end_s=start_s + (i + 1) * step_s,
            confidence=0.9,
            speaker=None if speakers is None else speakers[i],
            speaker_confidence=None if speakers is None else 0.8,
        )
        for i, w in enumerate(text.split())
    )


def spoken(text: str, start_s: float, speakers: list[int] | None, step_s: float = 0.5) -> Results:
    """A final of `text` spoken a word every `step_s`, each word with its speaker."""
    words = timed_words(text, start_s + 0.1, step_s, speakers)
    return final(start_s, step_s * len(words) + 0.2, text, words)


def test_timestamps() -> None:
    assert srt_timestamp(0) == "00:00:00,000"
    assert srt_timestamp(3.52) == "00:00:03,520"
    assert srt_timestamp(3725.0049) == "01:02:05,005"
    assert vtt_timestamp(61.5) == "00:01:01.500"
    assert vtt_timestamp(-0.2) == "00:00:00.000"


def test_srt_document() -> None:
    cues = [Cue(0.32, 2.5, "Ask not"), Cue(2.5, 4.0, "what your country can do for you.")]
    assert to_srt(cues) == (
        "1\n00:00:00,320 --> 00:00:02,500\nAsk not\n\n"
        "2\n00:00:02,500 --> 00:00:04,000\nwhat your country can do for you.\n\n"
    )


def test_vtt_document() -> None:
    assert to_vtt([Cue(1.0, 2.25, "Hello there.")]) == (
        "WEBVTT\n\n00:00:01.000 --> 00:00:02.250\nHello there.\n\n"
    )


def test_short_final_is_one_cue_spanning_start_and_duration() -> None:
    cues = cues_from_final(final(3.52, 2.1, " Ask not. "), offset_s=10.0)
    assert len(cues) == 1
    assert cues[0].text == "Ask not."
    assert abs(cues[0].start_s - 13.52) < 1e-9
    assert abs(cues[0].end_s - 15.62) < 1e-9


def test_empty_final_makes_no_cue() -> None:
    assert cues_from_final(final(0.0, 1.0, "  ")) == []


def test_long_final_split_at_words_tiles_its_span() -> None:
    text = " ".join(f"word{i}," for i in range(40))
    result = final(5.0, 20.0, text, timed_words(text, 5.2, 0.45))
    cues = cues_from_final(result)
    assert len(cues) > 1
    assert cues[0].start_s == 5.0
    assert cues[-1].end_s == 25.0
    for before, after in itertools.pairwise(cues):
        assert before.end_s == after.start_s
        assert before.start_s < before.end_s
    for cue in cues:
        lines = to_srt([cue]).split("\n")[2:-2]
        assert len(lines) <= MAX_CUE_LINES and all(len(line) <= MAX_LINE_CHARS for line in lines)
    assert " ".join(cue.text for cue in cues) == text


def test_vtt_cue_text_is_escaped_and_srt_is_not() -> None:
    text = "Use <b> & x > y --> done."
    vtt = to_vtt([Cue(0.0, 2.0, text)])
    assert vtt.endswith("\nUse &lt;b&gt; &amp; x &gt; y --&gt; done.\n\n")
    assert vtt.count("-->") == 1  # only the timing line's arrow
    assert to_srt([Cue(0.0, 2.0, text)]).endswith(f"\n{text}\n\n")


def test_vtt_lines_are_wrapped_by_what_a_viewer_sees() -> None:
    text = " & ".join("abcdefghij")  # 37 characters shown, 73 once escaped: still one line
    (line,) = to_vtt([Cue(0.0, 2.0, text)]).split("\n")[3:-2]
    assert html.unescape(line) == text


def test_srt_lines_are_wrapped() -> None:
    text = "and so my fellow Americans ask not what your country can do for you"
    srt = to_srt([Cue(0.0, 4.0, text)])
    lines = srt.split("\n")[2:-2]
    assert len(lines) == 2
    assert all(len(line) <= 42 for line in lines)


@given(
    starts=st.lists(st.floats(min_value=0, max_value=5000), min_size=1, max_size=20),
    texts=st.lists(st.text(alphabet="abc ,.", min_size=1, max_size=200), min_size=20, max_size=20),
)
def test_cues_never_run_backwards(starts: list[float], texts: list[str]) -> None:
    for start_s, text in zip(sorted(starts), texts, strict=False):
        words = timed_words(text, start_s, 0.3)
        for cue in cues_from_final(final(start_s, 0.3 * len(words) + 0.5, text, words)):
            assert cue.start_s <= cue.end_s
            assert cue.text.strip()


RAW_FINAL = json.dumps(
    {
        "type": "Results",
        "channel_index": [0, 1],
        "start": 1.0,
        "duration": 2.0,
        "is_final": True,
        "speech_final": True,
        "from_finalize": False,
        "channel": {"alternatives": [{"transcript": "Hello.", "confidence": 0.9, "words": []}]},
    }
)
RAW_INTERIM = RAW_FINAL.replace('"is_final": true', '"is_final": false')
RAW_METADATA = json.dumps(
    {"type": "Metadata", "request_id": "r", "duration": 3.0, "models": ["tiny.en"]}
)


def test_writer_formats() -> None:
    messages = [(from_json(raw), raw) for raw in (RAW_INTERIM, RAW_FINAL, RAW_METADATA)]

    def written(fmt: str, interim: bool = False, offset_s: float = 0.0) -> str:
        writer = TranscriptWriter(fmt, interim)  # type: ignore[arg-type]
        return writer.header() + "".join(writer.on_message(m, r, offset_s) for m, r in messages)

    assert written("text") == "Hello.\n"
    assert written("srt", offset_s=60.0) == "1\n00:01:01,000 --> 00:01:03,000\nHello.\n\n"
    assert written("vtt") == "WEBVTT\n\n00:00:01.000 --> 00:00:03.000\nHello.\n\n"
    json_lines = written("json").splitlines()
    assert [json.loads(line)["type"] for line in json_lines] == ["Results", "Metadata"]
    assert len(written("json", interim=True).splitlines()) == 3


# ------------------------------------------------------------------------------- speakers

TURNS = "Did you hear him? Ask not what your country can do for you. I did."
TURN_SPEAKERS = [0] * 4 + [1] * 9 + [0] * 2


def test_speaker_runs_are_consecutive_words_of_one_speaker() -> None:
    runs = speaker_runs(timed_words(TURNS, 0.0, 0.5, TURN_SPEAKERS))
    assert [(run[0].speaker, len(run)) for run in runs] == [(0, 4), (1, 9), (0, 2)]
    assert len(speaker_runs(timed_words(TURNS, 0.0, 0.5))) == 1


def test_text_writes_one_labelled_line_per_speaker_run() -> None:
    result = spoken(TURNS, 3.0, TURN_SPEAKERS)
    assert text_lines(result) == [
        "[Speaker 0] Did you hear him?",
        "[Speaker 1] Ask not what your country can do for you.",
        "[Speaker 0] I did.",
    ]
    writer = TranscriptWriter("text")
    assert writer.on_message(result, "") == "".join(line + "\n" for line in text_lines(result))
    one = spoken("Hello there.", 0.0, [2, 2])
    assert text_lines(one) == ["[Speaker 2] Hello there."]


def test_cues_are_cut_where_the_speaker_changes() -> None:
    result = spoken(TURNS, 3.0, TURN_SPEAKERS)
    cues = cues_from_final(result)
    assert [(c.speaker, c.text) for c in cues] == [
        (0, "Did you hear him?"),
        (1, "Ask not what your country can do for you."),
        (0, "I did."),
    ]
    # the final's span, tiled at the first word of each turn
    assert [(c.start_s, c.end_s) for c in cues] == [(3.0, 5.1), (5.1, 9.6), (9.6, 10.7)]


def test_srt_and_vtt_label_each_cue() -> None:
    cues = cues_from_final(spoken("Yes. <b>No</b> & maybe", 0.0, [0, 1, 1, 1]))
    assert to_srt(cues) == (
        "1\n00:00:00,000 --> 00:00:00,600\n[Speaker 0] Yes.\n\n"
        "2\n00:00:00,600 --> 00:00:02,200\n[Speaker 1] <b>No</b> & maybe\n\n"
    )
    assert to_vtt(cues) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:00.600\n<v Speaker 0>Yes.\n\n"
        "00:00:00.600 --> 00:00:02.200\n<v Speaker 1>&lt;b&gt;No&lt;/b&gt; &amp; maybe\n\n"
    )


def test_the_srt_tag_counts_in_the_line_length() -> None:
    text = "and so my fellow Americans ask not what your country can do for you, ask what"
    assert len(to_srt([Cue(0.0, 4.0, text)]).split("\n")[2:-2]) == 2, "two lines untagged"
    cues = cues_from_final(spoken(text, 0.0, [0] * len(text.split())))
    assert len(cues) == 2, "with '[Speaker 0] ' in front it needs three lines: two cues"
    for block in to_srt(cues).strip().split("\n\n"):
        lines = block.split("\n")[2:]
        assert lines[0].startswith("[Speaker 0] ") and len(lines) <= MAX_CUE_LINES, block
        assert all(len(line) <= MAX_LINE_CHARS for line in lines), block
    vtt = to_vtt(cues)
    assert vtt.count("<v Speaker 0>") == 2 and "[Speaker" not in vtt


def test_a_word_too_long_for_the_tag_line_starts_the_next_line() -> None:
    long_word = "x" * 35
    cues = cues_from_final(spoken(f"{long_word} a b c", 0.0, [1, 1, 1, 1]), max_lines=2)
    srt = to_srt(cues)
    assert srt.split("\n")[2:4] == ["[Speaker 1]", f"{long_word} a b c"]
    assert len(cues) == 1


def test_without_speakers_the_outputs_do_not_change() -> None:
    result = spoken(TURNS, 3.0, None)
    (cue,) = cues_from_final(result)
    assert cue == Cue(3.0, 10.7, TURNS)
    assert text_lines(result) == [TURNS]
    assert "Speaker" not in to_srt([cue]) + to_vtt([cue])


@given(
    words=st.lists(st.text(alphabet="abc<&", min_size=1, max_size=45), min_size=1, max_size=60),
    speakers=st.lists(st.sampled_from([0, 0, 1, 1, 12]), min_size=60, max_size=60),
)
def test_cues_never_mix_speakers_and_fit_their_lines(words: list[str], speakers: list[int]) -> None:
    text = " ".join(words)
    result = spoken(text, 1.0, speakers[: len(words)])
    cues = cues_from_final(result)
    assert " ".join(cue.text for cue in cues) == text
    expected = [w.speaker for w in result.words]
    at = 0
    for cue in cues:
        count = len(cue.text.split())
        assert set(expected[at : at + count]) == {cue.speaker}, "one speaker a cue"
        at += count
        lines = to_srt([cue]).split("\n")[2:-2]
        assert lines[0].startswith(f"[Speaker {cue.speaker}]")
        assert len(lines) <= MAX_CUE_LINES, lines
        assert all(len(line) <= MAX_LINE_CHARS or " " not in line for line in lines), lines
    for before, after in itertools.pairwise(cues):
        assert before.end_s == after.start_s
