"""API keys and origins at the handshake, against a real server started with keys.

Keys come from STREAMSCRIBE_API_KEYS and from --api-key-file; every form docs/protocol.md
names is tried with each key; missing and wrong keys get HTTP 401 with a JSON body that
does not echo them; the probes stay open, /metrics needs a key, --allowed-origins refuses
other browser origins with 403; and no key, good or bad, ever reaches the server's logs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.support.server import ServerProcess, ServerStartError, start_server

pytestmark = pytest.mark.integration

ENV_KEYS = ("env-key.0ne", "env_key~Two")
FILE_KEY = "file-key-3.x_y~z"
GOOD_KEYS = (*ENV_KEYS, FILE_KEY)
WRONG_KEYS = ("wrong-key-4711", FILE_KEY + "x", FILE_KEY[:-1], FILE_KEY.upper())
ORIGINS = ("https://good.example", "http://localhost:8000")
LISTEN = "/v1/listen?encoding=linear16&sample_rate=16000"
CLOSE_STREAM = json.dumps({"type": "CloseStream"})


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text(f"\n{FILE_KEY}\n\n", encoding="utf-8")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STREAMSCRIBE_")},
        "STREAMSCRIBE_API_KEYS": ",".join(ENV_KEYS),
    }
    srv = start_server(
        "--api-key-file", str(key_file),
        "--metrics-require-key", "true",
        "--allowed-origins", f"{ORIGINS[0]}, {ORIGINS[1]}/",
        "--log-level", "debug",
        env=env,
    )  # fmt: skip
    yield srv
    srv.stop()


def connect_kwargs(form: str, key: str) -> dict[str, object]:
    """websockets.connect() arguments that present `key` the way `form` says."""
    if form in ("Token", "Bearer", "token"):
        return {"additional_headers": {"Authorization": f"{form} {key}"}}
    if form == "subprotocol":
        return {"subprotocols": [websockets.Subprotocol("token"), websockets.Subprotocol(key)]}
    assert form == "query"
    return {"query": f"&token={key}"}


async def open_and_close(base_url: str, form: str, key: str, **extra: object) -> dict[str, object]:
    kwargs = connect_kwargs(form, key)
    url = base_url + LISTEN + str(kwargs.pop("query", ""))
    async with websockets.connect(url, **kwargs, **extra) as ws:  # type: ignore[arg-type]
        await ws.send(CLOSE_STREAM)
        messages = [json.loads(raw) async for raw in ws]
        assert ws.close_code == 1000, messages
        assert messages[-1]["type"] == "Metadata"
        assert ws.response is not None
        return {
            "subprotocol": ws.subprotocol,
            "header": ws.response.headers.get("Sec-WebSocket-Protocol"),
            "request_id": messages[-1]["request_id"],
        }


async def refused_status(url: str, **kwargs: object) -> tuple[int, bytes]:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(url, **kwargs):  # type: ignore[arg-type]
            pass
    response = info.value.response
    return response.status_code, bytes(response.body or b"")


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize("form", ["Token", "Bearer", "token", "subprotocol", "query"])
async def test_every_form_accepts_every_key(keyed: ServerProcess, form: str) -> None:
    for key in GOOD_KEYS:
        opened = await open_and_close(keyed.ws_url, form, key)
        if form == "subprotocol":
            # The browser's pair `token, KEY`: the server picks `token`, never the key.
            assert opened["subprotocol"] == "token"
            assert opened["header"] == "token"
        else:
            assert opened["subprotocol"] is None and opened["header"] is None


@pytest.mark.parametrize("form", ["Token", "Bearer", "subprotocol", "query"])
async def test_wrong_keys_get_401_without_echo(keyed: ServerProcess, form: str) -> None:
    for key in WRONG_KEYS:
        kwargs = connect_kwargs(form, key)
        url = keyed.ws_url + LISTEN + str(kwargs.pop("query", ""))
        status, body = await refused_status(url, **kwargs)
        assert status == 401, (form, key)
        error = json.loads(body)["error"]
        assert "API key" in error and key not in body.decode()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Token "},
        {"Authorization": f"Basic {base64.b64encode(f'user:{FILE_KEY}'.encode()).decode()}"},
        {"Authorization": f"Token{FILE_KEY}"},
        {"Sec-WebSocket-Protocol": "token"},
        {"Sec-WebSocket-Protocol": f"{FILE_KEY}, token"},
    ],
    ids=["none", "empty", "basic", "no-space", "token-alone", "pair-reversed"],
)
async def test_missing_or_malformed_key_gets_401(
    keyed: ServerProcess, headers: dict[str, str]
) -> None:
    status, body = await refused_status(keyed.ws_url + LISTEN, additional_headers=headers)
    assert status == 401
    assert FILE_KEY not in body.decode()


async def test_plain_get_on_listen_is_401_then_426(keyed: ServerProcess) -> None:
    status, _ = await asyncio.to_thread(http_get, keyed.http_url + LISTEN)
    assert status == 401
    auth = {"Authorization": f"Token {ENV_KEYS[0]}"}
    status, _ = await asyncio.to_thread(http_get, keyed.http_url + LISTEN, auth)
    assert status == 426


async def test_probes_stay_open_and_metrics_need_a_key(keyed: ServerProcess) -> None:
    base = keyed.http_url
    assert (await asyncio.to_thread(http_get, base + "/healthz"))[0] == 200
    assert (await asyncio.to_thread(http_get, base + "/readyz"))[0] == 200
    status, body = await asyncio.to_thread(http_get, base + "/metrics")
    assert status == 401 and b"streamscribe_" not in body
    wrong = {"Authorization": f"Bearer {WRONG_KEYS[0]}"}
    assert (await asyncio.to_thread(http_get, base + "/metrics", wrong))[0] == 401
    for headers, query in (
        ({"Authorization": f"Bearer {FILE_KEY}"}, ""),
        ({"Authorization": f"Token {ENV_KEYS[1]}"}, ""),
        ({}, f"?token={ENV_KEYS[0]}"),
    ):
        status, body = await asyncio.to_thread(http_get, base + "/metrics" + query, headers)
        assert status == 200 and b"streamscribe_sessions_active" in body


async def test_allowed_origins(keyed: ServerProcess) -> None:
    key = ENV_KEYS[0]
    for origin in ORIGINS:
        await open_and_close(keyed.ws_url, "subprotocol", key, origin=origin)
    await open_and_close(keyed.ws_url, "Token", key)  # no Origin: not a browser
    for origin in ("https://evil.example", "https://good.example.evil.example", "null"):
        status, body = await refused_status(
            keyed.ws_url + LISTEN,
            origin=origin,
            additional_headers={"Authorization": f"Token {key}"},
        )
        assert status == 403, origin
        assert json.loads(body)["error"]
    # Without a key the answer stays 401: the origin check does not reveal more.
    status, _ = await refused_status(keyed.ws_url + LISTEN, origin="https://evil.example")
    assert status == 401


async def test_keys_never_reach_the_logs(keyed: ServerProcess) -> None:
    ids = []
    for form in ("Token", "subprotocol", "query"):
        ids.append((await open_and_close(keyed.ws_url, form, FILE_KEY))["request_id"])
        kwargs = connect_kwargs(form, WRONG_KEYS[0])
        url = keyed.ws_url + LISTEN + str(kwargs.pop("query", ""))
        assert (await refused_status(url, **kwargs))[0] == 401
    for request_id in ids:
        await asyncio.to_thread(keyed.wait_for, rf"\[{request_id}\] session end")
    # Debug logging is on; every session so far has ended and logged its end.
    logs = keyed.stderr_text + "\n".join(keyed.stdout_lines)
    assert "session start" in logs
    for key in (*GOOD_KEYS, *WRONG_KEYS):
        assert key not in logs, f"{key!r} appears in the server's output"
    assert keyed.error_lines() == []


def test_key_file_must_be_readable(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="cannot read"):
        start_server("--api-key-file", str(tmp_path / "missing.txt"), timeout_s=60)


async def raw_status(port: int, path: str, headers: list[tuple[str, str]]) -> int:
    """Send one hand-made HTTP request (repeated headers allowed); return the status code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])


UPGRADE = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", base64.b64encode(b"0123456789abcdef").decode()),
    ("Sec-WebSocket-Version", "13"),
]


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ([("Authorization", f"Token {FILE_KEY}")] * 2, 401),
        ([("Authorization", f"Token {FILE_KEY}"), ("Authorization", "Token nope")], 401),
        ([("Authorization", f"Token {FILE_KEY}"), ("Origin", ORIGINS[0])], 101),
        (
            [
                ("Authorization", f"Token {FILE_KEY}"),
                ("Origin", ORIGINS[0]),
                ("Origin", ORIGINS[1]),
            ],
            400,  # a repeated Origin is ambiguous, allowed or not
        ),
        (
            [
                ("Authorization", f"Token {FILE_KEY}"),
                ("Origin", ORIGINS[0]),
                ("Origin", "https://x.example"),
            ],
            400,
        ),
        # The WebSocket layer answers 426 itself: the Upgrade header is not one "websocket".
        ([("Authorization", f"Token {FILE_KEY}"), ("Upgrade", "websocket")], 426),
    ],
    ids=[
        "auth-twice",
        "auth-good-and-bad",
        "origin",
        "origins-both-good",
        "origins-one-bad",
        "upgrade-twice",
    ],
)
async def test_repeated_headers_are_refused_cleanly(
    keyed: ServerProcess, extra: list[tuple[str, str]], status: int
) -> None:
    """Repeated headers are ambiguous: a clear 4xx, never a 500 with a traceback."""
    assert await raw_status(keyed.port, LISTEN, UPGRADE + extra) == status
    assert keyed.error_lines() == []
