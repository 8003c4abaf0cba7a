"""Server-to-client messages of PROTOCOL.md parsed into frozen dataclasses (pure, no I/O).

Errors: `MessageError` (a text frame that is not a JSON object with a `type`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class MessageError(ValueError):
    """A server text frame that is not a protocol message."""


@dataclass(frozen=True)
class Word:
    """One word of a final, with its stream-time span in seconds."""

    word: str
    punctuated_word: str
    start_s: float
    end_s: float
    confidence: float


@dataclass(frozen=True)
class Results:
    """A `Results` message: interim (`is_final` false) or final text for a stretch of audio."""

    start_s: float
    duration_s: float
    is_final: bool
    speech_final: bool
    from_finalize: bool
    transcript: str
    confidence: float
    words: tuple[Word, ...]
    languages: tuple[str, ...] = ()
    """The languages heard, most words first (sent for `language=multi` streams)."""

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


@dataclass(frozen=True)
class Metadata:
    """The `Metadata` message the server sends last before it closes."""

    request_id: str
    duration_s: float
    models: tuple[str, ...]


@dataclass(frozen=True)
class ErrorMessage:
    """The `Error` extension message: a code and a sentence a person can act on."""

    code: str
    message: str


@dataclass(frozen=True)
class SpeechStarted:
    """`SpeechStarted` (sent with `vad_events=true`)."""

    timestamp_s: float


@dataclass(frozen=True)
class UtteranceEnd:
    """`UtteranceEnd` (sent with `utterance_end_ms`)."""

    last_word_end_s: float


@dataclass(frozen=True)
class OtherMessage:
    """Any message type this client does not interpret; kept so nothing is silently lost."""

    type: str


ServerMessage = Results | Metadata | ErrorMessage | SpeechStarted | UtteranceEnd | OtherMessage


def _number(value: Any, default: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def _words(raw: Any) -> tuple[Word, ...]:
    if not isinstance(raw, list):
        return ()
    words: list[Word] = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        word = str(item.get("word", ""))
        words.append(
            Word(
                word=word,
                punctuated_word=str(item.get("punctuated_word", word)),
                start_s=_number(item.get("start")),
                end_s=_number(item.get("end")),
                confidence=_number(item.get("confidence")),
            )
        )
    return tuple(words)


def _languages(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list):
        return ()
    return tuple(str(code) for code in raw if isinstance(code, str))


def _results(data: dict[str, Any]) -> Results:
    channel = data.get("channel")
    alternatives = channel.get("alternatives") if isinstance(channel, dict) else None
    best: dict[str, Any] = {}
    if isinstance(alternatives, list) and alternatives and isinstance(alternatives[0], dict):
        best = alternatives[0]
    return Results(
        start_s=_number(data.get("start")),
        duration_s=_number(data.get("duration")),
        is_final=bool(data.get("is_final", False)),
        speech_final=bool(data.get("speech_final", False)),
        from_finalize=bool(data.get("from_finalize", False)),
        transcript=str(best.get("transcript", "")),
        confidence=_number(best.get("confidence")),
        words=_words(best.get("words")),
        languages=_languages(best.get("languages")),
    )


def parse_message(text: str) -> ServerMessage:
    """Parse one server text frame; raise `MessageError` if it is not a protocol message."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MessageError(f"server sent a text frame that is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise MessageError("server sent a JSON message without a string 'type'")
    kind: str = data["type"]
    if kind == "Results":
        return _results(data)
    if kind == "Metadata":
        models = data.get("models")
        return Metadata(
            request_id=str(data.get("request_id", "")),
            duration_s=_number(data.get("duration")),
            models=tuple(str(m) for m in models) if isinstance(models, list) else (),
        )
    if kind == "Error":
        return ErrorMessage(
            code=str(data.get("code", "UNKNOWN")), message=str(data.get("message", ""))
        )
    if kind == "SpeechStarted":
        return SpeechStarted(timestamp_s=_number(data.get("timestamp")))
    if kind == "UtteranceEnd":
        return UtteranceEnd(last_word_end_s=_number(data.get("last_word_end")))
    return OtherMessage(type=kind)
