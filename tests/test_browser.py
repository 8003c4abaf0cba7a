"""The live-captioning page in real headless Chromium: fake microphone fed with JFK -> captions;
with Speakers ticked, a conversation of two shared speakers -> captions coloured and named by
speaker."""

from __future__ import annotations

import contextlib
import json
import re
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cache.registry import fetch
from cache.store import default_cache_dir
from tests.support.paths import REPO_ROOT
from tests.support.process import free_port
from tests.support.random_whisper import TINY_128
from tests.support.server import ServerProcess
from tests.test_clients_file import self_signed_cert, write_wav
from tests.test_diarize import conversation

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "artifacts"
CAPTION_TIMEOUT_MS = 120_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
    ),
]

# Normalised text (lower case, letters and spaces only) of an element, for wait_for_function.
NORMALISED_JS = """
(selector) => (document.querySelector(selector)?.textContent || "")
    .toLowerCase().replace(/[^a-z' ]+/g, " ").replace(/\\s+/g, " ")
"""
JFK_PHRASE = "what your country can do for you"


@pytest.fixture(scope="module")
def fake_mic_wav(audio_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JFK with a second of silence on both sides (Chromium loops the file)."""
    with wave.open(str(audio_dir / "jfk_inaugural.wav"), "rb") as source:
        params = source.getparams()
        frames = source.readframes(source.getnframes())
    silence = b"\x00" * (params.sampwidth * params.nchannels * params.framerate)
    path = tmp_path_factory.mktemp("fake-mic") / "jfk-mic.wav"
    with wave.open(str(path), "wb") as out:
        out.setparams(params)
        out.writeframes(silence + frames + silence)
    return path


@contextlib.contextmanager
def chromium_with_microphone(wav: Path) -> Iterator[object]:
    """Headless Chromium whose fake microphone plays `wav` in a loop."""
    from playwright.sync_api import sync_playwright

    # Playwright gives every launch a fresh temporary profile (it refuses --user-data-dir).
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}",
                "--autoplay-policy=no-user-gesture-required",
                "--ignore-certificate-errors",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def browser(fake_mic_wav: Path) -> Iterator[object]:
    with chromium_with_microphone(fake_mic_wav) as chromium:
        yield chromium


def open_page(
    browser: object, server: ServerProcess, scheme: str = "http"
) -> tuple[object, list[str]]:
    from playwright.sync_api import Browser

    assert isinstance(browser, Browser)
    context = browser.new_context(accept_downloads=True, ignore_https_errors=scheme == "https")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(f"{scheme}://{server.host}:{server.port}/")
    page.wait_for_function("() => document.querySelector('#status')?.dataset.state === 'idle'")
    return page, errors


def text_of(page: object, selector: str) -> str:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    return str(page.evaluate(NORMALISED_JS, selector))


def test_page_captions_jfk_from_fake_microphone(browser: object, server: ServerProcess) -> None:
    from playwright.sync_api import Page

    page, errors = open_page(browser, server)
    assert isinstance(page, Page)
    assert page.locator("#language-field").is_hidden(), "tiny.en is English-only"
    page.click("#start")
    page.wait_for_function(
        f"""() => {{
            const norm = {NORMALISED_JS};
            return norm("#transcript").includes("{JFK_PHRASE}")
                && norm("#captions").includes("your country");
        }}""",
        timeout=CAPTION_TIMEOUT_MS,
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-captions.png"), full_page=True)

    assert page.locator("#status").get_attribute("data-state") == "live"
    latency_s = float(page.locator("#latency").get_attribute("data-seconds") or "nan")
    assert 0.0 <= latency_s < 30.0
    assert re.fullmatch(r"\d\d:\d\d", page.locator("#transcript li time").first.inner_text())

    with page.expect_download() as download_info:
        page.click("#download-srt")
    srt = Path(download_info.value.path()).read_text(encoding="utf-8")
    assert re.search(r"^1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n\S", srt)
    assert "country" in srt.lower()

    page.click("#stop")
    page.wait_for_function(
        "() => document.querySelector('#status').dataset.state === 'stopped'", timeout=60_000
    )
    assert JFK_PHRASE in text_of(page, "#transcript")
    assert errors == []


def test_page_sends_api_key_as_subprotocol(
    browser: object, server_factory: Callable[..., ServerProcess]
) -> None:
    from playwright.sync_api import Page

    keyed = server_factory("--api-key", "page-key_1")
    page, _ = open_page(browser, keyed)
    assert isinstance(page, Page)

    page.fill("#api-key", "wrong-key")
    page.click("#start")
    page.wait_for_function("() => document.querySelector('#status').dataset.state === 'error'")
    assert "API key" in page.locator("#message").inner_text()

    page.fill("#api-key", "page-key_1")
    page.click("#start")
    page.wait_for_function(
        "() => document.querySelector('#status').dataset.state === 'live'", timeout=60_000
    )
    page.wait_for_function(
        "() => document.querySelector('#transcript').textContent.trim().length > 0",
        timeout=CAPTION_TIMEOUT_MS,
    )
    page.click("#stop")
    page.wait_for_function(
        "() => document.querySelector('#status').dataset.state === 'stopped'", timeout=60_000
    )


def test_page_reconnects_and_keeps_the_transcript(
    browser: object, server_factory: Callable[..., ServerProcess]
) -> None:
    from playwright.sync_api import Page

    port = free_port()
    first = server_factory("--port", str(port))
    page, _ = open_page(browser, first)
    assert isinstance(page, Page)
    page.click("#start")
    page.wait_for_function(
        f"() => ({NORMALISED_JS})('#transcript').includes('your country')",
        timeout=CAPTION_TIMEOUT_MS,
    )
    lines_before = page.locator("#transcript li").count()

    first.stop()
    page.wait_for_function(
        "() => document.querySelector('#status').dataset.state === 'reconnecting'",
        timeout=60_000,
    )
    server_factory("--port", str(port))
    page.wait_for_function(
        "() => document.querySelector('#status').dataset.state === 'live'", timeout=60_000
    )
    # The fake microphone loops JFK: new finals arrive on the new connection.
    page.wait_for_function(
        f"() => document.querySelectorAll('#transcript li').length > {lines_before}",
        timeout=CAPTION_TIMEOUT_MS,
    )
    times = page.locator("#transcript li time").all_inner_texts()
    assert len(times) > lines_before
    seconds = [int(t[:2]) * 60 + int(t[3:]) for t in times]
    assert seconds == sorted(seconds), "transcript times continue across the reconnect"
    page.click("#stop")
    page.wait_for_function(
        "() => document.querySelector('#status').dataset.state === 'stopped'", timeout=60_000
    )


def test_page_streams_over_wss_behind_tls(
    browser: object, server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    from playwright.sync_api import Page, WebSocket

    cert, key = self_signed_cert(tmp_path)
    tls = server_factory("--tls-cert", str(cert), "--tls-key", str(key))
    page, errors = open_page(browser, tls, scheme="https")
    assert isinstance(page, Page)
    sockets: list[str] = []

    def remember(ws: WebSocket) -> None:
        sockets.append(ws.url)

    page.on("websocket", remember)
    page.click("#start")
    page.wait_for_function(
        f"() => ({NORMALISED_JS})('#transcript').includes('your country')",
        timeout=CAPTION_TIMEOUT_MS,
    )
    assert sockets and all(
        url.startswith(f"wss://127.0.0.1:{tls.port}/v1/listen?") for url in sockets
    )
    page.click("#stop")
    page.wait_for_function(
        "() => document.querySelector('#status').dataset.state === 'stopped'", timeout=60_000
    )
    assert errors == []


def test_page_shows_the_language_heard(
    browser: object, server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """On a multilingual model (a random one that always answers 'hello') the page asks
    for detection and labels each line with the language the server names."""
    from playwright.sync_api import Page

    base = fetch("whisper-base", default_cache_dir())
    model = TINY_128.build(tmp_path / "model", seed=0, tokenizer_dir=base, answer="Ġhello")
    page, errors = open_page(browser, server_factory("--model", str(model)))
    assert isinstance(page, Page)
    assert page.locator("#language-field").is_visible()
    assert page.locator("#language").input_value() == "auto"
    page.click("#start")
    page.wait_for_function(
        "() => document.querySelector('#transcript li .language')", timeout=CAPTION_TIMEOUT_MS
    )
    line = page.locator("#transcript li").first
    assert re.fullmatch(r"[a-z]{2,3}", line.locator(".language").text_content() or "")
    assert "hello" in (line.text_content() or "")
    assert page.locator("#caption-language").is_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-languages.png"), full_page=True)
    page.click("#stop")
    page.wait_for_function(
        "() => document.querySelector('#status').dataset.state === 'stopped'", timeout=60_000
    )
    assert errors == []


# ------------------------------------------------------------------------------- speakers

SPEAKER_LINES_JS = """
() => [...document.querySelectorAll('#transcript li')].map((li) => ({
    speaker: li.dataset.speaker ?? null,
    label: li.querySelector('.speaker')?.textContent ?? null,
    text: li.querySelector('.text').textContent,
    colour: getComputedStyle(li.querySelector('.text')).color,
}))
"""


def final_message(start_s: float, words: list[tuple[str, int]]) -> str:
    """A final as diarize=true sends it: (punctuated word, speaker), a word every 0.4 s."""
    return json.dumps(
        {
            "type": "Results",
            "start": start_s,
            "duration": round(0.4 * len(words) + 0.2, 2),
            "is_final": True,
            "speech_final": True,
            "channel": {
                "alternatives": [
                    {
                        "transcript": " ".join(text for text, _ in words),
                        "confidence": 0.9,
                        "words": [
                            {
                                "word": text.lower(),
                                "punctuated_word": text,
                                "start": round(start_s + 0.4 * i, 2),
                                "end": round(start_s + 0.4 * i + 0.3, 2),
                                "speaker": speaker,
                                "speaker_confidence": 0.9,
                            }
                            for i, (text, speaker) in enumerate(words)
                        ],
                    }
                ]
            },
        }
    )


def said(text: str, speaker: int) -> list[tuple[str, int]]:
    return [(word, speaker) for word in text.split()]


def test_page_splits_colours_and_names_lines_by_speaker(
    browser: object, server: ServerProcess
) -> None:
    """The page against a stand-in for the server's WebSocket (the real page and its static
    files, the real microphone path): a final whose speaker changes midway becomes two lines,
    each named and in its speaker's colour, and every export carries the labels."""
    from playwright.sync_api import Page, WebSocketRoute

    page, errors = open_page(browser, server)
    assert isinstance(page, Page)
    urls: list[str] = []
    finals = [
        final_message(0.5, said("Did you hear him?", 0) + said("Ask not <what> & more.", 1)),
        final_message(4.0, said("Yes.", 6)),
    ]

    def stand_in(ws: WebSocketRoute) -> None:
        urls.append(ws.url)
        pending = list(finals)

        def on_message(message: str | bytes) -> None:
            if isinstance(message, bytes) and pending:
                ws.send(pending.pop(0))  # one final per audio frame, once audio flows
            elif isinstance(message, str) and "CloseStream" in message:
                ws.close(code=1000)

        ws.on_message(on_message)

    page.route_web_socket(re.compile(r".*/v1/listen\?.*"), stand_in)
    page.check("#diarize")
    page.click("#start")
    page.wait_for_function("() => document.querySelectorAll('#transcript li').length >= 3")
    assert "diarize=true" in urls[0]
    assert page.locator("#diarize").is_disabled(), "not changed mid-session"
    lines: list[dict[str, Any]] = page.evaluate(SPEAKER_LINES_JS)
    assert [(x["speaker"], x["label"], x["text"]) for x in lines] == [
        ("0", "Speaker 0", "Did you hear him?"),
        ("1", "Speaker 1", "Ask not <what> & more."),
        ("6", "Speaker 6", "Yes."),
    ]
    assert lines[0]["colour"] != lines[1]["colour"]
    assert lines[0]["colour"] == lines[2]["colour"], (
        "six colours, then they cycle; the label differs"
    )
    times = page.locator("#transcript li time").all_inner_texts()
    assert times == ["00:00", "00:02", "00:04"], "the second speaker's line starts at their words"
    caption = page.locator("#caption-finals .run")
    assert caption.count() == 3
    assert page.locator("#caption-finals .speaker").all_inner_texts() == [
        "Speaker 0",
        "Speaker 1",
        "Speaker 6",
    ]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-speakers.png"), full_page=True)

    exports = {}
    for kind in ("txt", "srt", "vtt"):
        with page.expect_download() as download_info:
            page.click(f"#download-{kind}")
        exports[kind] = Path(download_info.value.path()).read_text(encoding="utf-8")
    assert exports["txt"] == (
        "[Speaker 0] Did you hear him?\n[Speaker 1] Ask not <what> & more.\n[Speaker 6] Yes.\n"
    )
    assert "\n[Speaker 1] Ask not <what> & more.\n\n" in exports["srt"]
    assert "\n<v Speaker 1>Ask not &lt;what&gt; &amp; more.\n\n" in exports["vtt"]

    page.click("#stop")
    page.wait_for_function("() => document.querySelector('#status').dataset.state === 'stopped'")
    page.uncheck("#diarize")
    page.click("#clear")
    page.click("#start")
    page.wait_for_function("() => document.querySelectorAll('#transcript li').length >= 2")
    assert "diarize" not in urls[1]
    page.click("#stop")
    page.wait_for_function("() => document.querySelector('#status').dataset.state === 'stopped'")
    assert errors == []


def test_page_says_when_the_server_cannot_label_speakers(
    browser: object, server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """A server without the speaker encoder refuses diarize=true with 400; the page cannot
    read that answer, so it tries the same stream without speakers and names the cause."""
    from playwright.sync_api import Page

    bare = server_factory("--cache-dir", str(tmp_path))  # no resemblyzer-encoder there
    page, _ = open_page(browser, bare)
    assert isinstance(page, Page)
    page.check("#diarize")
    page.click("#start")
    page.wait_for_function(
        "() => document.querySelector('#status').dataset.state === 'error'", timeout=60_000
    )
    message = page.locator("#message").inner_text()
    assert "refused diarize" in message and "Speakers" in message, message
    assert "API key" not in message
    assert not page.locator("#diarize").is_disabled()


@pytest.fixture(scope="module")
def conversation_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LJ Speech's reader, Kennedy, the reader again, a second of silence on both sides."""
    pcm, _ = conversation()
    silence = bytes(32000)
    return write_wav(
        tmp_path_factory.mktemp("fake-mic") / "conversation.wav", silence + pcm + silence
    )


def test_page_captions_a_conversation_by_speaker(
    conversation_wav: Path,
    server_factory: Callable[..., ServerProcess],
    speaker_weights: Path,
) -> None:
    """The real thing: the speaker encoder on the server, two voices from the microphone."""
    from playwright.sync_api import Page

    diarizing = server_factory("--speaker-model", str(speaker_weights))
    with chromium_with_microphone(conversation_wav) as chromium:
        page, errors = open_page(chromium, diarizing)
        assert isinstance(page, Page)
        page.check("#diarize")
        page.click("#start")
        page.wait_for_function(
            """() => new Set([...document.querySelectorAll('#transcript li[data-speaker]')]
                .map((li) => li.dataset.speaker)).size >= 2""",
            timeout=CAPTION_TIMEOUT_MS,
        )
        lines: list[dict[str, Any]] = page.evaluate(SPEAKER_LINES_JS)
        assert all(x["label"] == f"Speaker {x['speaker']}" for x in lines), lines
        colours = {x["speaker"]: x["colour"] for x in lines}
        assert len(set(colours.values())) == len(colours) >= 2, colours
        kennedy = next(x for x in lines if "fellow americans" in x["text"].lower())
        reader = next(x for x in lines if "printing" in x["text"].lower())
        assert kennedy["speaker"] != reader["speaker"], lines
        assert page.locator("#caption-finals .speaker").count() >= 2
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-conversation.png"), full_page=True)
        page.click("#stop")
        page.wait_for_function(
            "() => document.querySelector('#status').dataset.state === 'stopped'", timeout=60_000
        )
        assert errors == []
