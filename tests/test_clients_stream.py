"""Pure tests of the client plumbing: listen URLs, backoff, the mic buffer, the console."""

from __future__ import annotations

import io
from urllib.parse import parse_qs, urlsplit

import pytest

from clients.cli import CaptionRouter
from clients.console import CLEAR_LINE, LiveConsole
from clients.mic import Backoff, ChunkBuffer
from clients.stream import BadUrl, HandshakeRefused, ServerClosed, StreamConfig, listen_url
from server.protocol import Error, from_json


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def test_listen_url_defaults() -> None:
    url = listen_url(StreamConfig(url="ws://127.0.0.1:8000"))
    assert url.startswith("ws://127.0.0.1:8000/v1/listen?")
    assert query(url) == {
        "encoding": ["linear16"],
        "sample_rate": ["16000"],
        "channels": ["1"],
        "interim_results": ["false"],
    }


def test_listen_url_maps_http_and_keeps_proxy_prefix() -> None:
    url = listen_url(
        StreamConfig(url="https://example.org/asr/?x=1", language="en", interim_results=True)
    )
    parts = urlsplit(url)
    assert (parts.scheme, parts.path) == ("wss", "/asr/v1/listen")
    assert query(url)["language"] == ["en"]
    assert query(url)["interim_results"] == ["true"]
    assert query(url)["x"] == ["1"]
    full = listen_url(StreamConfig(url="ws://h:1/v1/listen", sample_rate_hz=48000))
    assert urlsplit(full).path == "/v1/listen"
    assert query(full)["sample_rate"] == ["48000"]


def test_listen_url_asks_for_translation() -> None:
    url = listen_url(StreamConfig(url="ws://h:1", language="multi", translate=True))
    assert query(url)["task"] == ["translate"] and query(url)["language"] == ["multi"]
    assert "task" not in query(listen_url(StreamConfig(url="ws://h:1")))


def test_captions_name_the_languages_heard() -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    router = CaptionRouter("text", show_interim=False, output=None, stdout=stdout, stderr=stderr)
    raws = (
        '{"type":"Results","is_final":true,"channel":{"alternatives":'
        '[{"transcript":"Hallo.","languages":["de"],"words":[]}]}}',
        '{"type":"Results","is_final":true,"channel":{"alternatives":'
        '[{"transcript":"Hello.","words":[]}]}}',
    )
    for raw in raws:
        router.handle(from_json(raw), raw)
    assert stdout.getvalue() == "[de] Hallo.\nHello.\n"


def test_listen_url_asks_for_speakers() -> None:
    assert query(listen_url(StreamConfig(url="ws://h:1", diarize=True)))["diarize"] == ["true"]
    assert "diarize" not in query(listen_url(StreamConfig(url="ws://h:1")))


def test_captions_name_the_speakers_after_the_languages() -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    router = CaptionRouter("text", show_interim=False, output=None, stdout=stdout, stderr=stderr)
    words = ",".join(
        f'{{"word":"{w.lower()}","punctuated_word":"{w}","start":{i},"speaker":{who}}}'
        for i, (w, who) in enumerate([("Hallo.", 1), ("Ja,", 0), ("hallo.", 0)])
    )
    raws = (
        '{"type":"Results","is_final":true,"channel":{"alternatives":'
        f'[{{"transcript":"Hallo. Ja, hallo.","languages":["de"],"words":[{words}]}}]}}}}',
        '{"type":"Results","is_final":true,"channel":{"alternatives":'
        '[{"transcript":"Yes.","words":[{"word":"yes","start":5,"speaker":1}]}]}}',
    )
    for raw in raws:
        router.handle(from_json(raw), raw)
    assert stdout.getvalue() == (
        "[de] [Speaker 1] Hallo.\n[de] [Speaker 0] Ja, hallo.\n[Speaker 1] Yes.\n"
    )


@pytest.mark.parametrize("bad", ["127.0.0.1:8000", "ftp://host", "ws://"])
def test_listen_url_rejects_unusable_addresses(bad: str) -> None:
    with pytest.raises(BadUrl, match="--url"):
        listen_url(StreamConfig(url=bad))


def test_error_messages_say_what_to_do() -> None:
    refused = HandshakeRefused(401, "missing or invalid API key")
    assert "--token" in str(refused) and not refused.retryable
    assert HandshakeRefused(503, "loading").retryable
    overloaded = ServerClosed(1013, "", Error("OVERLOADED", "the server is busy"))
    assert "OVERLOADED" in str(overloaded) and overloaded.retryable
    assert not ServerClosed(1007, "bad audio", None).retryable


def test_backoff_doubles_caps_and_restarts_after_a_stable_connection() -> None:
    backoff = Backoff(initial_s=0.5, factor=2.0, max_s=4.0, stable_s=10.0)
    assert [backoff.next_delay_s(0.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.opened(100.0)
    assert backoff.next_delay_s(100.2) == 4.0, "accepted then dropped at once: keep backing off"
    backoff.opened(200.0)
    assert backoff.next_delay_s(260.0) == 0.5, "a connection that lasted starts over"


async def test_chunk_buffer_keeps_order_drops_oldest_and_ends_on_close() -> None:
    buffer = ChunkBuffer(max_bytes=6)
    for chunk in (b"aa", b"bb", b"cc", b"dd"):
        buffer.put(chunk)
    assert buffer.dropped_bytes == 2
    assert await buffer.get() == b"bb"
    buffer.close()
    buffer.put(b"ignored")
    assert [await buffer.get(), await buffer.get(), await buffer.get()] == [b"cc", b"dd", None]


def test_console_rewrites_interim_in_place_and_prints_finals() -> None:
    out = io.StringIO()
    console = LiveConsole(out, show_interim=True, width=20)
    console.interim("ask not")
    console.interim("ask not what your country can do")
    console.final("Ask not what your country can do for you.")
    text = out.getvalue()
    assert text.startswith(CLEAR_LINE + "ask not" + CLEAR_LINE)
    interim_line = text.split(CLEAR_LINE)[2]
    assert len(interim_line) <= 19 and interim_line.endswith("can do")
    assert text.endswith(CLEAR_LINE + "Ask not what your country can do for you.\n")


def test_router_sends_transcript_to_file_and_errors_to_stderr() -> None:
    stdout, stderr, output = io.StringIO(), io.StringIO(), io.StringIO()
    router = CaptionRouter("vtt", show_interim=False, output=output, stdout=stdout, stderr=stderr)
    raw_final = (
        '{"type":"Results","start":0.5,"duration":1.5,"is_final":true,'
        '"channel":{"alternatives":[{"transcript":"Hi there.","words":[]}]}}'
    )
    raw_error = '{"type":"Error","code":"INVALID_MESSAGE","message":"Send JSON."}'
    for raw in (raw_final, raw_error):
        router.handle(from_json(raw), raw)
    assert output.getvalue() == "WEBVTT\n\n00:00:00.500 --> 00:00:02.000\nHi there.\n\n"
    assert stdout.getvalue() == "Hi there.\n"
    assert stderr.getvalue() == "server error INVALID_MESSAGE: Send JSON.\n"
