"""The pure Realtime transcription session, driven with real speech and the real WebRTC VAD.

Transcription results are inputs of the state machine, so the tests hand them in. Every
event the session emits is validated against the official `openai` SDK's event models.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest
import soxr
from openai.types.beta.realtime import TranscriptionSessionUpdatedEvent
from openai.types.realtime import RealtimeServerEvent
from websockets.frames import CloseCode

from server.protocol import ModelInfo
from server.realtime_session import Emit, RealtimeAction, RealtimeSession
from server.session import Close, SessionConfig, Transcribe
from server.transcription import AsrResult
from tests.support.paths import AUDIO_DIR
from tests.wsclient import read_wav
from vad.webrtc import WebRtcClassifier

MODEL = ModelInfo("tiny.en", "cpu-int8", "whisper", "u")
SERVER_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RealtimeServerEvent)


def new_session(config: SessionConfig | None = None) -> RealtimeSession:
    return RealtimeSession(
        request_id="r",
        model=MODEL,
        config=config or SessionConfig(),
        classifier_factory=WebRtcClassifier,
        languages=("en",),
        multilingual=False,
    )


def jfk_24k() -> bytes:
    pcm, rate, _ = read_wav(Path(AUDIO_DIR) / "jfk_inaugural.wav")
    samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    resampled = soxr.resample(samples, rate, 24_000)
    return bytes((np.clip(resampled, -1, 1) * 32767).astype("<i2").tobytes())


def silence_24k(seconds: float) -> bytes:
    return bytes(int(24_000 * seconds) * 2)


def append(data: bytes) -> str:
    return json.dumps(
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(data).decode()}
    )


class Driver:
    """Feeds client events, answers transcriptions (at once, or when told), keeps events."""

    def __init__(self, session: RealtimeSession, *, answer_at_once: bool = True) -> None:
        self.session = session
        self.answer_at_once = answer_at_once
        self.events: list[dict[str, Any]] = []
        self.closes: list[Close] = []
        self.waiting: list[Transcribe] = []
        self.requests = 0
        self.apply(session.start())

    def send(self, event: dict[str, Any] | str) -> None:
        text = event if isinstance(event, str) else json.dumps(event)
        self.apply(self.session.receive(text))

    def stream(self, data: bytes, chunk_bytes: int = 4800) -> None:
        for start in range(0, len(data), chunk_bytes):
            self.send(append(data[start : start + chunk_bytes]))

    def answer(self, ticket: int) -> None:
        self.apply(self.session.on_result(ticket, AsrResult(text=f"text {ticket}.")))

    def answer_all(self) -> None:
        while self.waiting:
            self.answer(self.waiting.pop(0).ticket)

    def apply(self, actions: list[RealtimeAction]) -> None:
        for action in actions:
            if isinstance(action, Emit):
                event = action.event
                if event["type"] == "transcription_session.updated":
                    # The beta's models declare a client secret and OpenAI's model names;
                    # the SDK reads them without validation, as done here.
                    parsed = TranscriptionSessionUpdatedEvent.model_construct(None, **event)
                    assert parsed.type == "transcription_session.updated"
                else:
                    SERVER_EVENT.validate_python(event)
                self.events.append(event)
            elif isinstance(action, Transcribe):
                self.requests += 1
                if self.answer_at_once:
                    self.answer(action.ticket)
                else:
                    self.waiting.append(action)
            elif isinstance(action, Close):
                self.closes.append(action)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def kinds(self) -> list[str]:
        return [e["type"] for e in self.events]


def test_created_then_updated_with_the_settings_in_effect() -> None:
    driver = Driver(new_session())
    created = driver.events[0]
    assert created["type"] == "session.created"
    assert created["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    driver.send(
        {
            "type": "session.update",
            "session": {
                "type": "transcription",
                "audio": {
                    "input": {
                        "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                        "turn_detection": {"type": "semantic_vad"},
                        "noise_reduction": None,
                    }
                },
            },
        }
    )
    updated = driver.events[-1]["session"]["audio"]["input"]
    assert updated["transcription"]["model"] == "tiny.en", "names the model really used"
    assert updated["turn_detection"]["type"] == "server_vad", "what the server really does"
    assert updated["noise_reduction"] is None


def test_server_vad_turns_become_items_transcribed_in_order() -> None:
    # Without context every final is asked for at once, so results can come in any order.
    no_context = SessionConfig(context_ms=None, speculate_ms=None)
    driver = Driver(new_session(no_context), answer_at_once=False)
    driver.stream(jfk_24k() + silence_24k(1.5))
    started = driver.of("input_audio_buffer.speech_started")
    stopped = driver.of("input_audio_buffer.speech_stopped")
    committed = driver.of("input_audio_buffer.committed")
    assert len(started) == len(stopped) == len(committed) >= 2
    assert [e["item_id"] for e in started] == [e["item_id"] for e in committed]
    assert committed[0]["previous_item_id"] is None
    assert [e["previous_item_id"] for e in committed[1:]] == [e["item_id"] for e in committed[:-1]]
    assert all(
        a["audio_start_ms"] < b["audio_end_ms"] for a, b in zip(started, stopped, strict=True)
    )
    assert not driver.of("conversation.item.input_audio_transcription.completed")
    # Answered last first: nothing completes before the earlier items are in.
    waiting, driver.waiting = driver.waiting, []
    assert len(waiting) == len(committed)
    driver.answer(waiting[-1].ticket)
    assert not driver.of("conversation.item.input_audio_transcription.completed")
    for request in reversed(waiting[:-1]):
        driver.answer(request.ticket)
    completed = driver.of("conversation.item.input_audio_transcription.completed")
    assert [e["item_id"] for e in completed] == [e["item_id"] for e in committed]
    deltas = driver.of("conversation.item.input_audio_transcription.delta")
    assert all(e["transcript"] for e in completed) and len(deltas) == len(completed)
    last_delta = max(i for i, e in enumerate(driver.events) if e["type"].endswith(".delta"))
    assert driver.kinds()[last_delta + 1].endswith(".completed")


def test_without_turn_detection_the_client_commit_decides() -> None:
    driver = Driver(new_session())
    driver.send({"type": "transcription_session.update", "session": {"turn_detection": None}})
    assert driver.events[-1]["session"]["turn_detection"] is None
    driver.stream(jfk_24k())
    assert not driver.of("input_audio_buffer.speech_started")
    assert not driver.of("input_audio_buffer.committed")
    driver.send({"type": "input_audio_buffer.commit"})
    (committed,) = driver.of("input_audio_buffer.committed")
    (completed,) = driver.of("conversation.item.input_audio_transcription.completed")
    assert completed["item_id"] == committed["item_id"] and completed["transcript"]
    driver.send({"type": "input_audio_buffer.commit"})
    assert driver.events[-1]["error"]["code"] == "input_audio_buffer_commit_empty"


def test_clear_drops_the_uncommitted_audio() -> None:
    driver = Driver(new_session())
    driver.send(
        {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}
    )
    driver.stream(jfk_24k()[: 24_000 * 2 * 3])
    driver.send({"type": "input_audio_buffer.clear"})
    assert driver.events[-1]["type"] == "input_audio_buffer.cleared"
    assert driver.requests >= 1, "what was heard was transcribed, and its text dropped"
    assert not driver.of("conversation.item.input_audio_transcription.delta")
    assert not driver.of("conversation.item.input_audio_transcription.completed")


@pytest.mark.parametrize(
    ("event", "code", "param"),
    [
        ("not json", "invalid_value", None),
        ({"type": "response.create"}, "unsupported_event", "type"),
        ({"type": "input_audio_buffer.append", "audio": "%%%"}, "invalid_value", "audio"),
        (
            {"type": "session.update", "session": {"type": "realtime"}},
            "invalid_value",
            "session.type",
        ),
        (
            {
                "type": "session.update",
                "session": {"audio": {"input": {"transcription": {"language": "xx"}}}},
            },
            "invalid_value",
            "session.audio.input.transcription.language",
        ),
        (
            {
                "type": "transcription_session.update",
                "session": {"include": ["item.input_audio_transcription.logprobs"]},
            },
            "invalid_value",
            "session.include",
        ),
        (
            {
                "type": "session.update",
                "session": {"audio": {"input": {"noise_reduction": {"type": "far_field"}}}},
            },
            "invalid_value",
            "session.audio.input.noise_reduction",
        ),
        (
            {
                "type": "transcription_session.update",
                "session": {"input_audio_noise_reduction": {"type": "near_field"}},
            },
            "invalid_value",
            "session.input_audio_noise_reduction",
        ),
    ],
)
def test_bad_events_get_an_error_and_the_session_goes_on(
    event: dict[str, Any] | str, code: str, param: str | None
) -> None:
    driver = Driver(new_session())
    driver.send(event)
    error = driver.events[-1]
    assert error["type"] == "error"
    assert (error["error"]["code"], error["error"]["param"]) == (code, param)
    assert driver.session.open and not driver.closes


def test_settings_change_only_between_turns() -> None:
    driver = Driver(new_session(), answer_at_once=False)
    driver.stream(jfk_24k()[: 24_000 * 2 * 2])
    assert driver.of("input_audio_buffer.speech_started")
    driver.send(
        {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}
    )
    assert driver.events[-1]["error"]["code"] == "session_busy"
    assert driver.session.settings.server_vad


def test_a_failed_transcription_fails_its_items_then_closes() -> None:
    driver = Driver(new_session(), answer_at_once=False)
    driver.stream(jfk_24k() + silence_24k(1.5))
    pending = driver.of("input_audio_buffer.committed")
    driver.apply(driver.session.on_result(driver.waiting[0].ticket, RuntimeError("engine")))
    failed = driver.of("conversation.item.input_audio_transcription.failed")
    assert [e["item_id"] for e in failed] == [e["item_id"] for e in pending]
    assert driver.events[-1]["type"] == "error"
    assert [c.code for c in driver.closes] == [CloseCode.INTERNAL_ERROR]


def test_drain_commits_open_speech_and_closes_after_its_transcript() -> None:
    driver = Driver(new_session())
    driver.stream(jfk_24k()[: 24_000 * 2 * 2])  # speech still open
    driver.apply(driver.session.shutdown())
    assert driver.kinds()[-3:] == [
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
    ]
    assert [c.code for c in driver.closes] == [CloseCode.GOING_AWAY]


def test_g711_input_formats() -> None:
    driver = Driver(new_session())
    driver.send(
        {"type": "transcription_session.update", "session": {"input_audio_format": "g711_ulaw"}}
    )
    assert driver.events[-1]["session"]["input_audio_format"] == "g711_ulaw"
    driver.send(
        {
            "type": "session.update",
            "session": {"audio": {"input": {"format": {"type": "audio/pcma"}}}},
        }
    )
    assert driver.events[-1]["session"]["audio"]["input"]["format"] == {"type": "audio/pcma"}
