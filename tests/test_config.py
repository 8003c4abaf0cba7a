"""Settings: flags, environment variables, precedence and actionable errors."""

from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path

import pytest

from cache.store import DEFAULT_RESERVE_BYTES
from server import __main__ as server_main
from server.config import (
    DEFAULT_CACHE_RESERVE_BYTES,
    BatchSettings,
    ConfigError,
    Device,
    EngineSettings,
    LimitSettings,
    StreamSettings,
    load,
    resolve,
)
from server.session import SessionConfig
from tests.support.paths import REPO_ROOT


def test_defaults() -> None:
    s = load([], {})
    assert s.network.port == 8000 and s.model.model == "tiny.en"
    assert s.limits.max_frame_bytes == 1 << 20 and s.auth.api_keys == ()


def test_cli_beats_env_beats_default() -> None:
    env = {"STREAMSCRIBE_PORT": "9000", "STREAMSCRIBE_MAX_SESSIONS": "5"}
    s = load(["--port", "9100"], env)
    assert s.network.port == 9100 and s.limits.max_sessions == 5


def test_api_keys_from_flags_env_and_file(tmp_path: Path) -> None:
    keyfile = tmp_path / "keys"
    keyfile.write_text("k-file\n\n")
    s = load(["--api-key", "k1", "--api-key", "k2", "--api-key-file", str(keyfile)], {})
    assert s.auth.api_keys == ("k1", "k2", "k-file")
    assert load([], {"STREAMSCRIBE_API_KEYS": "a, b"}).auth.api_keys == ("a", "b")


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--port", "70000"], {}, "--port"),
        ([], {"STREAMSCRIBE_WORKERS": "0"}, "STREAMSCRIBE_WORKERS"),
        (["--device", "tpu"], {}, "--device"),
        (["--api-key", "bad key!"], {}, "A-Z"),
        (["--tls-cert", "/nonexistent.pem"], {}, "--tls-key"),
        (["--max-utterance-s", "40"], {}, "30 s"),
        (["--metrics-require-key", "true"], {}, "--api-key"),
    ],
)
def test_invalid_settings_say_what_to_fix(
    argv: list[str], env: dict[str, str], needle: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(argv, env)
    assert needle in str(info.value)


def test_auto_is_none_until_resolved() -> None:
    s = load([], {})
    assert (s.model.device, s.model.compute_type) == (None, None)
    assert (s.scheduler.max_batch, s.scheduler.batch_wait_ms, s.scheduler.pack_window_s) == (
        None,
        None,
        None,
    )
    explicit = ["--device", "auto", "--max-batch", "auto", "--pack-window-s", "AUTO"]
    assert load(explicit, {}).scheduler == s.scheduler and load(explicit, {}).model == s.model


@pytest.mark.parametrize(
    ("argv", "device", "engine", "batching"),
    [
        ([], "cpu", ("int8", 30.0), (16, 0)),
        ([], "cuda", ("float16", 0.0), (32, 10)),
        (["--pack-window-s", "0"], "cpu", ("int8", 0.0), (1, 0)),
        (["--pack-window-s", "12", "--max-batch", "4"], "cuda", ("float16", 12.0), (4, 10)),
        (
            ["--compute-type", "int8_float16", "--batch-wait-ms", "0"],
            "cuda",
            ("int8_float16", 0.0),
            (32, 0),
        ),
    ],
)
def test_resolve_decides_every_auto_for_the_device(
    argv: list[str], device: Device, engine: tuple[str, float], batching: tuple[int, int]
) -> None:
    settings = load([*argv, "--workers", "3", "--beam-size", "2", "--cpu-threads", "4"], {})
    resolved = resolve(settings, device)
    assert resolved.engine == EngineSettings(
        device=device,
        compute_type=engine[0],
        cpu_threads=4,
        workers=3,
        beam_size=2,
        pack_window_s=engine[1],
    )
    assert resolved.batching == BatchSettings(
        workers=3, max_batch=batching[0], batch_wait_ms=batching[1]
    )


def test_stream_defaults_are_the_sessions_defaults() -> None:
    assert StreamSettings().session_config(LimitSettings()) == SessionConfig()
    assert DEFAULT_CACHE_RESERVE_BYTES == DEFAULT_RESERVE_BYTES


def test_session_knobs_reach_the_session_config() -> None:
    argv = ["--speculate-ms", "120", "--sentence-end-ms", "250", "--context-s", "2.5"]
    env = {"STREAMSCRIBE_CONTEXT_GAP_MS": "1500", "STREAMSCRIBE_MAX_PENDING_FINALS": "3"}
    s = load([*argv, "--max-utterance-s", "12.5"], env)
    assert s.stream.session_config(s.limits) == SessionConfig(
        max_utterance_ms=12_500,
        max_pending_finals=3,
        speculate_ms=120,
        sentence_end_ms=250,
        context_ms=2_500,
        context_gap_ms=1_500,
    )


@pytest.mark.parametrize("off", ["0", "off", "None"])
def test_zero_or_off_turns_a_session_knob_off(off: str) -> None:
    flags = ("--speculate-ms", "--sentence-end-ms", "--context-s", "--context-gap-ms")
    config = load([p for f in flags for p in (f, off)], {}).stream.session_config(LimitSettings())
    assert (config.speculate_ms, config.sentence_end_ms) == (None, None)
    assert (config.context_ms, config.context_gap_ms) == (None, None)
    assert load(["--context-s", "0.0"], {}).stream.context_s is None


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--max-batch", "0"], "--max-batch"),
        (["--batch-wait-ms", "-1"], "--batch-wait-ms"),
        (["--pack-window-s", "-1"], "between 5 and 30"),
        (["--pack-window-s", "3"], "--pack-window-s"),
        (["--context-s", "40"], "--context-s"),
        (["--sentence-end-ms", "5"], "--sentence-end-ms"),
        (["--speculate-ms", "soon"], "--speculate-ms"),
        (["--cache-reserve-bytes", "-1"], "--cache-reserve-bytes"),
    ],
)
def test_auto_and_off_flags_refuse_the_old_spellings_and_nonsense(
    argv: list[str], needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        load(argv, {})


def test_cache_settings_come_from_flags_and_variables(tmp_path: Path) -> None:
    env = {"STREAMSCRIBE_CACHE_DIR": str(tmp_path), "STREAMSCRIBE_CACHE_RESERVE_BYTES": "0"}
    model = load([], env).model
    assert (model.cache_dir, model.cache_reserve_bytes) == (tmp_path, 0)


def test_api_keys_stay_out_of_repr() -> None:
    settings = load(["--api-key", "sekrit-key"], {})
    assert settings.auth.api_keys == ("sekrit-key",)
    assert "sekrit-key" not in repr(settings) and "sekrit-key" not in str(settings)


def test_help_shows_defaults_and_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load(["--help"], {})
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: python -m server ")
    for shown in (
        "(default: 8000) [STREAMSCRIBE_PORT]",
        "(default: auto) [STREAMSCRIBE_MAX_BATCH]",
        "(default: 240) [STREAMSCRIBE_SPECULATE_MS]",
        "(default: 20.0) [STREAMSCRIBE_CONTEXT_S]",
        "(default: no limit) [STREAMSCRIBE_CONTEXT_GAP_MS]",
        "(default: info) [STREAMSCRIBE_LOG_LEVEL]",
        "[STREAMSCRIBE_API_KEYS]",
    ):
        assert shown in text


def test_each_entry_point_names_itself(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["streamscribe"].partition(":")
    console_script = getattr(importlib.import_module(module), name)
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/streamscribe", "--help"])
    with pytest.raises(SystemExit):
        console_script()
    assert capsys.readouterr().out.startswith("usage: streamscribe ")
    monkeypatch.setattr(sys, "argv", ["server/__main__.py", "--port", "nope"])
    assert server_main.main() == 2
    assert capsys.readouterr().err.startswith("python -m server: configuration error: --port")
