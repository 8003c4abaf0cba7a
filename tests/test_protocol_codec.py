"""Decoding server events: from_json inverts to_json, and reads Deepgram's own frames."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.protocol import (
    Error,
    ErrorCode,
    MessageError,
    Metadata,
    ModelInfo,
    OtherMessage,
    Results,
    ServerMessage,
    SpeechStarted,
    UtteranceEnd,
    Word,
    from_json,
    to_json,
)

# to_json writes times to the millisecond and confidences to 1e-4: draw values it keeps.
SECONDS = st.integers(0, 10**8).map(lambda n: n / 1000)
CONFIDENCES = st.integers(0, 10**4).map(lambda n: n / 10**4)
TEXTS = st.text(max_size=20)
MODELS = st.builds(ModelInfo, name=TEXTS, version=TEXTS, arch=TEXTS, uuid=TEXTS)
SPEAKERS = st.one_of(  # to_json writes a speaker's confidence (to 1e-3) only with it
    st.just((None, None)),
    st.tuples(st.integers(0, 9), st.integers(0, 1000).map(lambda n: n / 1000)),
)
WORDS = st.builds(
    lambda word, start_s, end_s, confidence, punctuated_word, speaker: Word(
        word, start_s, end_s, confidence, punctuated_word, *speaker
    ),
    TEXTS,
    SECONDS,
    SECONDS,
    CONFIDENCES,
    TEXTS,
    SPEAKERS,
)
MESSAGES: st.SearchStrategy[ServerMessage] = st.one_of(
    st.builds(
        Results,
        request_id=TEXTS,
        model=MODELS,
        start_s=SECONDS,
        duration_s=SECONDS,
        is_final=st.booleans(),
        speech_final=st.booleans(),
        from_finalize=st.booleans(),
        transcript=TEXTS,
        confidence=CONFIDENCES,
        words=st.lists(WORDS, max_size=4).map(tuple),
    ),
    st.builds(SpeechStarted, timestamp_s=SECONDS),
    st.builds(UtteranceEnd, last_word_end_s=SECONDS),
    st.builds(
        Metadata,
        request_id=TEXTS,
        created=st.datetimes(timezones=st.just(UTC)),
        duration_s=SECONDS,
        channels=st.integers(1, 2),
        model=MODELS,
    ),
    st.builds(Error, code=st.sampled_from(get_args(ErrorCode)), message=TEXTS),
)


@given(MESSAGES)
def test_from_json_inverts_to_json(message: ServerMessage) -> None:
    assert from_json(to_json(message)) == message


def test_a_deepgram_results_frame_with_fields_we_do_not_send_decodes() -> None:
    frame = {
        "type": "Results",
        "channel_index": [0, 1],
        "duration": 1.5,
        "start": 4.25,
        "is_final": True,
        "speech_final": False,
        "from_finalize": False,
        "channel": {
            "alternatives": [
                {
                    "transcript": "Good morning.",
                    "confidence": 0.98,
                    "languages": ["en"],
                    "words": [
                        {"word": "good", "start": 4.3, "end": 4.6, "confidence": 0.99,
                         "punctuated_word": "Good", "speaker": 0, "speaker_confidence": 0.8,
                         "language": "en"},
                        {"word": "morning", "start": 4.6, "end": 5.1, "confidence": 0.97},
                    ],
                },
                {"transcript": "good mourning", "confidence": 0.4, "words": []},
            ],
            "detected_language": "en",
        },
        "metadata": {
            "request_id": "req-7",
            "model_info": {"name": "2-general-nova", "version": "2024-01", "arch": "nova-2"},
            "model_uuid": "uuid-9",
            "extra": {"tag": "x"},
        },
        "entities": [],
    }  # fmt: skip
    decoded = from_json(json.dumps(frame))
    assert decoded == Results(
        request_id="req-7",
        model=ModelInfo(name="2-general-nova", version="2024-01", arch="nova-2", uuid="uuid-9"),
        start_s=4.25,
        duration_s=1.5,
        is_final=True,
        speech_final=False,
        from_finalize=False,
        transcript="Good morning.",
        confidence=0.98,
        words=(
            Word("good", 4.3, 4.6, 0.99, "Good", speaker=0, speaker_confidence=0.8, language="en"),
            Word("morning", 4.6, 5.1, 0.97, "morning"),  # no punctuated_word: the word
        ),
        languages=("en",),
    )


def test_a_deepgram_metadata_frame_names_the_model_from_model_info() -> None:
    frame = {
        "type": "Metadata",
        "transaction_key": "deprecated",
        "request_id": "req-7",
        "sha256": "ab" * 32,
        "created": "2025-03-04T05:06:07.890Z",
        "duration": 12.5,
        "channels": 1,
        "models": ["uuid-9"],
        "model_info": {"uuid-9": {"name": "2-general-nova", "version": "v", "arch": "nova-2"}},
    }
    decoded = from_json(json.dumps(frame))
    assert decoded == Metadata(
        request_id="req-7",
        created=datetime(2025, 3, 4, 5, 6, 7, 890_000, tzinfo=UTC),
        duration_s=12.5,
        channels=1,
        model=ModelInfo(name="2-general-nova", version="v", arch="nova-2", uuid="uuid-9"),
    )


def test_missing_fields_read_as_empty() -> None:
    results = from_json('{"type":"Results","is_final":true,"channel":{"alternatives":[]}}')
    assert isinstance(results, Results) and results.is_final and results.transcript == ""
    assert results.words == () and results.model == ModelInfo("", "", "", "")
    metadata = from_json('{"type":"Metadata","created":"yesterday","channels":"two"}')
    assert isinstance(metadata, Metadata) and metadata.channels == 1
    assert metadata.created == datetime.fromtimestamp(0, UTC)


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"Warning","description":"slow down"}',
        '{"type":"Error","code":"DATA-0000","message":"not ours"}',
        '{"type":"Error"}',
    ],
)
def test_what_it_does_not_interpret_is_kept_whole(text: str) -> None:
    decoded = from_json(text)
    assert decoded == OtherMessage(type=json.loads(text)["type"], raw=text)


@pytest.mark.parametrize(
    ("text", "needle"),
    [("{nope", "not JSON"), ("[1, 2]", "type"), ('{"type": 3}', "type"), ("[" * 100_000, "JSON")],
)
def test_frames_that_are_no_message_raise_message_error(text: str, needle: str) -> None:
    with pytest.raises(MessageError, match=needle):
        from_json(text)
