"""Wire messages of /v1/listen (docs/protocol.md) as frozen dataclasses: options, control
frames, events; `to_json` encodes an event, `from_json` decodes one (for clients); no I/O.

Errors, all ValueError:
    ProtocolError     a client text frame we cannot honour (carries the Error code to send)
    InvalidParameter  a bad query parameter, refused at the handshake with HTTP 400
    MessageError      a server text frame that is not a protocol message (client side)
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args
from urllib.parse import parse_qs, urlsplit

SAMPLE_RATE_HZ = 16_000
MIN_INPUT_RATE_HZ = 8_000
MAX_INPUT_RATE_HZ = 48_000
MIN_UTTERANCE_END_MS = 1_000
G711_RATE_HZ = 8_000

Encoding = Literal["linear16", "mulaw", "alaw"]
Task = Literal["transcribe", "translate"]
_TASKS: dict[str, Task] = {"transcribe": "transcribe", "translate": "translate"}
_ENCODINGS: dict[str, Encoding] = {
    "linear16": "linear16",
    "pcm_s16le": "linear16",
    "mulaw": "mulaw",
    "ulaw": "mulaw",
    "alaw": "alaw",
}
# Parameters that promise to remove, alter or add to what is said, which this server does
# not do: honouring them silently in the breach would leak what a client asked to hide.
UNSUPPORTED_PROMISES: dict[str, str] = {
    "redact": "redaction is not implemented; remove the parameter or redact client-side",
    "replace": "find-and-replace is not implemented",
    "profanity_filter": "the profanity filter is not implemented",
    "search": "search is not implemented",
    "multichannel": "channels are mixed to one transcript; send one stream per channel",
    "callback": "callbacks are not implemented; read the results from the connection",
    "detect_entities": "entity detection is not implemented",
    "sentiment": "sentiment analysis is not implemented",
    "summarize": "summaries are not implemented",
    "topics": "topic detection is not implemented",
    "intents": "intent recognition is not implemented",
}
_FALSE_VALUES = frozenset({"", "false", "0", "no", "off"})

ErrorCode = Literal[
    "INVALID_MESSAGE",
    "INVALID_AUDIO",
    "IDLE_TIMEOUT",
    "OVERLOADED",
    "SESSION_LIMIT",
    "SHUTTING_DOWN",
    "INTERNAL",
    "SESSION_TOO_LONG",
    "RATE_LIMITED",
    "SLOW_CLIENT",
]


class ProtocolError(ValueError):
    """A client text frame that cannot be honoured; carries the Error code to send."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message


class InvalidParameter(ValueError):
    """A query parameter with an invalid value (HTTP 400 at the handshake)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


class MessageError(ValueError):
    """A server text frame that is not a protocol message (not JSON, or no `type`)."""


# ---------------------------------------------------------------- stream options


@dataclass(frozen=True)
class StreamOptions:
    """What a client asked for in the `/v1/listen` query string."""

    encoding: Encoding | None = "linear16"
    """None means containerized audio (WAV, Ogg, WebM, ...), decoded by the server."""
    sample_rate_hz: int = SAMPLE_RATE_HZ
    channels: int = 1
    language: str | None = None
    """None: detected per utterance (a multilingual model's default, and `multi`/`auto`)."""
    report_languages: bool = False
    """`language=multi`/`auto`: results name the languages heard (`languages`, per word)."""
    task: Task = "transcribe"
    """translate: English text whatever is spoken (multilingual models only)."""
    interim_results: bool = False
    endpointing_ms: int | None = None
    """None: the server's default; see `endpointing_off`."""
    endpointing_off: bool = False
    utterance_end_ms: int | None = None
    vad_events: bool = False
    keyterms: tuple[str, ...] = ()
    model: str | None = None
    diarize: bool = False


def _one(query: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    return values[-1]


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"true", "1"}:
        return True
    if value in {"false", "0"}:
        return False
    raise InvalidParameter(name, f"expected true or false, got {raw!r}")


def _parse_int(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise InvalidParameter(name, f"expected an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise InvalidParameter(name, f"must be between {low} and {high}, got {value}")
    return value


def normalize_language(tag: str) -> str:
    """`en-US` style tags map to their primary subtag; `auto` stays `auto`."""
    return tag.strip().lower().replace("_", "-").split("-")[0]


def parse_options(
    query: Mapping[str, Sequence[str]], *, languages: Sequence[str], multilingual: bool
) -> StreamOptions:
    """Validate the known parameters; unknown ones are ignored as Deepgram does."""
    refuse_unsupported_promises(query)
    encoding_raw = _one(query, "encoding")
    rate_raw = _one(query, "sample_rate")
    encoding: Encoding | None
    if encoding_raw is None:
        encoding = "linear16" if rate_raw is not None else None
    elif encoding_raw.strip().lower() in _ENCODINGS:
        encoding = _ENCODINGS[encoding_raw.strip().lower()]
    else:
        raise InvalidParameter(
            "encoding",
            f"unsupported encoding {encoding_raw!r}: use linear16 (raw 16-bit PCM), mulaw or "
            "alaw (G.711) with sample_rate, or omit encoding and send a container (WAV, "
            "Ogg/Opus, WebM/Opus)",
        )
    # G.711 is 8 kHz by definition; telephony bridges say so, but not all of them.
    sample_rate = G711_RATE_HZ if encoding in ("mulaw", "alaw") else SAMPLE_RATE_HZ
    if rate_raw is not None:
        sample_rate = _parse_int("sample_rate", rate_raw, MIN_INPUT_RATE_HZ, MAX_INPUT_RATE_HZ)
    channels = 1
    if (raw := _one(query, "channels")) is not None:
        channels = _parse_int("channels", raw, 1, 2)

    language: str | None = None
    report_languages = False
    if (raw := _one(query, "language")) is not None and raw.strip():
        language = normalize_language(raw)
        if language == "auto" or language == "multi":
            if not multilingual:
                raise InvalidParameter(
                    "language", "automatic language detection needs a multilingual model"
                )
            language = None
            report_languages = True
        elif language not in languages:
            shown = ", ".join(sorted(languages)[:12])
            raise InvalidParameter(
                "language", f"{raw!r} is not supported by the loaded model (supported: {shown})"
            )

    task: Task = "transcribe"
    if (raw := _one(query, "task")) is not None:
        if raw.strip().lower() not in _TASKS:
            raise InvalidParameter("task", f"expected transcribe or translate, got {raw!r}")
        task = _TASKS[raw.strip().lower()]
        if task == "translate" and not multilingual:
            raise InvalidParameter(
                "task", "translation needs a multilingual model (this one is English-only)"
            )

    interim = False
    if (raw := _one(query, "interim_results")) is not None:
        interim = _parse_bool("interim_results", raw)

    endpointing_ms: int | None = None
    endpointing_off = False
    if (raw := _one(query, "endpointing")) is not None:
        if raw.strip().lower() == "false":
            endpointing_off = True
        elif raw.strip().lower() == "true":
            endpointing_ms = None
        else:
            endpointing_ms = _parse_int("endpointing", raw, 10, 60_000)

    utterance_end_ms: int | None = None
    if (raw := _one(query, "utterance_end_ms")) is not None:
        utterance_end_ms = _parse_int("utterance_end_ms", raw, MIN_UTTERANCE_END_MS, 60_000)

    vad_events = False
    if (raw := _one(query, "vad_events")) is not None:
        vad_events = _parse_bool("vad_events", raw)

    terms: list[str] = [t.strip() for t in query.get("keyterm", ()) if t.strip()]
    for keyword in query.get("keywords", ()):
        word = keyword.rsplit(":", 1)[0] if ":" in keyword else keyword
        if word.strip():
            terms.append(word.strip())
    if sum(len(t) for t in terms) > 500:
        raise InvalidParameter("keyterm", "key terms may total at most 500 characters")

    diarize = False
    if (raw := _one(query, "diarize")) is not None:
        diarize = _parse_bool("diarize", raw)

    model = _one(query, "model")
    return StreamOptions(
        encoding=encoding,
        sample_rate_hz=sample_rate,
        channels=channels,
        language=language,
        report_languages=report_languages,
        task=task,
        interim_results=interim,
        endpointing_ms=endpointing_ms,
        endpointing_off=endpointing_off,
        utterance_end_ms=utterance_end_ms,
        vad_events=vad_events,
        keyterms=tuple(dict.fromkeys(terms)),
        model=model.strip() if model else None,
        diarize=diarize,
    )


def refuse_unsupported_promises(query: Mapping[str, Sequence[str]]) -> None:
    """Raise InvalidParameter for a parameter whose promise this server cannot keep."""
    for name, why in UNSUPPORTED_PROMISES.items():
        for value in query.get(name, ()):
            if value.strip().lower() not in _FALSE_VALUES:
                raise InvalidParameter(name, why)


def query_of(target: str) -> Mapping[str, Sequence[str]]:
    """The query parameters of a request target such as `/v1/listen?encoding=linear16`."""
    return parse_qs(urlsplit(target).query, keep_blank_values=True)


# ---------------------------------------------------------------- client control frames


@dataclass(frozen=True)
class KeepAlive:
    pass


@dataclass(frozen=True)
class Finalize:
    pass


@dataclass(frozen=True)
class CloseStream:
    pass


ControlMessage = KeepAlive | Finalize | CloseStream
_CONTROL_TYPES: dict[str, ControlMessage] = {
    "KeepAlive": KeepAlive(),
    "Finalize": Finalize(),
    "CloseStream": CloseStream(),
}


def parse_control(text: str) -> ControlMessage:
    """Parse a client text frame; raise ProtocolError(INVALID_MESSAGE) with a helpful message."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError(
            "INVALID_MESSAGE",
            'text frames must be JSON such as {"type": "KeepAlive"}; audio goes in binary frames',
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError(
            "INVALID_MESSAGE", 'a control message needs a string "type" field, e.g. "Finalize"'
        )
    kind = data["type"]
    message = _CONTROL_TYPES.get(kind)
    if message is None:
        raise ProtocolError(
            "INVALID_MESSAGE",
            f"unknown message type {kind[:40]!r}; expected KeepAlive, Finalize or CloseStream",
        )
    return message


# ---------------------------------------------------------------- server events


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    arch: str
    uuid: str


@dataclass(frozen=True)
class Word:
    word: str
    start_s: float
    end_s: float
    confidence: float
    punctuated_word: str
    speaker: int | None = None
    """With diarize=true: the talker, 0, 1, ... stable for the session."""
    speaker_confidence: float | None = None
    language: str | None = None
    """Sent only when not None (`language=multi`/`auto` streams)."""


@dataclass(frozen=True)
class Results:
    request_id: str
    model: ModelInfo
    start_s: float
    duration_s: float
    is_final: bool
    speech_final: bool
    from_finalize: bool
    transcript: str
    confidence: float
    words: tuple[Word, ...]
    languages: tuple[str, ...] | None = None
    """The languages heard, most words first; sent only when not None."""


@dataclass(frozen=True)
class SpeechStarted:
    timestamp_s: float


@dataclass(frozen=True)
class UtteranceEnd:
    last_word_end_s: float


@dataclass(frozen=True)
class Metadata:
    request_id: str
    created: datetime
    duration_s: float
    channels: int
    model: ModelInfo


@dataclass(frozen=True)
class Error:
    code: ErrorCode
    message: str


ServerMessage = Results | SpeechStarted | UtteranceEnd | Metadata | Error


def _r(value: float, digits: int = 3) -> float:
    return round(value, digits) if math.isfinite(value) else 0.0


def word_json(word: Word) -> dict[str, object]:
    """A word as Results and the pre-recorded response encode it."""
    data: dict[str, object] = {
        "word": word.word,
        "start": _r(word.start_s),
        "end": _r(word.end_s),
        "confidence": _r(word.confidence, 4),
        "punctuated_word": word.punctuated_word,
    }
    if word.speaker is not None:
        data["speaker"] = word.speaker
        data["speaker_confidence"] = _r(word.speaker_confidence or 0.0, 3)
    if word.language is not None:
        data["language"] = word.language
    return data


def to_json(message: ServerMessage) -> str:
    """Encode a server event as the JSON text frame docs/protocol.md describes."""
    data: dict[str, object]
    if isinstance(message, Results):
        data = {
            "type": "Results",
            "channel_index": [0, 1],
            "start": _r(message.start_s),
            "duration": _r(message.duration_s),
            "is_final": message.is_final,
            "speech_final": message.speech_final,
            "from_finalize": message.from_finalize,
            "channel": {
                "alternatives": [
                    {
                        "transcript": message.transcript,
                        "confidence": _r(message.confidence, 4),
                        "words": [word_json(w) for w in message.words],
                        **({} if message.languages is None else {"languages": message.languages}),
                    }
                ]
            },
            "metadata": {
                "request_id": message.request_id,
                "model_uuid": message.model.uuid,
                "model_info": {
                    "name": message.model.name,
                    "version": message.model.version,
                    "arch": message.model.arch,
                },
            },
        }
    elif isinstance(message, SpeechStarted):
        data = {"type": "SpeechStarted", "channel": [0, 1], "timestamp": _r(message.timestamp_s)}
    elif isinstance(message, UtteranceEnd):
        data = {
            "type": "UtteranceEnd",
            "channel": [0, 1],
            "last_word_end": _r(message.last_word_end_s),
        }
    elif isinstance(message, Metadata):
        data = {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": message.request_id,
            "sha256": "",
            "created": message.created.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "duration": _r(message.duration_s),
            "channels": message.channels,
            "models": [message.model.name],
            "model_info": {
                message.model.uuid: {
                    "name": message.model.name,
                    "version": message.model.version,
                    "arch": message.model.arch,
                }
            },
        }
    else:
        data = {"type": "Error", "code": message.code, "message": message.message}
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


# ---------------------------------------------------------------- decoding server events


@dataclass(frozen=True)
class OtherMessage:
    """A server message `from_json` does not interpret: an unknown type, or an Error whose
    code is not one of ours. `raw` is the whole frame, so nothing is lost."""

    type: str
    raw: str


DecodedMessage = ServerMessage | OtherMessage


def from_json(text: str) -> DecodedMessage:
    """Decode a server text frame (ours or Deepgram's): the inverse of `to_json`.

    Fields this protocol does not know are ignored and missing ones read as empty (zero,
    "", False), so frames from Deepgram itself decode too. Raise `MessageError` when the
    frame is not a JSON object with a string `type`.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MessageError(f"server sent a text frame that is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise MessageError("server sent a JSON message without a string 'type'")
    kind: str = data["type"]
    if kind == "Results":
        return _results(data)
    if kind == "Metadata":
        return _metadata(data)
    if kind == "SpeechStarted":
        return SpeechStarted(timestamp_s=_number(data, "timestamp"))
    if kind == "UtteranceEnd":
        return UtteranceEnd(last_word_end_s=_number(data, "last_word_end"))
    if kind == "Error" and data.get("code") in _ERROR_CODES:
        return Error(code=data["code"], message=_text(data, "message"))
    return OtherMessage(type=kind, raw=text)


_ERROR_CODES: frozenset[str] = frozenset(get_args(ErrorCode))


def _object(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _text(data: Mapping[str, Any], key: str, default: str = "") -> str:
    value = data.get(key)
    return value if isinstance(value, str) else default


def _number(data: Mapping[str, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


def _flag(data: Mapping[str, Any], key: str) -> bool:
    return data.get(key) is True


def _integer(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _model_info(uuid: str, info: Mapping[str, Any], name: str = "") -> ModelInfo:
    return ModelInfo(
        name=_text(info, "name", name),
        version=_text(info, "version"),
        arch=_text(info, "arch"),
        uuid=uuid,
    )


def _words(raw: object) -> tuple[Word, ...]:
    items = raw if isinstance(raw, list) else []
    return tuple(
        Word(
            word=_text(item, "word"),
            start_s=_number(item, "start"),
            end_s=_number(item, "end"),
            confidence=_number(item, "confidence"),
            punctuated_word=_text(item, "punctuated_word", _text(item, "word")),
            speaker=_integer(item, "speaker"),
            speaker_confidence=(
                _number(item, "speaker_confidence") if "speaker_confidence" in item else None
            ),
            language=_text(item, "language") or None,
        )
        for item in items
        if isinstance(item, dict)
    )


def _results(data: Mapping[str, Any]) -> Results:
    alternatives = _object(data, "channel").get("alternatives")
    best: Mapping[str, Any] = {}
    if isinstance(alternatives, list) and alternatives and isinstance(alternatives[0], dict):
        best = alternatives[0]
    metadata = _object(data, "metadata")
    return Results(
        request_id=_text(metadata, "request_id"),
        model=_model_info(_text(metadata, "model_uuid"), _object(metadata, "model_info")),
        start_s=_number(data, "start"),
        duration_s=_number(data, "duration"),
        is_final=_flag(data, "is_final"),
        speech_final=_flag(data, "speech_final"),
        from_finalize=_flag(data, "from_finalize"),
        transcript=_text(best, "transcript"),
        confidence=_number(best, "confidence"),
        words=_words(best.get("words")),
        languages=_languages(best.get("languages")),
    )


def _languages(raw: object) -> tuple[str, ...] | None:
    if not isinstance(raw, list):
        return None
    return tuple(code for code in raw if isinstance(code, str))


def _created(raw: object) -> datetime:
    """An ISO 8601 time; a missing or unreadable one reads as the Unix epoch."""
    if isinstance(raw, str):
        with contextlib.suppress(ValueError):
            created = datetime.fromisoformat(raw)
            return created if created.tzinfo is not None else created.replace(tzinfo=UTC)
    return datetime.fromtimestamp(0, UTC)


def _metadata(data: Mapping[str, Any]) -> Metadata:
    models = data.get("models")
    first_model = models[0] if isinstance(models, list) and models else ""
    infos = _object(data, "model_info")
    uuid, info = next(iter(infos.items()), ("", {}))
    return Metadata(
        request_id=_text(data, "request_id"),
        created=_created(data.get("created")),
        duration_s=_number(data, "duration"),
        channels=_integer(data, "channels") or 1,
        model=_model_info(uuid, info if isinstance(info, dict) else {}, str(first_model)),
    )
