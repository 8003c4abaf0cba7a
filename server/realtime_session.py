"""The OpenAI Realtime transcription session, pure: client events in, server events and
transcription actions out. It wraps the same `Session` as the Deepgram live path.

Client events: `session.update` (GA shape: `session.audio.input.{format, transcription,
turn_detection, noise_reduction}`), `transcription_session.update` (the beta's flat shape),
`input_audio_buffer.append` (base64 audio: `audio/pcm` PCM16 at 24 kHz, or G.711
`audio/pcmu` / `audio/pcma` at 8 kHz), `.commit` and `.clear`. Anything else, or a bad
value, gets an `error` event and the session goes on.

Turns. With server VAD (the default) the Session's VAD decides them: its SpeechStarted is
`input_audio_buffer.speech_started`; when an utterance closes (endpointing, or the maximum
length) the server sends `speech_stopped` and `committed`, and that utterance is one item.
A stretch the VAD drops (a click) is an item too, whose transcript is empty. With
`turn_detection: null` the client's `commit` decides: everything since the previous commit
is one item (utterances cut at the maximum length included). A `commit` with server VAD
closes the open utterance as an item at once. `clear` drops what is not committed yet.

Transcripts: each final of an item is a `conversation.item.input_audio_transcription.delta`
(append-only: only final text, never revised), and once all of the item's finals are in,
`.completed` carries the whole transcript; items complete in order. When a transcription
fails, every unfinished item gets `.failed`, then `error`, and the session closes.

Settings that change how audio is processed (format, turn detection, language, prompt) are
applied only between turns: with no utterance open, no item pending and (without VAD) no
uncommitted audio; otherwise the update is refused with an `error`. `session.updated`
always shows the settings in effect. `noise_reduction` stays null: the server has none, and
an update that asks for it is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from websockets.frames import CloseCode

from server.audio import PcmDecoder
from server.protocol import (
    SAMPLE_RATE_HZ,
    Error,
    ErrorCode,
    Finalize,
    InvalidParameter,
    ModelInfo,
    Results,
    SpeechStarted,
    parse_options,
)
from server.session import Action as SessionAction
from server.session import Cancel, Close, Promote, Send, Session, SessionConfig, Transcribe
from server.transcription import AsrResult
from vad.base import SpeechClassifier
from vad.segmenter import SegmenterConfig

AudioFormat = Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
_FORMATS: dict[str, tuple[str, int]] = {
    "audio/pcm": ("linear16", 24_000),
    "audio/pcmu": ("mulaw", 8_000),
    "audio/pcma": ("alaw", 8_000),
}
_BETA_FORMATS: dict[str, AudioFormat] = {
    "pcm16": "audio/pcm",
    "g711_ulaw": "audio/pcmu",
    "g711_alaw": "audio/pcma",
}
MIN_COMMIT_S = 0.1
"""A commit needs this much audio since the previous one (as OpenAI's server asks)."""
_TIME_EPSILON_S = 1e-6


@dataclass(frozen=True)
class Emit:
    """A server event to send."""

    event: dict[str, object]


RealtimeAction = Emit | Transcribe | Promote | Cancel | Close


class RealtimeError(ValueError):
    """A client event that cannot be honoured: answered with an `error` event."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True)
class RealtimeSettings:
    """The session's configuration, as `session.updated` shows it."""

    format: AudioFormat = "audio/pcm"
    language: str | None = None
    prompt: str | None = None
    keywords: tuple[str, ...] = ()
    server_vad: bool = True
    silence_duration_ms: int | None = None
    """None: the server's endpointing (adaptive)."""
    prefix_padding_ms: int | None = None
    """None: the server's pre-roll."""


@dataclass
class _Item:
    id: str
    previous_id: str | None
    through: int
    """Utterances closed when the item was committed: it is complete once they are all in."""
    start_s: float
    end_s: float
    dropped: bool = False
    texts: list[str] = field(default_factory=list)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:22]}"


class RealtimeSession:
    """One Realtime transcription session; every method returns the actions to carry out."""

    def __init__(
        self,
        *,
        request_id: str,
        model: ModelInfo,
        config: SessionConfig,
        classifier_factory: Callable[[], SpeechClassifier],
        languages: Sequence[str],
        multilingual: bool,
    ) -> None:
        self.request_id = request_id
        self.session_id = new_id("sess")
        self._model = model
        self._config = config
        self._classifier_factory = classifier_factory
        self._languages = tuple(languages)
        self._multilingual = multilingual
        self.settings = RealtimeSettings()
        self._offset_s = 0.0  # stream time of the sessions before the current one
        self._items: deque[_Item] = deque()
        self._early: list[str] = []  # finals released before their item was committed
        self._next_item = new_id("item")
        self._last_item: str | None = None
        self._last_end_s = 0.0
        self._speaking = False
        self._closes_seen = 0
        self._uncommitted_s = 0.0
        self._session, self._decoder = self._build(self.settings)

    # ------------------------------------------------------------------ state for the glue

    @property
    def open(self) -> bool:
        return self._session.open

    @property
    def closed(self) -> bool:
        return self._session.closed

    @property
    def backlog_full(self) -> bool:
        return self._session.backlog_full

    @property
    def audio_s(self) -> float:
        return self._offset_s + self._session.counters.audio_s

    # ------------------------------------------------------------------ inputs

    def start(self) -> list[RealtimeAction]:
        return [self._emit("session.created", session=self._ga_session())]

    def receive(self, text: str) -> list[RealtimeAction]:
        """One client event (a WebSocket text frame)."""
        try:
            event = json.loads(text)
        except (ValueError, RecursionError):
            return [self._error(RealtimeError("the event is not valid JSON"), None)]
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            problem = RealtimeError('a client event is a JSON object with a string "type"')
            return [self._error(problem, None)]
        raw_id = event.get("event_id")
        try:
            return self._dispatch(event)
        except RealtimeError as exc:
            return [self._error(exc, raw_id if isinstance(raw_id, str) else None)]

    def on_result(self, ticket: int, outcome: AsrResult | BaseException) -> list[RealtimeAction]:
        return self._translate(self._session.on_result(ticket, outcome))

    def shutdown(self) -> list[RealtimeAction]:
        """The server is draining: commit what was heard, transcribe it, close with 1001."""
        before = self._session.counters.utterances
        return self._commit_actions(self._session.shutdown(), before, by_client=False)

    def fail(self, code: ErrorCode, message: str, close_code: CloseCode) -> list[RealtimeAction]:
        return self._translate(self._session.fail(code, message, close_code))

    def internal_error(self) -> list[RealtimeAction]:
        return self._translate(self._session.internal_error())

    def client_gone(self) -> None:
        self._session.client_gone()

    # ------------------------------------------------------------------ client events

    def _dispatch(self, event: dict[str, Any]) -> list[RealtimeAction]:
        kind = event["type"]
        if kind == "input_audio_buffer.append":
            return self._append(event.get("audio"))
        if kind == "input_audio_buffer.commit":
            return self._commit()
        if kind == "input_audio_buffer.clear":
            return self._clear()
        if kind == "session.update":
            session = _mapping(event.get("session"), "session")
            return self._update(apply_ga(self.settings, session), "session.updated")
        if kind == "transcription_session.update":
            session = _mapping(event.get("session"), "session")
            return self._update(apply_beta(self.settings, session), "transcription_session.updated")
        raise RealtimeError(
            f"unsupported event type {kind[:60]!r}: a transcription session takes "
            "session.update, input_audio_buffer.append, .commit and .clear",
            param="type",
            code="unsupported_event",
        )

    def _append(self, audio: object) -> list[RealtimeAction]:
        if not isinstance(audio, str):
            raise RealtimeError(
                "input_audio_buffer.append needs base64 audio in 'audio'", param="audio"
            )
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError("'audio' is not valid base64", param="audio") from None
        samples = self._decoder.decode(data)
        actions: list[RealtimeAction] = []
        step = self._session.classifier.frame_ms * SAMPLE_RATE_HZ // 1000
        for start in range(0, len(samples), step):
            frame = samples[start : start + step]
            self._uncommitted_s += len(frame) / SAMPLE_RATE_HZ
            actions += self._feed(frame)
        return actions

    def _feed(self, frame: npt.NDArray[np.float32]) -> list[RealtimeAction]:
        session = self._session
        out = session.feed_samples(frame)
        actions: list[RealtimeAction] = []
        if self.settings.server_vad:
            closed = session.counters.utterances - self._closes_seen
            for _ in range(closed):
                actions += self._close_item()
            if closed == 0 and self._speaking and not session.in_utterance:
                actions += self._close_item()  # the VAD dropped it (a click)
        self._closes_seen = session.counters.utterances
        return actions + self._translate(out)

    def _commit(self) -> list[RealtimeAction]:
        if self._uncommitted_s < MIN_COMMIT_S:
            raise RealtimeError(
                f"the input audio buffer holds {self._uncommitted_s * 1000:.0f} ms of audio; "
                f"commit needs at least {MIN_COMMIT_S * 1000:.0f} ms",
                code="input_audio_buffer_commit_empty",
            )
        before = self._session.counters.utterances
        return self._commit_actions(self._session.control(Finalize()), before, by_client=True)

    def _commit_actions(
        self, actions: Sequence[SessionAction], before: int, *, by_client: bool
    ) -> list[RealtimeAction]:
        """An item for what was committed (by the client, or by the drain), then `actions`."""
        closed = self._session.counters.utterances > before
        self._closes_seen = self._session.counters.utterances
        manual_audio = not self.settings.server_vad and self._uncommitted_s >= MIN_COMMIT_S
        items = self._close_item() if by_client or closed or manual_audio else []
        return items + self._translate(actions)

    def _clear(self) -> list[RealtimeAction]:
        actions = self._session.control(Finalize())
        self._closes_seen = self._session.counters.utterances
        self._items.append(self._new_item(dropped=True))
        self._early.clear()
        self._speaking = False
        return [*self._translate(actions), self._emit("input_audio_buffer.cleared")]

    def _update(self, settings: RealtimeSettings, answer: str) -> list[RealtimeAction]:
        if settings != self.settings:
            if not self._idle():
                raise RealtimeError(
                    "the audio format, turn detection and transcription settings change only "
                    "between turns: commit or clear the input audio buffer and wait for its "
                    "transcript first",
                    param="session",
                    code="session_busy",
                )
            session, decoder = self._build(settings)
            self._offset_s += self._session.counters.audio_s
            self._session, self._decoder = session, decoder
            self._closes_seen = 0
            self._last_end_s = 0.0
            self.settings = settings
        payload = (
            self._beta_session() if answer.startswith("transcription_") else self._ga_session()
        )
        return [self._emit(answer, session=payload)]

    def _idle(self) -> bool:
        session = self._session
        uncommitted = not self.settings.server_vad and self._uncommitted_s > 0
        return not (session.in_utterance or self._items or session.backlog or uncommitted)

    # ------------------------------------------------------------------ turns and items

    def _new_item(self, *, dropped: bool = False) -> _Item:
        end_s = self._session.stream_s
        item = _Item(
            id=self._next_item,
            previous_id=self._last_item,
            through=self._session.counters.utterances,
            start_s=self._last_end_s,
            end_s=end_s,
            dropped=dropped,
        )
        self._next_item = new_id("item")
        self._last_end_s = end_s
        self._uncommitted_s = 0.0
        if not dropped:
            self._last_item = item.id
        return item

    def _close_item(self) -> list[RealtimeAction]:
        item = self._new_item()
        actions: list[RealtimeAction] = []
        if self._speaking:
            ms = round((self._offset_s + item.end_s) * 1000)
            actions.append(
                self._emit("input_audio_buffer.speech_stopped", audio_end_ms=ms, item_id=item.id)
            )
        self._speaking = False
        actions.append(
            self._emit(
                "input_audio_buffer.committed", item_id=item.id, previous_item_id=item.previous_id
            )
        )
        self._items.append(item)
        early, self._early = self._early, []
        for text in early:
            actions += self._add_text(item, text)
        return actions

    def _add_text(self, item: _Item, text: str) -> list[RealtimeAction]:
        delta = text if not item.texts else " " + text
        item.texts.append(text)
        if item.dropped:
            return []
        return [
            self._emit(
                "conversation.item.input_audio_transcription.delta",
                item_id=item.id,
                content_index=0,
                delta=delta,
            )
        ]

    def _translate(self, actions: Sequence[SessionAction]) -> list[RealtimeAction]:
        """The Session's actions as this API's: its messages become events; completed items
        are announced before a close."""
        out: list[RealtimeAction] = []
        closes: list[Close] = []
        for action in actions:
            if isinstance(action, Close):
                closes.append(action)
                continue
            if isinstance(action, Transcribe | Promote | Cancel):
                out.append(action)
                continue
            if not isinstance(action, Send):
                continue  # speaker labels: a Realtime session does not ask for them
            message = action.message
            if isinstance(message, SpeechStarted):
                self._speaking = True
                ms = round((self._offset_s + message.timestamp_s) * 1000)
                out.append(
                    self._emit(
                        "input_audio_buffer.speech_started",
                        audio_start_ms=ms,
                        item_id=self._next_item,
                    )
                )
            elif isinstance(message, Results) and message.is_final:
                out += self._final(message)
            elif isinstance(message, Error):
                out += self._failed(message)
        return out + self._complete() + closes

    def _final(self, message: Results) -> list[RealtimeAction]:
        end_s = message.start_s + message.duration_s
        for item in self._items:
            if item.end_s + _TIME_EPSILON_S >= end_s:
                return self._add_text(item, message.transcript)
        self._early.append(message.transcript)  # its commit is still to come
        return []

    def _complete(self) -> list[RealtimeAction]:
        session = self._session
        released = session.counters.utterances - session.backlog
        out: list[RealtimeAction] = []
        while self._items and self._items[0].through <= released:
            item = self._items.popleft()
            if item.dropped:
                continue
            out.append(
                self._emit(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item.id,
                    content_index=0,
                    transcript=" ".join(item.texts),
                    usage={"type": "duration", "seconds": round(item.end_s - item.start_s, 3)},
                )
            )
        return out

    def _failed(self, message: Error) -> list[RealtimeAction]:
        out: list[RealtimeAction] = []
        detail = {"type": "server_error", "code": message.code.lower(), "message": message.message}
        while self._items:
            item = self._items.popleft()
            if not item.dropped:
                out.append(
                    self._emit(
                        "conversation.item.input_audio_transcription.failed",
                        item_id=item.id,
                        content_index=0,
                        error=detail,
                    )
                )
        out.append(self._emit("error", error={**detail, "event_id": None, "param": None}))
        return out

    # ------------------------------------------------------------------ settings

    def _build(self, settings: RealtimeSettings) -> tuple[Session, PcmDecoder]:
        """A Session and decoder for `settings`; RealtimeError when the model cannot."""
        encoding, rate_hz = _FORMATS[settings.format]
        query: dict[str, list[str]] = {"encoding": [encoding], "sample_rate": [str(rate_hz)]}
        if settings.language:
            query["language"] = [settings.language]
        terms = [*([settings.prompt] if settings.prompt else []), *settings.keywords]
        if terms:
            query["keyterm"] = terms
        if not settings.server_vad:
            query["endpointing"] = ["false"]
        elif settings.silence_duration_ms is not None:
            query["endpointing"] = [str(settings.silence_duration_ms)]
        query["vad_events"] = ["true" if settings.server_vad else "false"]
        try:
            options = parse_options(
                query, languages=self._languages, multilingual=self._multilingual
            )
        except InvalidParameter as exc:
            names = {
                "language": "session.audio.input.transcription.language",
                "keyterm": "session.audio.input.transcription.prompt",
                "endpointing": "session.audio.input.turn_detection.silence_duration_ms",
            }
            raise RealtimeError(exc.message, param=names.get(exc.name, exc.name)) from exc
        segmenter = SegmenterConfig()
        if settings.prefix_padding_ms is not None:
            segmenter = replace(segmenter, pre_roll_ms=settings.prefix_padding_ms)
        session = Session(
            request_id=self.request_id,
            options=options,
            config=self._config,
            classifier=self._classifier_factory(),
            model=self._model,
            segmenter_defaults=segmenter,
        )
        return session, PcmDecoder(encoding, rate_hz, 1)

    def _turn_detection(self) -> dict[str, object] | None:
        s = self.settings
        if not s.server_vad:
            return None
        return {
            "type": "server_vad",
            "prefix_padding_ms": s.prefix_padding_ms or SegmenterConfig().pre_roll_ms,
            "silence_duration_ms": s.silence_duration_ms or self._config.endpointing_ms,
        }

    def _ga_session(self) -> dict[str, object]:
        s = self.settings
        audio_format: dict[str, object] = {"type": s.format}
        if s.format == "audio/pcm":
            audio_format["rate"] = _FORMATS[s.format][1]
        transcription: dict[str, object] = {
            "model": self._model.name,
            "language": s.language,
            "prompt": s.prompt or "",
        }
        if s.keywords:
            transcription["keywords"] = list(s.keywords)
        return {
            "type": "transcription",
            "id": self.session_id,
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": audio_format,
                    "transcription": transcription,
                    "turn_detection": self._turn_detection(),
                    "noise_reduction": None,
                }
            },
            "include": [],
        }

    def _beta_session(self) -> dict[str, object]:
        s = self.settings
        beta_format = next(k for k, v in _BETA_FORMATS.items() if v == s.format)
        return {
            "id": self.session_id,
            "object": "realtime.transcription_session",
            "input_audio_format": beta_format,
            "input_audio_transcription": {
                "model": self._model.name,
                "language": s.language,
                "prompt": s.prompt or "",
            },
            "turn_detection": self._turn_detection(),
            "input_audio_noise_reduction": None,
            "modalities": ["text"],
            "include": [],
        }

    # ------------------------------------------------------------------ events

    def _emit(self, kind: str, **fields: object) -> Emit:
        return Emit({"type": kind, "event_id": new_id("event"), **fields})

    def _error(self, exc: RealtimeError, event_id: str | None) -> Emit:
        kind = "invalid_request_error"
        error = {
            "type": kind,
            "code": exc.code,
            "message": exc.message,
            "param": exc.param,
            "event_id": event_id,
        }
        return self._emit("error", error=error)


# ---------------------------------------------------------------------- settings parsing


def _mapping(value: object, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RealtimeError(f"'{name}' must be an object", param=name)
    return value


def _text(value: object, param: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RealtimeError("expected a string", param=param)
    return value.strip() or None


def _int_ms(value: object, param: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RealtimeError(f"expected milliseconds between {low} and {high}", param=param)
    return int(value)


def _transcription(settings: RealtimeSettings, value: object, prefix: str) -> RealtimeSettings:
    if value is None:
        return settings  # null turns transcription off elsewhere; here it is the whole point
    data = _mapping(value, prefix)
    if "language" in data:
        settings = replace(settings, language=_text(data["language"], f"{prefix}.language"))
    if "prompt" in data:
        settings = replace(settings, prompt=_text(data["prompt"], f"{prefix}.prompt"))
    if "keywords" in data:
        words = data["keywords"]
        if words is not None and (
            not isinstance(words, list) or not all(isinstance(w, str) for w in words)
        ):
            raise RealtimeError("expected a list of strings", param=f"{prefix}.keywords")
        settings = replace(settings, keywords=tuple(w.strip() for w in words or () if w.strip()))
    return settings


def _turns(settings: RealtimeSettings, value: object, prefix: str) -> RealtimeSettings:
    if value is None:
        return replace(settings, server_vad=False, silence_duration_ms=None, prefix_padding_ms=None)
    data = _mapping(value, prefix)
    kind = data.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise RealtimeError("expected server_vad, semantic_vad or null", param=f"{prefix}.type")
    # semantic_vad is served by the server's VAD (session.updated says server_vad).
    settings = replace(settings, server_vad=True)
    if data.get("silence_duration_ms") is not None:
        ms = _int_ms(data["silence_duration_ms"], f"{prefix}.silence_duration_ms", 10, 60_000)
        settings = replace(settings, silence_duration_ms=ms)
    if data.get("prefix_padding_ms") is not None:
        ms = _int_ms(data["prefix_padding_ms"], f"{prefix}.prefix_padding_ms", 0, 2_000)
        settings = replace(settings, prefix_padding_ms=ms)
    return settings


def _include(value: object, param: str) -> None:
    if value:
        raise RealtimeError("logprobs are not returned by this server; remove include", param=param)


def _noise_reduction(value: object, param: str) -> None:
    if value is not None:
        raise RealtimeError(
            "this server has no noise reduction (its VAD and Whisper take noisy audio as it "
            "is): send null or leave it out",
            param=param,
        )


def apply_ga(settings: RealtimeSettings, session: Mapping[str, Any]) -> RealtimeSettings:
    """`session.update`'s session (GA shape) applied to `settings`."""
    kind = session.get("type", "transcription")
    if kind != "transcription":
        raise RealtimeError(
            "this server serves transcription sessions only: set session.type to "
            "'transcription' (and connect with ?intent=transcription)",
            param="session.type",
        )
    _include(session.get("include"), "session.include")
    audio = session.get("audio")
    if audio is None:
        return settings
    audio_input = _mapping(_mapping(audio, "session.audio").get("input", {}), "session.audio.input")
    _noise_reduction(audio_input.get("noise_reduction"), "session.audio.input.noise_reduction")
    if "format" in audio_input and audio_input["format"] is not None:
        fmt = _mapping(audio_input["format"], "session.audio.input.format")
        kind = fmt.get("type", "audio/pcm")
        if kind not in _FORMATS:
            raise RealtimeError(
                "expected audio/pcm, audio/pcmu or audio/pcma", param="session.audio.input.format"
            )
        if kind == "audio/pcm" and fmt.get("rate", 24_000) != 24_000:
            raise RealtimeError("audio/pcm is 24000 Hz", param="session.audio.input.format.rate")
        settings = replace(settings, format=kind)
    if "transcription" in audio_input:
        prefix = "session.audio.input.transcription"
        settings = _transcription(settings, audio_input["transcription"], prefix)
    if "turn_detection" in audio_input:
        prefix = "session.audio.input.turn_detection"
        settings = _turns(settings, audio_input["turn_detection"], prefix)
    return settings


def apply_beta(settings: RealtimeSettings, session: Mapping[str, Any]) -> RealtimeSettings:
    """`transcription_session.update`'s session (the beta's flat shape) applied."""
    _include(session.get("include"), "session.include")
    _noise_reduction(
        session.get("input_audio_noise_reduction"), "session.input_audio_noise_reduction"
    )
    if session.get("input_audio_format") is not None:
        kind = session["input_audio_format"]
        if kind not in _BETA_FORMATS:
            raise RealtimeError(
                "expected pcm16, g711_ulaw or g711_alaw", param="session.input_audio_format"
            )
        settings = replace(settings, format=_BETA_FORMATS[kind])
    if "input_audio_transcription" in session:
        prefix = "session.input_audio_transcription"
        settings = _transcription(settings, session["input_audio_transcription"], prefix)
    if "turn_detection" in session:
        settings = _turns(settings, session["turn_detection"], "session.turn_detection")
    return settings
