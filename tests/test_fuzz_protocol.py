"""Property-based fuzz of the protocol layer: parsers in-process, and a real server over sockets.

Against the server, any sequence of text and binary frames (well-formed control messages,
JSON of any shape, arbitrary text, speech, silence, random bytes, oversized frames) on any
stream options must yield only the documented message types with their required fields,
only documented Error codes and close codes, never 1011, and no traceback in the server's
stderr. The parsers (`parse_control`, `parse_options`, `presented_key`) must raise nothing
but their documented errors, whatever they are given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.http import presented_key
from server.protocol import (
    UNSUPPORTED_PROMISES,
    ControlMessage,
    ErrorCode,
    InvalidParameter,
    ProtocolError,
    StreamOptions,
    parse_control,
    parse_options,
    query_of,
)
from tests.support.server import ServerProcess, start_server
from tests.wsclient import read_wav

MAX_FRAME_BYTES = 64 * 1024
MESSAGE_TYPES = {"Results", "Metadata", "SpeechStarted", "UtteranceEnd", "Error"}
ERROR_CODES = set(get_args(ErrorCode))
SERVER_CLOSE_CODES = {1000, 1007, 1008, 1009, 1013}
CONTROL = [json.dumps({"type": t}) for t in ("KeepAlive", "Finalize", "CloseStream")]

# ---------------------------------------------------------------------------- strategies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
control_like = st.one_of(
    st.sampled_from(CONTROL),
    st.builds(lambda t: json.dumps({"type": t}), st.text(max_size=60)),
    st.builds(lambda v: json.dumps({"type": v}), json_values),
    st.builds(json.dumps, json_values),
    st.text(max_size=120),
    st.builds(lambda n: "[" * n + "]" * n, st.integers(1, 5000)),
)


# ---------------------------------------------------------------------------- pure parsers


@settings(max_examples=400, deadline=None, derandomize=True)
@given(control_like)
def test_parse_control_raises_only_protocol_error(text: str) -> None:
    try:
        message: ControlMessage = parse_control(text)
    except ProtocolError as exc:
        assert exc.code == "INVALID_MESSAGE" and exc.message
        return
    assert json.loads(text)["type"] in {"KeepAlive", "Finalize", "CloseStream"}
    assert type(message).__name__ == json.loads(text)["type"]


def test_parse_control_survives_deep_nesting() -> None:
    for text in ("[" * 200_000, "{" * 200_000, '{"type":' * 100_000):
        with pytest.raises(ProtocolError):
            parse_control(text)


KNOWN_PARAMETERS = (
    "encoding", "sample_rate", "channels", "language", "interim_results", "endpointing",
    "utterance_end_ms", "vad_events", "keyterm", "keywords", "model", "punctuate", "token",
    *UNSUPPORTED_PROMISES,
)  # fmt: skip
parameter_values = st.one_of(
    st.text(max_size=30),
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(["linear16", "true", "false", "16000", "8000", "48000", "en-US", "auto"]),
    st.sampled_from(["9" * 5000, "1_000", "١٦٠٠٠", " 16000 ", "1e4", "0x10", "", "\x00"]),
)
queries = st.dictionaries(
    st.one_of(st.sampled_from(KNOWN_PARAMETERS), st.text(max_size=10)),
    st.lists(parameter_values, min_size=1, max_size=3),
    max_size=8,
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(queries, st.booleans())
def test_parse_options_raises_only_invalid_parameter(
    query: dict[str, list[str]], multilingual: bool
) -> None:
    languages = ("en", "de", "fr") if multilingual else ("en",)
    try:
        options = parse_options(query, languages=languages, multilingual=multilingual)
    except InvalidParameter as exc:
        assert exc.name in KNOWN_PARAMETERS and exc.message
        return
    assert isinstance(options, StreamOptions)
    assert 8000 <= options.sample_rate_hz <= 48000 and options.channels in (1, 2)
    assert options.language is None or options.language in languages
    assert sum(len(t) for t in options.keyterms) <= 500


header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=60,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.lists(st.sampled_from(["Authorization", "Sec-WebSocket-Protocol", "X-Other"]), max_size=4),
    st.lists(header_text, min_size=4, max_size=4),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60),
)
def test_presented_key_never_raises(names: list[str], values: list[str], query: str) -> None:
    headers = [(n.lower(), v) for n, v in zip(names, values, strict=False)]
    key = presented_key(headers, query_of(f"/v1/listen?{query}"))
    assert key is None or isinstance(key, str)


# ---------------------------------------------------------------------------- real server


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ServerProcess]:
    srv = start_server(
        "--max-frame-bytes", str(MAX_FRAME_BYTES),
        "--max-control-per-s", "3",  # the 7th text frame in a burst is a flood
        "--beam-size", "1",  # accuracy is not under test here; speed is welcome
        "--max-utterance-s", "5",
    )  # fmt: skip
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def speech_pieces(audio_dir: Path) -> list[bytes]:
    pcm, _, _ = read_wav(audio_dir / "deepspeech_new_home.wav")
    return [pcm[:16000], pcm[16000:48000], pcm[48000:], pcm[1:32001]]


STREAM_QUERIES = [
    "encoding=linear16&sample_rate=16000",
    "encoding=linear16&sample_rate=8000&channels=2",
    "encoding=linear16&sample_rate=16000&interim_results=true&vad_events=true"
    "&utterance_end_ms=1000&endpointing=100",
    "encoding=linear16&sample_rate=44100&endpointing=false&keyterm=stars",
    "",  # containerized audio: the server sniffs the bytes
]


def frames_strategy(speech: list[bytes]) -> st.SearchStrategy[list[bytes | str]]:
    binary = st.one_of(
        st.binary(max_size=1200),  # short bursts: random bytes are loud noise as PCM
        st.sampled_from(speech),
        st.integers(1, 16000).map(bytes),  # silence of any length, odd ones included
        st.just(b"RIFF\x24\x00\x00\x00WAVEfmt "),
        st.just(b"\x1a\x45\xdf\xa3"),
        st.just(b"OggS\x00\x02"),
        st.just(bytes(MAX_FRAME_BYTES + 1)),
    )
    frame = st.one_of(binary, control_like)
    return st.lists(frame, max_size=12)


async def run_stream(
    srv: ServerProcess, query: str, frames: list[bytes | str], ending: str
) -> tuple[list[dict[str, Any]], int | None]:
    messages: list[dict[str, Any]] = []
    url = f"{srv.ws_url}/v1/listen?{query}"
    async with asyncio.timeout(90), websockets.connect(url, max_size=None) as ws:

        async def read() -> None:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for raw in ws:
                    assert isinstance(raw, str), "the server sends text frames only"
                    messages.append(json.loads(raw))

        reader = asyncio.create_task(read())
        with contextlib.suppress(websockets.ConnectionClosed):
            for frame in frames:
                await ws.send(frame)
            if ending == "CloseStream":
                await ws.send(CONTROL[2])
            elif ending == "client-close":
                await ws.close()
            else:
                ws.transport.abort()
        await reader
        return messages, ws.close_code


def check_message(message: dict[str, Any]) -> None:
    kind = message.get("type")
    assert kind in MESSAGE_TYPES, message
    if kind == "Error":
        assert message["code"] in ERROR_CODES, message
        assert isinstance(message["message"], str) and message["message"]
        assert "Traceback" not in message["message"] and "/work/" not in message["message"]
    elif kind == "Results":
        alternative = message["channel"]["alternatives"][0]
        assert isinstance(alternative["transcript"], str) and alternative["transcript"].strip()
        assert isinstance(message["is_final"], bool) and message["duration"] >= 0
        for key in ("model_uuid", "model_info", "request_id"):
            assert key in message["metadata"]
    elif kind == "Metadata":
        for key in ("transaction_key", "request_id", "created", "duration", "channels", "models"):
            assert key in message
    elif kind == "SpeechStarted":
        assert message["timestamp"] >= 0
    else:
        assert message["last_word_end"] >= 0


@pytest.mark.integration
def test_any_frame_sequence_yields_only_documented_replies(
    fuzz_server: ServerProcess, speech_pieces: list[bytes]
) -> None:
    seen_closes: set[int | None] = set()

    @settings(
        max_examples=100,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        st.sampled_from(STREAM_QUERIES),
        frames_strategy(speech_pieces),
        st.sampled_from(["CloseStream", "CloseStream", "client-close", "abort"]),
    )
    def example(query: str, frames: list[bytes | str], ending: str) -> None:
        messages, close_code = asyncio.run(run_stream(fuzz_server, query, frames, ending))
        for message in messages:
            check_message(message)
        seen_closes.add(close_code)
        assert close_code != 1011, messages
        if ending != "CloseStream":
            return
        assert close_code in SERVER_CLOSE_CODES, (close_code, messages)
        if close_code != 1009:  # websockets itself closes on an oversized frame
            assert messages and messages[-1]["type"] == "Metadata", messages
        if close_code == 1000:
            assert not any(
                m["type"] == "Error" and m["code"] not in ("INVALID_MESSAGE", "INVALID_AUDIO")
                for m in messages
            ), messages
        metadata = [m for m in messages if m["type"] == "Metadata"]
        assert len(metadata) <= 1, messages

    example()
    # The server is alive, answers, and logged no traceback nor error line.
    assert fuzz_server.proc.poll() is None
    assert fuzz_server.readiness()["state"] == "ready"
    assert fuzz_server.error_lines() == [], fuzz_server.error_lines()[:5]
    assert "Traceback" not in fuzz_server.stderr_text
    print(f"fuzz: close codes seen {sorted(c or 0 for c in seen_closes)}")
