"""The OpenAI audio API (`/v1/audio/transcriptions`, `/v1/audio/translations`), pure: the
form's fields checked (`parse_fields`), and the responses built from a file's finals:
json, text, srt, vtt, verbose_json (segments, and words on request) and the server-sent
events of `stream=true`.

Fields: `model` (any name; the loaded model answers), `language`, `prompt` (Whisper's
previous-text prompt, as key terms are passed: its first 64 tokens), `temperature` (only 0,
Whisper's decoding with temperature fallback, is supported), `response_format`,
`timestamp_granularities[]` (word, segment; verbose_json only), `stream` (json or text
only; transcriptions only), `keywords[]` (key terms). Fields that promise what the server
does not do (`include[]` logprobs, known speakers for diarization) are refused with 400
naming them; others are ignored.

One final is one segment. Segment times are its words' (first start, last end), or the
final's span when it has no words; the scores (`avg_logprob`, `no_speech_prob`,
`compression_ratio`, `temperature`) and `tokens` are the engine's own for that final.
WebVTT cue text is escaped (`&`, `<`, `>`); SRT has no escapes.
"""

from __future__ import annotations

import html
import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from server.files import FileSegment
from server.protocol import InvalidParameter

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
RESPONSE_FORMATS: tuple[ResponseFormat, ...] = ("json", "text", "srt", "vtt", "verbose_json")
_PUNCTUATION = string.punctuation + "“”‘’¿¡…"

# Whisper's language names (verbose_json names the language, as whisper-1 does).
_NAME_TABLE = (
    "en english zh chinese de german es spanish ru russian ko korean fr french ja japanese "
    "pt portuguese tr turkish pl polish ca catalan nl dutch ar arabic sv swedish it italian "
    "id indonesian hi hindi fi finnish vi vietnamese he hebrew uk ukrainian el greek ms malay "
    "cs czech ro romanian da danish hu hungarian ta tamil no norwegian th thai ur urdu "
    "hr croatian bg bulgarian lt lithuanian la latin mi maori ml malayalam cy welsh sk slovak "
    "te telugu fa persian lv latvian bn bengali sr serbian az azerbaijani sl slovenian "
    "kn kannada et estonian mk macedonian br breton eu basque is icelandic hy armenian "
    "ne nepali mn mongolian bs bosnian kk kazakh sq albanian sw swahili gl galician "
    "mr marathi pa punjabi si sinhala km khmer sn shona yo yoruba so somali af afrikaans "
    "oc occitan ka georgian be belarusian tg tajik sd sindhi gu gujarati am amharic "
    "yi yiddish lo lao uz uzbek fo faroese ht haitian_creole ps pashto tk turkmen nn nynorsk "
    "mt maltese sa sanskrit lb luxembourgish my myanmar bo tibetan tl tagalog mg malagasy "
    "as assamese tt tatar haw hawaiian ln lingala ha hausa ba bashkir jw javanese "
    "su sundanese yue cantonese"
)
_NAMES = _NAME_TABLE.split()
LANGUAGE_NAMES = {
    code: name.replace("_", " ") for code, name in zip(_NAMES[::2], _NAMES[1::2], strict=True)
}


MAX_PROMPT_CHARS = 500
_REFUSED_FIELDS = {
    "include": "logprobs are not returned by this server; remove include[]",
    "known_speaker_names": "speaker diarization is not implemented; remove known_speaker_names[]",
    "known_speaker_references": (
        "speaker diarization is not implemented; remove known_speaker_references[]"
    ),
}


@dataclass(frozen=True)
class AudioRequest:
    """The checked fields of one request."""

    task: str
    response_format: ResponseFormat = "json"
    language: str | None = None
    """As sent (validated against the model by the caller); None: the model's default."""
    prompt: str | None = None
    keywords: tuple[str, ...] = ()
    stream: bool = False
    with_segments: bool = True
    with_words: bool = False


def _values(fields: dict[str, list[str]], name: str) -> list[str]:
    """A field's values, sent as `name` or `name[]` (the OpenAI SDKs send arrays so)."""
    return [v for key in (name, name + "[]") for v in fields.get(key, ())]


def _one(fields: dict[str, list[str]], name: str) -> str | None:
    values = _values(fields, name)
    return values[-1].strip() if values else None


def parse_fields(fields: dict[str, list[str]], *, task: str) -> AudioRequest:
    """Check a form's fields; raise InvalidParameter naming the field at fault."""
    for name, why in _REFUSED_FIELDS.items():
        if any(v.strip() for v in _values(fields, name)):
            raise InvalidParameter(name, why)
    response_format = _one(fields, "response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise InvalidParameter(
            "response_format",
            f"{response_format[:40]!r} is not one of {', '.join(RESPONSE_FORMATS)}",
        )
    temperature = _one(fields, "temperature")
    if temperature:
        try:
            value = float(temperature)
        except ValueError:
            message = f"expected a number, got {temperature[:40]!r}"
            raise InvalidParameter("temperature", message) from None
        if value != 0.0:
            raise InvalidParameter(
                "temperature",
                "only 0 is supported: Whisper's decoding, raising the temperature by itself "
                "when a result looks wrong (what OpenAI does at 0)",
            )
    prompt = _one(fields, "prompt") or None
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidParameter("prompt", f"at most {MAX_PROMPT_CHARS} characters are supported")
    granularities = {v.strip() for v in _values(fields, "timestamp_granularities") if v.strip()}
    if granularities - {"word", "segment"}:
        raise InvalidParameter("timestamp_granularities[]", "expected word and/or segment")
    if granularities and response_format != "verbose_json":
        raise InvalidParameter(
            "timestamp_granularities[]", "timestamps need response_format=verbose_json"
        )
    stream = (_one(fields, "stream") or "false").lower()
    if stream not in ("true", "false"):
        raise InvalidParameter("stream", f"expected true or false, got {stream[:40]!r}")
    if stream == "true" and (task != "transcribe" or response_format not in ("json", "text")):
        raise InvalidParameter(
            "stream", "streaming is offered for transcriptions in json or text format only"
        )
    return AudioRequest(
        task=task,
        response_format=response_format,
        language=_one(fields, "language") or None,
        prompt=prompt,
        keywords=tuple(k.strip() for k in _values(fields, "keywords") if k.strip()),
        stream=stream == "true",
        with_segments=not granularities or "segment" in granularities,
        with_words="word" in granularities,
    )


@dataclass(frozen=True)
class Segment:
    id: int
    start_s: float
    end_s: float
    text: str
    tokens: tuple[int, ...]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: tuple[tuple[str, float, float], ...]
    """(word without surrounding punctuation, start, end)."""


def segments_of(finals: Sequence[FileSegment]) -> list[Segment]:
    out: list[Segment] = []
    for index, final in enumerate(finals):
        results, asr = final.results, final.asr
        words = tuple(
            (w.punctuated_word.strip(_PUNCTUATION) or w.punctuated_word, w.start_s, w.end_s)
            for w in results.words
        )
        start_s = words[0][1] if words else results.start_s
        end_s = words[-1][2] if words else results.start_s + results.duration_s
        out.append(
            Segment(
                id=index,
                start_s=start_s,
                end_s=end_s,
                text=results.transcript,
                tokens=tuple(t for w in asr.words for t in w.tokens),
                temperature=asr.temperature,
                avg_logprob=asr.avg_logprob,
                compression_ratio=asr.compression_ratio,
                no_speech_prob=asr.no_speech_prob,
                words=words,
            )
        )
    return out


def text_of(segments: Sequence[Segment]) -> str:
    return " ".join(s.text for s in segments)


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, code)


def _r(value: float) -> float:
    return round(value, 3)


def json_body(segments: Sequence[Segment], duration_s: float) -> dict[str, object]:
    return {"text": text_of(segments), "usage": {"type": "duration", "seconds": _r(duration_s)}}


def verbose_json(
    segments: Sequence[Segment],
    *,
    task: str,
    language: str,
    duration_s: float,
    with_segments: bool,
    with_words: bool,
) -> dict[str, object]:
    body: dict[str, object] = {
        "task": task,
        "language": language_name(language),
        "duration": _r(duration_s),
        "text": text_of(segments),
    }
    if with_segments:
        body["segments"] = [
            {
                "id": s.id,
                "seek": round(s.start_s * 100),
                "start": _r(s.start_s),
                "end": _r(s.end_s),
                "text": " " + s.text,
                "tokens": list(s.tokens),
                "temperature": s.temperature,
                "avg_logprob": _r(s.avg_logprob),
                "compression_ratio": _r(s.compression_ratio),
                "no_speech_prob": _r(s.no_speech_prob),
            }
            for s in segments
        ]
    if with_words:
        body["words"] = [
            {"word": word, "start": _r(start_s), "end": _r(end_s)}
            for s in segments
            for word, start_s, end_s in s.words
        ]
    body["usage"] = {"type": "duration", "seconds": _r(duration_s)}
    return body


def _clock(seconds: float, separator: str) -> str:
    total_ms = max(0, round(seconds * 1000))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt(segments: Sequence[Segment]) -> str:
    return "".join(
        f"{n}\n{_clock(s.start_s, ',')} --> {_clock(s.end_s, ',')}\n{s.text}\n\n"
        for n, s in enumerate(segments, start=1)
    )


def vtt(segments: Sequence[Segment]) -> str:
    cues = "".join(
        f"{_clock(s.start_s, '.')} --> {_clock(s.end_s, '.')}\n"
        f"{html.escape(s.text, quote=False)}\n\n"
        for s in segments
    )
    return "WEBVTT\n\n" + cues


def sse(event: dict[str, object]) -> bytes:
    """One server-sent event carrying `event` as its JSON data."""
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


def delta_event(text: str) -> bytes:
    return sse({"type": "transcript.text.delta", "delta": text})


def done_event(text: str) -> bytes:
    return sse({"type": "transcript.text.done", "text": text})


def error_event(message: str, kind: str = "server_error") -> bytes:
    """What the OpenAI SDK raises as an APIError when it arrives mid-stream."""
    return sse({"type": "error", "error": {"message": message, "type": kind}})
