"""End to end: real server process, real websocket clients, real tiny.en, shared speech."""

from __future__ import annotations

import asyncio
import itertools
import json
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr
import websockets
from websockets.exceptions import InvalidStatus

from tests.support.paths import reference_texts
from tests.support.server import ServerProcess
from tests.wsclient import Outcome, chunks, normalize, pcm16, read_wav, stream, wer

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # the stdlib's G.711 encoders, independent of the server's decoder

pytestmark = pytest.mark.integration

LINEAR16 = "/v1/listen?encoding=linear16&sample_rate=16000"
CLOSE = json.dumps({"type": "CloseStream"})


def get(url: str) -> tuple[int, dict[str, Any] | str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = resp.read().decode()
            kind = resp.headers.get("Content-Type", "")
            status = resp.status
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        kind = exc.headers.get("Content-Type", "")
        status = exc.code
    return status, (json.loads(body) if "json" in kind else body), kind


@pytest.fixture(scope="module")
def offline_transcripts(audio_dir: Path, model_dir: Path) -> dict[str, str]:
    """faster-whisper's own offline transcription of every shared file: the ceiling."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=2)
    out: dict[str, str] = {}
    for name in reference_texts():
        segments, _ = model.transcribe(str(audio_dir / name), beam_size=5, language="en")
        out[name] = " ".join(s.text.strip() for s in segments)
    return out


def assert_clean_close(outcome: Outcome) -> None:
    assert outcome.close_code == 1000, outcome.messages[-3:]
    assert outcome.messages[-1]["type"] == "Metadata"
    for key in ("transaction_key", "request_id", "created", "duration", "channels", "models"):
        assert key in outcome.messages[-1]


async def test_shared_audio_wer_within_two_points_of_offline(
    server: ServerProcess, audio_dir: Path, offline_transcripts: dict[str, str]
) -> None:
    refs = reference_texts()
    names = sorted(refs)

    async def one(name: str) -> Outcome:
        pcm, rate, _ = read_wav(audio_dir / name)
        url = f"{server.ws_url}/v1/listen?encoding=linear16&sample_rate={rate}"
        return await stream(url, chunks(pcm, [6400]))

    # All files at once: separate sessions share the one engine.
    outcomes = await asyncio.gather(*(one(n) for n in names))
    ours = [o.transcript for o in outcomes]
    for outcome in outcomes:
        assert_clean_close(outcome)
        finals = outcome.finals
        assert finals, "every shared file holds speech"
        for a, b in itertools.pairwise(finals):
            assert a["start"] + a["duration"] <= b["start"] + 1e-6, "finals must not overlap"
        for final in finals:
            words = final["channel"]["alternatives"][0]["words"]
            assert words, "finals carry word timings"
            for w in words:
                assert final["start"] - 1e-6 <= w["start"] <= w["end"]
                assert w["end"] <= final["start"] + final["duration"] + 1e-6
                assert w["word"] == w["word"].lower()
    wer_ours = wer([refs[n] for n in names], ours)
    wer_offline = wer([refs[n] for n in names], [offline_transcripts[n] for n in names])
    print(f"WER streamed {wer_ours:.3f} offline {wer_offline:.3f}")
    assert wer_ours <= wer_offline + 0.02


async def test_transcript_does_not_depend_on_frame_sizes(
    server: ServerProcess, audio_dir: Path
) -> None:
    pcm, _, _ = read_wav(audio_dir / "jfk_inaugural.wav")
    url = server.ws_url + LINEAR16
    cuts = {
        "odd": [1, 3, 7, 333, 4801],
        "10ms": [320],
        "1s": [32000],
        "one-byte-head": [1] * 2000 + [64001],
    }
    texts: dict[str, str] = {}
    for label, sizes in cuts.items():
        outcome = await stream(url, chunks(pcm, sizes))
        assert_clean_close(outcome)
        texts[label] = normalize(outcome.transcript)
    assert len(set(texts.values())) == 1, texts
    assert "what your country can do for you" in texts["odd"]


async def test_silence_noise_and_clicks_produce_no_text(server: ServerProcess) -> None:
    rng = np.random.default_rng(7)
    silence = np.zeros(16000 * 4, dtype=np.float32)
    noise = (rng.standard_normal(16000 * 4) * 0.1).astype(np.float32)
    clicks = np.zeros(16000 * 4, dtype=np.float32)
    clicks[::8000] = 0.9
    clicks[1::8000] = -0.9
    hum = (0.2 * np.sin(2 * np.pi * 120 * np.arange(16000 * 3) / 16000)).astype(np.float32)
    url = server.ws_url + LINEAR16
    for signal in (silence, noise, clicks, hum):
        outcome = await stream(url, chunks(pcm16(signal), [3200]))
        assert_clean_close(outcome)
        assert outcome.finals == [], outcome.finals


async def test_resampled_stereo_input(server: ServerProcess, audio_dir: Path) -> None:
    pcm, _, _ = read_wav(audio_dir / "jfk_inaugural.wav")
    mono = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    for rate, channels in ((8000, 1), (44100, 2), (48000, 1)):
        resampled = soxr.resample(mono, 16000, rate).astype(np.float32)
        data = np.repeat(resampled, channels) if channels == 2 else resampled
        url = f"{server.ws_url}/v1/listen?encoding=linear16&sample_rate={rate}&channels={channels}"
        outcome = await stream(url, chunks(pcm16(data), [4096]))
        assert_clean_close(outcome)
        assert "what your country can do for you" in normalize(outcome.transcript), (rate, channels)
        assert outcome.messages[-1]["channels"] == channels


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
async def test_g711_telephone_streams(
    server: ServerProcess, audio_dir: Path, encoding: str
) -> None:
    """8 kHz G.711, as Twilio Media Streams and other telephony bridges send it."""
    pcm, _, _ = read_wav(audio_dir / "jfk_inaugural.wav")
    mono = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    narrow = soxr.resample(mono, 16000, 8000)
    encode = audioop.lin2ulaw if encoding == "mulaw" else audioop.lin2alaw
    codes = encode(pcm16(narrow), 2)
    url = f"{server.ws_url}/v1/listen?encoding={encoding}&sample_rate=8000"
    outcome = await stream(url, chunks(codes, [160]))  # 20 ms frames, as Twilio sends
    assert_clean_close(outcome)
    assert "what your country can do for you" in normalize(outcome.transcript)


async def test_finalize_then_closestream(server: ServerProcess, audio_dir: Path) -> None:
    pcm, _, _ = read_wav(audio_dir / "jfk_inaugural.wav")
    head, tail = pcm[: 32000 * 3], pcm[32000 * 3 :]
    url = server.ws_url + LINEAR16 + "&vad_events=true&utterance_end_ms=1000&endpointing=300"
    messages: list[dict[str, Any]] = []
    async with websockets.connect(url) as ws:
        for piece in chunks(head, [3200]):
            await ws.send(piece)
        await ws.send(json.dumps({"type": "Finalize"}))
        while True:
            message = json.loads(await ws.recv())
            messages.append(message)
            if message["type"] == "Results" and message["from_finalize"]:
                break
        flushed = messages[-1]
        assert flushed["is_final"] and not flushed["speech_final"]
        assert normalize(flushed["channel"]["alternatives"][0]["transcript"]).startswith("and so")
        for piece in chunks(tail + bytes(32000 * 2), [3200]):
            await ws.send(piece)
        await ws.send(CLOSE)
        async for raw in ws:
            messages.append(json.loads(raw))
        assert ws.close_code == 1000
    kinds = [m["type"] for m in messages]
    assert kinds[-1] == "Metadata"
    assert kinds[0] == "SpeechStarted"
    assert "UtteranceEnd" in kinds
    finals = [m for m in messages if m["type"] == "Results" and m["is_final"]]
    assert any(m["speech_final"] for m in finals)
    text = normalize(" ".join(m["channel"]["alternatives"][0]["transcript"] for m in finals))
    assert "ask what you can do for your country" in text
    ends = [m for m in messages if m["type"] == "UtteranceEnd"]
    last_word = finals[-1]["channel"]["alternatives"][0]["words"][-1]["end"]
    assert ends[-1]["last_word_end"] == pytest.approx(last_word, abs=0.01)


async def test_interim_results_precede_finals(server: ServerProcess, audio_dir: Path) -> None:
    pcm, _, _ = read_wav(audio_dir / "ljspeech_LJ001-0001.wav")
    url = server.ws_url + LINEAR16 + "&interim_results=true"
    head, tail = pcm[: 32000 * 3], pcm[32000 * 3 :]
    messages: list[dict[str, Any]] = []
    async with websockets.connect(url) as ws:
        for piece in chunks(head, [3200]):
            await ws.send(piece)
        # The utterance is still open (no trailing silence yet): an interim must come.
        while not messages or messages[-1]["type"] != "Results":
            messages.append(json.loads(await ws.recv()))
        interim = messages[-1]
        assert not interim["is_final"]
        assert interim["start"] == 0.0 and 0.5 <= interim["duration"] <= 3.0
        assert "printing" in normalize(interim["channel"]["alternatives"][0]["transcript"])
        for piece in chunks(tail, [3200]):
            await ws.send(piece)
        await ws.send(CLOSE)
        async for raw in ws:
            messages.append(json.loads(raw))
    results = [m for m in messages if m["type"] == "Results"]
    finals = [m for m in results if m["is_final"]]
    assert finals and results.index(finals[0]) > 0
    for m in results:
        assert m["channel"]["alternatives"][0]["transcript"].strip()
    assert "exhibition" in normalize(
        " ".join(m["channel"]["alternatives"][0]["transcript"] for m in finals)
    )


async def test_bad_control_messages_keep_the_stream(server: ServerProcess, audio_dir: Path) -> None:
    pcm, _, _ = read_wav(audio_dir / "deepspeech_new_home.wav")
    frames: list[bytes | str] = ["not json", json.dumps({"type": "Nope"}), "[1, 2]"]
    frames += chunks(pcm, [3200])
    outcome = await stream(server.ws_url + LINEAR16, frames)
    assert_clean_close(outcome)
    errors = outcome.of_type("Error")
    assert len(errors) == 3
    assert {e["code"] for e in errors} == {"INVALID_MESSAGE"}
    assert "KeepAlive" in errors[1]["message"]
    assert "new home in the stars" in normalize(outcome.transcript)


async def test_odd_byte_count_is_reported_not_dropped(
    server: ServerProcess, audio_dir: Path
) -> None:
    pcm, _, _ = read_wav(audio_dir / "deepspeech_new_home.wav")
    outcome = await stream(server.ws_url + LINEAR16, chunks(pcm + b"\x01", [999]))
    assert_clean_close(outcome)
    assert "new home in the stars" in normalize(outcome.transcript)
    (error,) = outcome.of_type("Error")
    assert error["code"] == "INVALID_AUDIO" and "1 byte" in error["message"]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("encoding=opus&sample_rate=48000", "encoding"),
        ("encoding=linear16&redact=pci", "redact"),
        ("encoding=linear16&profanity_filter=true", "profanity_filter"),
        ("encoding=linear16&sample_rate=4000", "sample_rate"),
        ("encoding=linear16&channels=3", "channels"),
        ("encoding=linear16&interim_results=maybe", "interim_results"),
        ("encoding=linear16&language=fr", "language"),
        ("encoding=linear16&utterance_end_ms=10", "utterance_end_ms"),
        ("encoding=linear16&endpointing=soon", "endpointing"),
    ],
)
async def test_invalid_parameter_is_refused_with_400(
    server: ServerProcess, query: str, parameter: str
) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(f"{server.ws_url}/v1/listen?{query}"):
            pass
    resp = info.value.response
    assert resp.status_code == 400
    body = json.loads(resp.body)
    assert body["parameter"] == parameter
    assert body["error"]


async def test_oversized_frame_closes_only_that_session(
    server: ServerProcess, audio_dir: Path
) -> None:
    pcm, _, _ = read_wav(audio_dir / "cmuarctic_a0024.wav")
    normal = asyncio.create_task(stream(server.ws_url + LINEAR16, chunks(pcm, [3200]), pace_s=0.01))
    big = await stream(server.ws_url + LINEAR16, [bytes(2 * 1024 * 1024)], close_stream=False)
    assert big.close_code == 1009
    outcome = await normal
    assert_clean_close(outcome)
    assert "induced people to buy" in normalize(outcome.transcript)


async def test_unknown_params_model_fallback_and_key_terms(
    server: ServerProcess, audio_dir: Path
) -> None:
    pcm, _, _ = read_wav(audio_dir / "deepspeech_new_home.wav")
    url = server.ws_url + LINEAR16 + "&model=nova-3&smart_format=true&punctuate=true&foo=bar"
    url += "&keyterm=stars&keywords=" + ",".join("abcdefghijklmnopqrstuvwxyz") * 8 + ":2"
    outcome = await stream(url, chunks(pcm, [8000]))
    assert_clean_close(outcome)
    meta = outcome.finals[0]["metadata"]
    assert meta["model_info"]["name"] == "tiny.en"
    assert outcome.messages[-1]["models"] == ["tiny.en"]


def test_http_endpoints(server: ServerProcess) -> None:
    assert get(server.http_url + "/healthz")[:2] == (200, {"status": "ok"})
    status, body, _ = get(server.http_url + "/readyz")
    assert status == 200 and isinstance(body, dict) and body["state"] == "ready"
    status, body, _ = get(server.http_url + "/v1/models")
    assert status == 200 and isinstance(body, dict)
    (model,) = body["models"]
    assert model["name"] == "tiny.en" and model["languages"] == ["en"]
    status, body, _ = get(server.http_url + "/nope")
    assert status == 404 and isinstance(body, dict) and "error" in body
    status, body, _ = get(server.http_url + "/v1/listen")
    assert status == 426
    status, body, _kind = get(server.http_url + "/metrics")
    assert status == 200 and "streamscribe_sessions_active" in str(body)


async def test_websocket_upgrade_elsewhere_is_404(server: ServerProcess) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(server.ws_url + "/v2/other"):
            pass
    assert info.value.response.status_code == 404


async def test_idle_timeout_closes_with_1008(server_factory: Any) -> None:
    srv = server_factory("--idle-timeout-s", "1")
    outcome = await stream(srv.ws_url + LINEAR16, [], close_stream=False)
    assert outcome.close_code == 1008
    assert outcome.of_type("Error")[0]["code"] == "IDLE_TIMEOUT"
    assert outcome.messages[-1]["type"] == "Metadata"


def test_deepgram_sdk_client(server: ServerProcess, audio_dir: Path) -> None:
    """The official Python SDK connects unchanged and parses every message strictly."""
    from deepgram import DeepgramClient
    from deepgram.environment import DeepgramClientEnvironment
    from deepgram.listen.v1.types.listen_v1metadata import ListenV1Metadata
    from deepgram.listen.v1.types.listen_v1results import ListenV1Results

    env = DeepgramClientEnvironment(
        base=server.http_url,
        production=server.ws_url,
        agent=server.ws_url,
        agent_rest=server.http_url,
    )
    client = DeepgramClient(api_key="unused", environment=env)
    pcm, _, _ = read_wav(audio_dir / "jfk_inaugural.wav")
    raw: list[dict[str, Any]] = []
    with client.listen.v1.connect(
        model="nova-3", encoding="linear16", sample_rate=16000, interim_results=True
    ) as conn:
        for piece in chunks(pcm, [16000]):
            conn.send_media(piece)
        conn.send_close_stream()
        for message in conn._websocket:
            raw.append(json.loads(message))
    results = [ListenV1Results.model_validate(m) for m in raw if m["type"] == "Results"]
    metas = [ListenV1Metadata.model_validate(m) for m in raw if m["type"] == "Metadata"]
    assert len(metas) == 1 and raw[-1]["type"] == "Metadata"
    text = " ".join(r.channel.alternatives[0].transcript for r in results if r.is_final)
    assert "what your country can do for you" in normalize(text)
