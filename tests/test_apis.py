"""The APIs people already have clients for, end to end: a real server, the real tiny.en
(whisper-base for translation) and the official SDKs unchanged (openai: audio
transcriptions, translations and the Realtime client; deepgram-sdk: pre-recorded
transcribe_file), plus the refusals."""

from __future__ import annotations

import base64
import http.client
import io
import itertools
import json
import signal
import warnings
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr

from tests.support.paths import SHARED_DIR
from tests.support.server import ServerProcess
from tests.wsclient import normalize, read_wav

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # the stdlib's G.711 encoder, independent of the server's decoder

pytestmark = pytest.mark.integration

JFK = "ask not what your country can do for you ask what you can do for your country"


@pytest.fixture(scope="module")
def jfk_wav(audio_dir: Path) -> bytes:
    return (audio_dir / "jfk_inaugural.wav").read_bytes()


def openai_client(server: ServerProcess) -> Any:
    from openai import OpenAI

    return OpenAI(api_key="unused", base_url=f"{server.http_url}/v1", max_retries=0)


def post(
    server: ServerProcess, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_openai_transcriptions_json_verbose_srt_and_text(
    server: ServerProcess, jfk_wav: bytes
) -> None:
    client = openai_client(server)
    plain = client.audio.transcriptions.create(model="whisper-1", file=("jfk.wav", jfk_wav))
    assert JFK in normalize(plain.text)

    verbose = client.audio.transcriptions.create(
        model="gpt-4o-transcribe",
        file=("jfk.wav", jfk_wav),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert JFK in normalize(verbose.text) and verbose.language == "english"
    assert verbose.duration == pytest.approx(11.0, abs=0.1)
    assert verbose.segments and all(s.tokens for s in verbose.segments)
    words = verbose.words
    assert words is not None and [w.word for w in words][-2:] == ["your", "country"]
    assert all(a.start <= b.start for a, b in itertools.pairwise(words))

    srt = client.audio.transcriptions.create(
        model="whisper-1", file=("jfk.wav", jfk_wav), response_format="srt"
    )
    assert srt.startswith("1\n00:00:") and " --> " in srt
    cue_text = [line for line in srt.splitlines() if line and not line[0].isdigit()]
    assert JFK in normalize(" ".join(cue_text))
    text = client.audio.transcriptions.create(
        model="whisper-1", file=("jfk.wav", jfk_wav), response_format="text"
    )
    assert JFK in normalize(text)


def test_openai_stream_sends_deltas_then_done(server: ServerProcess, jfk_wav: bytes) -> None:
    client = openai_client(server)
    events = list(
        client.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=("jfk.wav", jfk_wav), stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done" and set(kinds[:-1]) == {"transcript.text.delta"}
    assert len(kinds) >= 3, "one delta per final, sent as each is released"
    assert "".join(e.delta for e in events[:-1]) == events[-1].text
    assert JFK in normalize(events[-1].text)


def test_openai_translation_on_an_english_only_model_is_refused(
    server: ServerProcess, jfk_wav: bytes
) -> None:
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as caught:
        openai_client(server).audio.translations.create(
            model="whisper-1", file=("jfk.wav", jfk_wav)
        )
    assert "multilingual model" in caught.value.message
    assert caught.value.body["param"] == "model"  # type: ignore[index]


def test_openai_refusals_name_the_field(server: ServerProcess, jfk_wav: bytes) -> None:
    from openai import BadRequestError

    client = openai_client(server)
    with pytest.raises(BadRequestError) as caught:
        client.audio.transcriptions.create(
            model="whisper-1", file=("jfk.wav", jfk_wav), temperature=0.7
        )
    assert caught.value.body["param"] == "temperature"  # type: ignore[index]
    boundary = "b0undary"
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
    body += f"--{boundary}--\r\n"
    status, answer = post(
        server,
        "/v1/audio/transcriptions",
        body.encode(),
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 400 and answer["error"]["param"] == "file"
    assert "'file'" in answer["error"]["message"]


def test_deepgram_sdk_transcribe_file(server: ServerProcess, jfk_wav: bytes) -> None:
    from deepgram import DeepgramClient
    from deepgram.environment import DeepgramClientEnvironment

    env = DeepgramClientEnvironment(
        base=server.http_url,
        production=server.ws_url,
        agent=server.ws_url,
        agent_rest=server.http_url,
    )
    client = DeepgramClient(api_key="unused", environment=env)
    response = client.listen.v1.media.transcribe_file(
        request=jfk_wav, model="nova-3", smart_format=True, utterances=True
    )
    alternative = response.results.channels[0].alternatives[0]  # type: ignore[union-attr,index]
    assert JFK in normalize(alternative.transcript or "")
    assert alternative.words and alternative.words[0].punctuated_word == "And"
    assert response.metadata.duration == pytest.approx(11.0, abs=0.1)  # type: ignore[union-attr]
    utterances = response.results.utterances  # type: ignore[union-attr]
    assert utterances and " ".join(u.transcript or "" for u in utterances) == alternative.transcript


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
def test_deepgram_prerecorded_g711_body(
    server: ServerProcess, audio_dir: Path, encoding: str
) -> None:
    pcm, rate, _ = read_wav(audio_dir / "jfk_inaugural.wav")
    samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    pcm8k = (np.clip(soxr.resample(samples, rate, 8000), -1, 1) * 32767).astype("<i2").tobytes()
    body = audioop.lin2ulaw(pcm8k, 2) if encoding == "mulaw" else audioop.lin2alaw(pcm8k, 2)
    status, answer = post(
        server,
        f"/v1/listen?encoding={encoding}&sample_rate=8000",
        body,
        {"Content-Type": "application/octet-stream"},
    )
    assert status == 200, answer
    assert JFK in normalize(answer["results"]["channels"][0]["alternatives"][0]["transcript"])


def test_deepgram_prerecorded_refusals(server: ServerProcess, jfk_wav: bytes) -> None:
    status, answer = post(
        server,
        "/v1/listen",
        b'{"url": "https://example.com/a.wav"}',
        {"Content-Type": "application/json"},
    )
    assert (status, answer["parameter"]) == (400, "url") and "URL" in answer["err_msg"]
    for query, name in (("diarize_model=latest", "diarize_model"), ("redact=pci", "redact")):
        status, answer = post(server, f"/v1/listen?{query}", jfk_wav, {"Content-Type": "audio/wav"})
        assert (status, answer["parameter"]) == (400, name)
    status, answer = post(server, "/v1/listen", b"not audio at all", {"Content-Type": "audio/wav"})
    assert status == 400 and "cannot be decoded" in answer["err_msg"]


def test_uploads_past_the_limit_get_413(server_factory: Any, jfk_wav: bytes) -> None:
    small = server_factory("--max-upload-bytes", "100000")
    status, answer = post(small, "/v1/listen", jfk_wav, {"Content-Type": "audio/wav"})
    assert status == 413 and "100000 bytes" in answer["err_msg"]
    # No Content-Length: the limit is enforced on the bytes as they arrive.
    connection = http.client.HTTPConnection(small.host, small.port, timeout=60)
    try:
        connection.putrequest("POST", "/v1/audio/transcriptions")
        connection.putheader("Content-Type", "multipart/form-data; boundary=zz")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        head = b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        for piece in (head, jfk_wav[:60_000], jfk_wav[60_000:120_000]):
            connection.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        response = connection.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["error"]["type"] == "invalid_request_error"
    finally:
        connection.close()


def test_openai_realtime_client_transcribes(server: ServerProcess, audio_dir: Path) -> None:
    pcm, rate, _ = read_wav(audio_dir / "jfk_inaugural.wav")
    samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    pcm24 = (np.clip(soxr.resample(samples, rate, 24_000), -1, 1) * 32767).astype("<i2")
    audio = np.concatenate([pcm24, np.zeros(24_000, "<i2")]).tobytes()
    transcripts: dict[str, str] = {}
    order: list[str] = []
    client = openai_client(server)
    with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        connection.session.update(
            session={
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                    }
                },
            }
        )
        for start in range(0, len(audio), 4800):  # 100 ms appends
            chunk = base64.b64encode(audio[start : start + 4800]).decode()
            connection.input_audio_buffer.append(audio=chunk)
        for event in connection:
            order.append(event.type)
            if event.type == "input_audio_buffer.committed":
                transcripts[event.item_id] = ""
            elif event.type == "conversation.item.input_audio_transcription.completed":
                transcripts[event.item_id] = event.transcript
                if all(transcripts.values()) and "ask what you can do" in normalize(
                    event.transcript
                ):
                    break
            elif event.type == "error":
                pytest.fail(f"error event: {event.error}")
    assert order[:2] == ["session.created", "session.updated"]
    assert "input_audio_buffer.speech_started" in order
    assert JFK in normalize(" ".join(transcripts.values()))


def test_drain_ends_a_file_transcription_with_a_message_to_retry(
    server_factory: Any, audio_dir: Path
) -> None:
    from openai import APIError

    srv = server_factory()
    pcm, rate, _ = read_wav(audio_dir / "jfk_inaugural.wav")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm * 8)
    events = iter(
        openai_client(srv).audio.transcriptions.create(
            model="whisper-1", file=("long.wav", buffer.getvalue()), stream=True
        )
    )
    assert next(events).type == "transcript.text.delta"
    srv.send_signal(signal.SIGTERM)
    with pytest.raises(APIError, match="shutting down"):
        for _ in events:
            pass
    assert srv.proc.wait(timeout=30) == 0, "a clean drain"


def test_openai_translation_on_a_multilingual_model(server_factory: Any) -> None:
    from cache.registry import fetch
    from cache.store import default_cache_dir

    base = server_factory("--model", str(fetch("whisper-base", default_cache_dir())))
    clip = (SHARED_DIR / "speech-multi" / "fr_picovoice.wav").read_bytes()
    client = openai_client(base)
    english = client.audio.translations.create(model="whisper-1", file=("fr.wav", clip))
    french = client.audio.transcriptions.create(model="whisper-1", file=("fr.wav", clip))
    assert "consul" in normalize(english.text) and "under" in normalize(english.text)
    assert "sous le" in normalize(french.text) and "under" not in normalize(french.text)


def test_deepgram_prerecorded_diarize(server_factory: Any) -> None:
    from cache.registry import fetch
    from cache.store import default_cache_dir
    from tests.test_diarize import conversation

    weights = fetch("resemblyzer-encoder", default_cache_dir()) / "pretrained.pt"
    srv = server_factory("--speaker-model", str(weights))
    pcm, turns = conversation()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(pcm)
    status, answer = post(
        srv,
        "/v1/listen?diarize=true&utterances=true",
        buffer.getvalue(),
        {"Content-Type": "audio/wav"},
    )
    assert status == 200, answer
    words = answer["results"]["channels"][0]["alternatives"][0]["words"]
    assert words and all("speaker" in w for w in words)
    truth = [
        next(
            who
            for start, end, who in turns
            if start - 0.5 <= (w["start"] + w["end"]) / 2 <= end + 0.5
        )
        for w in words
    ]
    labels = [w["speaker"] for w in words]
    best = max(
        sum(mapping[t] == label for t, label in zip(truth, labels, strict=True))
        for mapping in (
            dict(zip(("lj", "jfk"), p, strict=True))
            for p in itertools.permutations(sorted(set(labels) | {0, 1}), 2)
        )
    )
    assert best >= 0.9 * len(words), list(zip(truth, labels, strict=True))
    assert all("speaker" in u for u in answer["results"]["utterances"])
