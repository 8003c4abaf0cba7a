"""The live-captioning page in real headless Chromium: fake microphone fed with JFK -> captions."""

from __future__ import annotations

import re
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cache.registry import fetch
from cache.store import default_cache_dir
from tests.support.paths import REPO_ROOT
from tests.support.process import free_port
from tests.support.random_whisper import TINY_128
from tests.support.server import ServerProcess
from tests.test_clients_file import self_signed_cert

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


@pytest.fixture
def browser(fake_mic_wav: Path) -> Iterator[object]:
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
                f"--use-file-for-fake-audio-capture={fake_mic_wav}",
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
