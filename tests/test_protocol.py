"""Pure tests of the wire messages: query options, control frames, JSON events."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from server.protocol import (
    CloseStream,
    Error,
    Finalize,
    InvalidParameter,
    KeepAlive,
    Metadata,
    ModelInfo,
    ProtocolError,
    Results,
    SpeechStarted,
    UtteranceEnd,
    Word,
    parse_control,
    parse_options,
    to_json,
)

MODEL = ModelInfo(name="tiny.en", version="cpu-int8", arch="whisper", uuid="u-1")


def opts(query: dict[str, list[str]], multilingual: bool = False):  # type: ignore[no-untyped-def]
    languages = ["en", "fr", "de"] if multilingual else ["en"]
    return parse_options(query, languages=languages, multilingual=multilingual)


def test_defaults_mean_container_audio() -> None:
    o = opts({})
    assert o.encoding is None and o.sample_rate_hz == 16000 and o.channels == 1
    assert not o.interim_results and o.endpointing_ms is None and not o.endpointing_off


def test_sample_rate_implies_linear16() -> None:
    o = opts({"sample_rate": ["44100"], "channels": ["2"]})
    assert o.encoding == "linear16" and o.sample_rate_hz == 44100 and o.channels == 2


def test_known_parameters_parse() -> None:
    o = opts(
        {
            "encoding": ["linear16"],
            "interim_results": ["true"],
            "endpointing": ["300"],
            "utterance_end_ms": ["1500"],
            "vad_events": ["true"],
            "keyterm": ["Kubernetes", "gRPC"],
            "keywords": ["streamscribe:2"],
            "language": ["en-US"],
            "model": ["nova-3"],
            "punctuate": ["true"],
            "unknown": ["x"],
        }
    )
    assert o.interim_results and o.endpointing_ms == 300 and o.utterance_end_ms == 1500
    assert o.vad_events and o.language == "en" and o.model == "nova-3"
    assert o.keyterms == ("Kubernetes", "gRPC", "streamscribe")


def test_endpointing_false_turns_it_off() -> None:
    assert opts({"endpointing": ["false"]}).endpointing_off


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"encoding": ["opus"]}, "encoding"),
        ({"sample_rate": ["96000"]}, "sample_rate"),
        ({"sample_rate": ["abc"]}, "sample_rate"),
        ({"channels": ["0"]}, "channels"),
        ({"interim_results": ["yes please"]}, "interim_results"),
        ({"language": ["xx"]}, "language"),
        ({"language": ["auto"]}, "language"),
        ({"utterance_end_ms": ["999"]}, "utterance_end_ms"),
        ({"vad_events": ["2"]}, "vad_events"),
        ({"keyterm": ["x" * 501]}, "keyterm"),
    ],
)
def test_invalid_values_name_the_parameter(query: dict[str, list[str]], name: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        opts(query)
    assert info.value.name == name and info.value.message


def test_auto_language_on_multilingual_model() -> None:
    for name in ("auto", "multi"):
        detected = opts({"language": [name]}, multilingual=True)
        assert detected.language is None and detected.report_languages
    fixed = opts({"language": ["fr-CA"]}, multilingual=True)
    assert fixed.language == "fr" and not fixed.report_languages
    default = opts({}, multilingual=True)
    assert default.language is None and not default.report_languages


def test_task_parameter() -> None:
    assert opts({}).task == "transcribe"
    assert opts({"task": ["Translate"]}, multilingual=True).task == "translate"
    assert opts({"task": ["transcribe"]}).task == "transcribe"
    for query, multilingual in (({"task": ["translate"]}, False), ({"task": ["x"]}, True)):
        with pytest.raises(InvalidParameter) as info:
            opts(query, multilingual)
        assert info.value.name == "task" and info.value.message


def test_languages_only_where_asked_for() -> None:
    words = (Word("hallo", 1.3, 1.5, 0.97, "Hallo."),)
    plain = Results("r", MODEL, 1.0, 1.0, True, True, False, "Hallo.", 0.9, words)
    data = json.loads(to_json(plain))
    alt = data["channel"]["alternatives"][0]
    assert "languages" not in alt and "language" not in alt["words"][0]
    tagged = Results(
        "r",
        MODEL,
        1.0,
        1.0,
        True,
        True,
        False,
        "Hallo.",
        0.9,
        (Word("hallo", 1.3, 1.5, 0.97, "Hallo.", language="de"),),
        languages=("de",),
    )
    alt = json.loads(to_json(tagged))["channel"]["alternatives"][0]
    assert alt["languages"] == ["de"] and alt["words"][0]["language"] == "de"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type": "KeepAlive"}', KeepAlive()),
        ('{"type": "Finalize"}', Finalize()),
        ('{"type": "CloseStream", "extra": 1}', CloseStream()),
    ],
)
def test_control_messages(text: str, expected: object) -> None:
    assert parse_control(text) == expected


@pytest.mark.parametrize(
    "text", ["", "nope", "[]", "{}", '{"type": 3}', '{"type": "Configure"}', "[" * 100000]
)
def test_malformed_control_is_invalid_message(text: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_control(text)
    assert info.value.code == "INVALID_MESSAGE" and info.value.message


def test_results_json_has_every_required_field() -> None:
    message = Results(
        request_id="r",
        model=MODEL,
        start_s=1.23456,
        duration_s=2.0,
        is_final=True,
        speech_final=True,
        from_finalize=False,
        transcript="Ask not.",
        confidence=0.9,
        words=(Word("ask", 1.3, 1.5, 0.97, "Ask"), Word("not", 1.5, 1.9, 0.9, "not.")),
    )
    data = json.loads(to_json(message))
    assert data["type"] == "Results" and data["channel_index"] == [0, 1]
    assert data["start"] == 1.235 and data["duration"] == 2.0
    alt = data["channel"]["alternatives"][0]
    assert alt["transcript"] == "Ask not." and alt["words"][1]["punctuated_word"] == "not."
    assert data["metadata"]["model_uuid"] == "u-1"
    assert data["metadata"]["model_info"] == {
        "name": "tiny.en",
        "version": "cpu-int8",
        "arch": "whisper",
    }


def test_other_events_json() -> None:
    assert json.loads(to_json(SpeechStarted(3.4))) == {
        "type": "SpeechStarted",
        "channel": [0, 1],
        "timestamp": 3.4,
    }
    assert json.loads(to_json(UtteranceEnd(5.62)))["last_word_end"] == 5.62
    meta = json.loads(to_json(Metadata("r", datetime(2026, 1, 2, tzinfo=UTC), 12.3, 1, MODEL)))
    assert meta["transaction_key"] == "deprecated" and meta["models"] == ["tiny.en"]
    assert meta["created"] == "2026-01-02T00:00:00Z" and meta["duration"] == 12.3
    error = json.loads(to_json(Error("INVALID_AUDIO", "bad")))
    assert error == {"type": "Error", "code": "INVALID_AUDIO", "message": "bad"}
