"""Settings: frozen dataclasses, one section per concern; `load(argv, environ)` builds them.

Every command-line flag has an environment variable `STREAMSCRIBE_<FLAG>` (dashes become
underscores, upper case). Precedence: command line, then environment, then default.
Invalid values raise `ConfigError` with a message naming the flag and its variable.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUILTIN_MODEL = "tiny.en"
ENV_PREFIX = "STREAMSCRIBE_"


class ConfigError(ValueError):
    """A setting has an invalid value; the message says which flag and what is allowed."""


@dataclass(frozen=True)
class NetworkSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    tls_cert: Path | None = None
    tls_key: Path | None = None
    web_root: Path | None = None


@dataclass(frozen=True)
class ModelSettings:
    model: str = BUILTIN_MODEL
    cache_dir: Path | None = None
    s3_endpoint: str | None = None
    keep_models: int | None = None
    device: str = "auto"
    compute_type: str = "auto"
    cpu_threads: int = 1
    workers: int = 2
    beam_size: int = 5


@dataclass(frozen=True)
class SchedulerSettings:
    max_batch: int = 0
    """Largest batch per engine call; 0 picks by device (CPU 1, CUDA 32)."""
    batch_wait_ms: int = -1
    """How long a non-full batch may wait for company; -1 picks by device (CPU 0, CUDA 10)."""
    max_queue_wait_s: float = 3.0
    """New sessions are refused (1013) while the estimated wait for a final exceeds this."""
    pack_window_s: float = -1.0
    """Pack queued utterances into shared windows of this length; 0 never, -1 picks by
    device (CPU 30: every CPU call pays for a 30 s encoder pass; CUDA 0: batching there)."""


@dataclass(frozen=True)
class StreamSettings:
    vad: str = "webrtc"
    endpointing_ms: int = 500
    max_utterance_s: float = 25.0
    interim_interval_ms: int = 700
    first_interim_ms: int = 500


@dataclass(frozen=True)
class LimitSettings:
    max_sessions: int = 64
    max_frame_bytes: int = 1 << 20
    max_session_s: float = 4 * 3600.0
    idle_timeout_s: float = 10.0
    handshake_timeout_s: float = 10.0
    max_control_per_s: float = 50.0
    max_pending_finals: int = 8
    max_outgoing_finals: int = 256
    drain_timeout_s: float = 20.0
    max_upload_bytes: int = 512 << 20
    """Largest file a REST request may upload (spooled to a temporary file past 1 MiB)."""


@dataclass(frozen=True)
class AuthSettings:
    api_keys: tuple[str, ...] = ()
    metrics_require_key: bool = False
    allowed_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class LogSettings:
    level: str = "INFO"
    format: str = "text"


@dataclass(frozen=True)
class Settings:
    network: NetworkSettings = NetworkSettings()
    model: ModelSettings = ModelSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    stream: StreamSettings = StreamSettings()
    limits: LimitSettings = LimitSettings()
    auth: AuthSettings = AuthSettings()
    log: LogSettings = LogSettings()


@dataclass(frozen=True)
class _Flag:
    name: str
    section: str
    field: str
    parse: Callable[[str], Any]
    help: str
    repeatable: bool = False
    metavar: str | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be zero or more")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be a positive number")
    return value


def _pack_window(text: str) -> float:
    value = float(text)
    if value not in (-1.0, 0.0) and not 5.0 <= value <= 30.0:
        raise ValueError("must be -1 (auto), 0 (off) or between 5 and 30 seconds")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be true or false")


def _path(text: str) -> Path:
    return Path(text).expanduser()


def _optional_int(text: str) -> int | None:
    return None if text.strip() in {"", "0"} else _positive_int(text)


_FLAGS: tuple[_Flag, ...] = (
    _Flag("host", "network", "host", str, "address to bind (0.0.0.0 for all interfaces)"),
    _Flag("port", "network", "port", _port, "TCP port for WebSocket and HTTP (0: any free port)"),
    _Flag("tls-cert", "network", "tls_cert", _path, "PEM certificate: serve wss:// and https://"),
    _Flag("tls-key", "network", "tls_key", _path, "PEM private key for --tls-cert"),
    _Flag("web-root", "network", "web_root", _path, "directory of the web page served at /"),
    _Flag(
        "model",
        "model",
        "model",
        str,
        "model: 'tiny.en' (built-in, needs the [demo] extra), a local CTranslate2 Whisper "
        "directory, or s3://BUCKET/PREFIX / b2://BUCKET/PREFIX hydrated into --cache-dir",
    ),
    _Flag("cache-dir", "model", "cache_dir", _path, "local cache for hydrated models"),
    _Flag("s3-endpoint", "model", "s3_endpoint", str, "S3/B2 endpoint URL (else AWS_ENDPOINT_URL)"),
    _Flag("keep-models", "model", "keep_models", _optional_int, "keep only the newest K models"),
    _Flag("device", "model", "device", _choice("auto", "cpu", "cuda"), "inference device"),
    _Flag(
        "compute-type",
        "model",
        "compute_type",
        str,
        "CTranslate2 compute type (auto: int8 on CPU, float16 on CUDA)",
    ),
    _Flag("cpu-threads", "model", "cpu_threads", _positive_int, "intra-op threads per worker"),
    _Flag("workers", "model", "workers", _positive_int, "concurrent inference workers"),
    _Flag("beam-size", "model", "beam_size", _positive_int, "beam size for finals"),
    _Flag("max-batch", "scheduler", "max_batch", _non_negative_int, "max requests per batch"),
    _Flag(
        "batch-wait-ms", "scheduler", "batch_wait_ms", int, "max wait to fill a batch (-1: auto)"
    ),
    _Flag(
        "max-queue-wait-s",
        "scheduler",
        "max_queue_wait_s",
        _positive_float,
        "refuse new sessions while the estimated queue wait exceeds this",
    ),
    _Flag(
        "pack-window-s",
        "scheduler",
        "pack_window_s",
        _pack_window,
        "pack utterances into shared windows of this many seconds (0: off, -1: auto)",
    ),
    _Flag("vad", "stream", "vad", _choice("webrtc", "silero"), "voice activity detector"),
    _Flag("endpointing-ms", "stream", "endpointing_ms", _positive_int, "default trailing silence"),
    _Flag("max-utterance-s", "stream", "max_utterance_s", _positive_float, "cut longer speech"),
    _Flag(
        "interim-interval-ms",
        "stream",
        "interim_interval_ms",
        _positive_int,
        "audio between interim results of one session",
    ),
    _Flag("first-interim-ms", "stream", "first_interim_ms", _positive_int, "first interim after"),
    _Flag("max-sessions", "limits", "max_sessions", _positive_int, "concurrent sessions"),
    _Flag("max-frame-bytes", "limits", "max_frame_bytes", _positive_int, "largest frame"),
    _Flag("max-session-s", "limits", "max_session_s", _positive_float, "longest session"),
    _Flag("idle-timeout-s", "limits", "idle_timeout_s", _positive_float, "close idle sessions"),
    _Flag(
        "handshake-timeout-s",
        "limits",
        "handshake_timeout_s",
        _positive_float,
        "time allowed for the opening handshake",
    ),
    _Flag(
        "max-control-per-s",
        "limits",
        "max_control_per_s",
        _positive_float,
        "text frames per second a session may send",
    ),
    _Flag(
        "max-pending-finals",
        "limits",
        "max_pending_finals",
        _positive_int,
        "finals a session may have in the queue before its socket is paused",
    ),
    _Flag(
        "max-outgoing-finals",
        "limits",
        "max_outgoing_finals",
        _positive_int,
        "finals buffered for a client that does not read before it is closed",
    ),
    _Flag("drain-timeout-s", "limits", "drain_timeout_s", _positive_float, "graceful stop bound"),
    _Flag(
        "max-upload-bytes",
        "limits",
        "max_upload_bytes",
        _positive_int,
        "largest audio file a REST request may upload (413 past it; default 512 MiB: 50 min "
        "of CD-quality WAV, 4.6 h of 16 kHz mono WAV, days of compressed speech)",
    ),
    _Flag(
        "api-key",
        "auth",
        "api_keys",
        str,
        "accepted API key (repeatable; env STREAMSCRIBE_API_KEYS, comma separated)",
        repeatable=True,
    ),
    _Flag("api-key-file", "auth", "api_keys", _path, "file with one API key per line"),
    _Flag("metrics-require-key", "auth", "metrics_require_key", _bool, "protect /metrics"),
    _Flag(
        "allowed-origins",
        "auth",
        "allowed_origins",
        str,
        "comma-separated browser Origins allowed to connect (default: any)",
    ),
    _Flag("log-level", "log", "level", _choice("debug", "info", "warning", "error"), "log level"),
    _Flag("log-format", "log", "format", _choice("text", "json"), "log line format"),
)

_KEY_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-")


def _check_key(key: str, source: str) -> str:
    if not key or not set(key) <= _KEY_ALPHABET:
        raise ConfigError(
            f"{source}: API keys may only use A-Z a-z 0-9 . _ ~ - (so browsers can send them "
            "as a WebSocket subprotocol)"
        )
    return key


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="streamscribe: Deepgram-compatible live transcription server.",
        epilog="Every flag can also be set by the environment variable shown in brackets.",
    )
    for flag in _FLAGS:
        env_name = "STREAMSCRIBE_API_KEYS" if flag.name == "api-key" else flag.env
        parser.add_argument(
            f"--{flag.name}",
            dest=flag.name.replace("-", "_"),
            action="append" if flag.repeatable else "store",
            default=None,
            metavar=flag.metavar or flag.name.split("-")[-1].upper(),
            help=f"{flag.help} [{env_name}]",
        )
    return parser


def load(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Parse argv and environ into Settings; raise ConfigError on an invalid value."""
    args = vars(build_parser().parse_args(list(argv)))
    sections: dict[str, dict[str, Any]] = {name: {} for name in Settings.__dataclass_fields__}
    keys: list[str] = []
    for flag in _FLAGS:
        raw = args[flag.name.replace("-", "_")]
        source = f"--{flag.name}"
        if raw is None:
            env_name = "STREAMSCRIBE_API_KEYS" if flag.name == "api-key" else flag.env
            if env_name not in environ:
                continue
            raw = environ[env_name]
            source = env_name
            if flag.repeatable:
                raw = [part.strip() for part in raw.split(",") if part.strip()]
        if flag.name == "api-key":
            keys.extend(_check_key(k, source) for k in raw)
            continue
        if flag.name == "api-key-file":
            path = _path(raw)
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigError(f"{source}: cannot read {path}: {exc.strerror}") from exc
            keys.extend(_check_key(line.strip(), source) for line in lines if line.strip())
            continue
        if flag.name == "allowed-origins":
            origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
            sections["auth"]["allowed_origins"] = origins
            continue
        try:
            value = flag.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}={raw!r}: {exc}") from exc
        sections[flag.section][flag.field] = value
    if keys:
        sections["auth"]["api_keys"] = tuple(dict.fromkeys(keys))
    if "level" in sections["log"]:
        sections["log"]["level"] = sections["log"]["level"].upper()
    settings = Settings(
        network=NetworkSettings(**sections["network"]),
        model=ModelSettings(**sections["model"]),
        scheduler=SchedulerSettings(**sections["scheduler"]),
        stream=StreamSettings(**sections["stream"]),
        limits=LimitSettings(**sections["limits"]),
        auth=AuthSettings(**sections["auth"]),
        log=LogSettings(**sections["log"]),
    )
    _validate(settings)
    return settings


def _validate(settings: Settings) -> None:
    net = settings.network
    if (net.tls_cert is None) != (net.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key must be given together")
    for path in (net.tls_cert, net.tls_key):
        if path is not None and not path.is_file():
            raise ConfigError(f"TLS file {path} does not exist or is not a file")
    if not 10 <= settings.stream.endpointing_ms <= 60_000:
        raise ConfigError("--endpointing-ms must be between 10 and 60000")
    if settings.stream.max_utterance_s > 29.0:
        raise ConfigError("--max-utterance-s must be at most 29 (Whisper sees 30 s windows)")
    if settings.auth.metrics_require_key and not settings.auth.api_keys:
        raise ConfigError("--metrics-require-key needs at least one --api-key")
