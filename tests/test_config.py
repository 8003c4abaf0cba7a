"""Settings: flags, environment variables, precedence and actionable errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ConfigError, load


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
