"""The REST APIs' pure parts: OpenAI form fields and response formats, Deepgram's
pre-recorded JSON, and the streaming multipart form reader."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from deepgram.types.listen_v1response import ListenV1Response
from openai.types.audio import TranscriptionVerbose

from server import openai_audio, prerecorded
from server.files import FileSegment
from server.protocol import InvalidParameter, ModelInfo, Results, Word
from server.transcription import AsrResult, AsrWord
from server.uploads import MAX_FIELD_BYTES, FormCollector, UploadError

MODEL = ModelInfo("tiny.en", "cpu-int8", "whisper", "u")


def final(start_s: float, text: str) -> FileSegment:
    words = tuple(
        Word(w.strip(".,").lower(), start_s + i * 0.5, start_s + i * 0.5 + 0.4, 0.9, w)
        for i, w in enumerate(text.split())
    )
    results = Results(
        "r", MODEL, start_s, 0.5 * len(words) + 0.3, True, True, False, text, 0.9, words
    )
    asr_words = tuple(AsrWord(" " + w, 0.0, 0.0, 0.9, (i,)) for i, w in enumerate(text.split()))
    return FileSegment(results, AsrResult(text, asr_words, avg_logprob=-0.2, temperature=0.0))


FINALS = [final(0.3, "Ask not what"), final(3.0, "your country <can> do.")]


def test_verbose_json_has_segments_and_words_as_the_sdk_parses_them() -> None:
    segments = openai_audio.segments_of(FINALS)
    body = openai_audio.verbose_json(
        segments,
        task="transcribe",
        language="en",
        duration_s=5.0,
        with_segments=True,
        with_words=True,
    )
    parsed = TranscriptionVerbose.model_validate(body)
    assert parsed.language == "english" and parsed.text == "Ask not what your country <can> do."
    assert parsed.segments is not None and [s.tokens for s in parsed.segments] == [
        [0, 1, 2],
        [0, 1, 2, 3],
    ]
    assert parsed.words is not None and [w.word for w in parsed.words][-2:] == ["can", "do"]
    assert parsed.segments[0].start == 0.3 and parsed.segments[0].end == pytest.approx(1.7)


def test_srt_and_vtt_cues() -> None:
    segments = openai_audio.segments_of(FINALS)
    assert openai_audio.srt(segments).startswith(
        "1\n00:00:00,300 --> 00:00:01,700\nAsk not what\n\n2\n"
    )
    vtt = openai_audio.vtt(segments)
    assert vtt.startswith("WEBVTT\n\n00:00:00.300 --> 00:00:01.700\nAsk not what\n\n")
    assert "your country &lt;can&gt; do." in vtt, "cue text is escaped"


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"temperature": ["0.4"]}, "temperature"),
        ({"temperature": ["warm"]}, "temperature"),
        ({"response_format": ["docx"]}, "response_format"),
        ({"timestamp_granularities[]": ["word"]}, "timestamp_granularities[]"),
        ({"response_format": ["srt"], "stream": ["true"]}, "stream"),
        ({"include[]": ["logprobs"]}, "include"),
        ({"known_speaker_names[]": ["Ann"]}, "known_speaker_names"),
        ({"prompt": ["x" * 501]}, "prompt"),
    ],
)
def test_fields_that_cannot_be_honoured_are_refused_by_name(
    fields: dict[str, list[str]], name: str
) -> None:
    with pytest.raises(InvalidParameter) as caught:
        openai_audio.parse_fields(fields, task="transcribe")
    assert caught.value.name == name


def test_fields_as_the_sdk_sends_them() -> None:
    request = openai_audio.parse_fields(
        {
            "model": ["whisper-1"],
            "temperature": ["0"],
            "response_format": ["verbose_json"],
            "timestamp_granularities[]": ["word"],
            "keywords[]": ["Kennedy"],
            "prompt": ["An inaugural address."],
        },
        task="transcribe",
    )
    assert request.with_words and not request.with_segments
    assert request.keywords == ("Kennedy",) and request.prompt == "An inaugural address."


def test_stream_is_for_transcriptions_only() -> None:
    assert openai_audio.parse_fields({"stream": ["true"]}, task="transcribe").stream
    with pytest.raises(InvalidParameter):
        openai_audio.parse_fields({"stream": ["true"]}, task="translate")


def test_server_sent_events() -> None:
    assert (
        openai_audio.delta_event("Ask")
        == b'data: {"type": "transcript.text.delta", "delta": "Ask"}\n\n'
    )
    assert openai_audio.done_event("Ask not.").startswith(b'data: {"type": "transcript.text.done"')


def test_deepgram_prerecorded_json_as_the_sdk_parses_it() -> None:
    body = prerecorded.response(
        request_id="r",
        created=datetime(2026, 1, 2, tzinfo=UTC),
        duration_s=5.0,
        channels=1,
        model=MODEL,
        sha256="ab",
        finals=[f.results for f in FINALS],
        utterances=True,
    )
    parsed = ListenV1Response.model_validate(body)
    (channel,) = parsed.results.channels
    assert channel.alternatives is not None
    assert channel.alternatives[0].transcript == "Ask not what your country <can> do."
    assert channel.alternatives[0].words is not None and len(channel.alternatives[0].words) == 7
    assert parsed.results.utterances is not None and len(parsed.results.utterances) == 2
    assert parsed.metadata.model_info == {
        "u": {"name": "tiny.en", "version": "cpu-int8", "arch": "whisper"}
    }
    no_utterances = prerecorded.response(
        request_id="r",
        created=datetime.now(UTC),
        duration_s=0.0,
        channels=1,
        model=MODEL,
        sha256="",
        finals=[],
        utterances=False,
    )
    assert "utterances" not in no_utterances["results"]  # type: ignore[operator]


def form(*parts: tuple[str, str | None, bytes], boundary: bytes = b"xyz") -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n"
        body += data + b"\r\n"
    return body + b"--" + boundary + b"--\r\n"


def collect(body: bytes, piece: int = 7) -> FormCollector:
    collector = FormCollector(b"xyz", "file", limit_bytes=1 << 20)
    for start in range(0, len(body), piece):
        collector.write(body[start : start + piece])
    return collector


def test_multipart_form_in_small_pieces() -> None:
    audio = bytes(range(256)) * 40
    collector = collect(
        form(
            ("model", None, b"whisper-1"),
            ("file", "a.wav", audio),
            ("x[]", None, b"1"),
            ("x[]", None, b"2"),
        )
    )
    assert collector.ended
    spool = collector.form.file
    assert (
        spool is not None and spool.size_bytes == len(audio) and collector.form.filename == "a.wav"
    )
    spool.rewind()
    assert spool.file.read() == audio
    assert collector.form.one("model") == "whisper-1" and collector.form.fields["x[]"] == ["1", "2"]


def test_multipart_limits() -> None:
    with pytest.raises(UploadError) as caught:
        collect(form(("prompt", None, b"x" * (MAX_FIELD_BYTES + 1))), piece=4096)
    assert (caught.value.status, caught.value.field) == (400, "prompt")
    with pytest.raises(UploadError, match="more than one 'file'"):
        collect(form(("file", "a", b"1"), ("file", "b", b"2")))
    assert not collect(form(("file", "a", b"1"))[:-8]).ended, "a body cut short is seen"
