"""Settings: frozen dataclasses, one section per concern; `load(argv, environ)` builds them.

Every command-line flag has an environment variable `STREAMSCRIBE_<FLAG>` (dashes become
underscores, upper case). Precedence: command line, then environment, then default.
Invalid values raise `ConfigError` with a message naming the flag and its variable.

`None` in a setting means "auto" (decided by `resolve` once the device is known) or "off",
as its field says. `resolve(settings, device)` decides every auto once, in one pure
function; each section builds its component's configuration from there
(`StreamSettings.session_config`, `Resolved.engine`, `Resolved.batching`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from server.session import SessionConfig

BUILTIN_MODEL = "tiny.en"
ENV_PREFIX = "STREAMSCRIBE_"
DEFAULT_CACHE_RESERVE_BYTES = 64 * 1024 * 1024
"""The same as cache.store's default (tests/test_config.py checks)."""
MIN_PACK_WINDOW_S = 5.0
MAX_PACK_WINDOW_S = 30.0
MAX_CONTEXT_S = 29.0

Device = Literal["cpu", "cuda"]
DEVICES: tuple[Device, ...] = ("cpu", "cuda")


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
    """None: the user's cache directory (cache.store.default_cache_dir)."""
    cache_reserve_bytes: int = DEFAULT_CACHE_RESERVE_BYTES
    s3_endpoint: str | None = None
    keep_models: int | None = None
    device: Device | None = None
    """None: auto (CUDA when a GPU is visible, else CPU)."""
    compute_type: str | None = None
    """None: auto (float16 on CUDA, int8 on CPU)."""
    cpu_threads: int = 1
    workers: int = 2
    beam_size: int = 5
    speaker_model: Path | None = None
    """resemblyzer's pretrained.pt for diarize=true (None: the copy `python -m cache fetch
    resemblyzer-encoder` put in the cache, if any)."""


@dataclass(frozen=True)
class SchedulerSettings:
    max_batch: int | None = None
    """Largest batch per engine call; None: auto (CUDA 32; CPU 16 when packing, else 1)."""
    batch_wait_ms: int | None = None
    """How long a non-full batch may wait for company; None: auto (CUDA 10, CPU 0)."""
    max_queue_wait_s: float = 3.0
    """New sessions are refused (1013) while the estimated wait for a final exceeds this."""
    pack_window_s: float | None = None
    """Pack queued utterances into shared windows of this length; 0: never; None: auto
    (CPU 30: every CPU call pays for a 30 s encoder pass; CUDA 0: batching there)."""


@dataclass(frozen=True)
class StreamSettings:
    vad: str = "either"
    """webrtc, silero, or either (speech when one of them says so: see vad/either.py)."""
    endpointing_ms: int = 500
    max_utterance_s: float = 25.0
    interim_interval_ms: int = 700
    first_interim_ms: int = 500
    speculate_ms: int | None = 240
    """Silence after which an open utterance's final is asked for early, and where a final's
    audio ends after its last voiced frame; None: never (finals end at the endpoint)."""
    sentence_end_ms: int | None = 300
    """Endpointing after a guess that ends a sentence; None: no adaptive endpointing."""
    context_s: float | None = 20.0
    """Preceding audio (with its transcript) a request may carry; None: no context."""
    context_gap_ms: int | None = None
    """No context across a silence longer than this; None: across any silence."""

    def session_config(self, limits: LimitSettings) -> SessionConfig:
        """Each session's configuration (the same for every session of the server)."""
        return SessionConfig(
            endpointing_ms=self.endpointing_ms,
            max_utterance_ms=round(self.max_utterance_s * 1000),
            interim_interval_ms=self.interim_interval_ms,
            first_interim_ms=self.first_interim_ms,
            max_pending_finals=limits.max_pending_finals,
            speculate_ms=self.speculate_ms,
            sentence_end_ms=self.sentence_end_ms,
            context_ms=None if self.context_s is None else round(self.context_s * 1000),
            context_gap_ms=self.context_gap_ms,
        )


@dataclass(frozen=True)
class LimitSettings:
    max_sessions: int | None = None
    """None: auto, from the descriptor limit and the memory (server/resources.py)."""
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
    api_keys: tuple[str, ...] = field(default=(), repr=False)
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


# ---------------------------------------------------------------- resolved settings


@dataclass(frozen=True)
class EngineSettings:
    """What the Whisper engine is built with, every auto decided."""

    device: Device
    compute_type: str
    cpu_threads: int
    workers: int
    beam_size: int
    pack_window_s: float
    """0: never pack."""


@dataclass(frozen=True)
class BatchSettings:
    """What the scheduler is built with, every auto decided."""

    workers: int
    max_batch: int
    batch_wait_ms: int


@dataclass(frozen=True)
class Resolved:
    """The settings that depend on the device, decided once at startup."""

    engine: EngineSettings
    batching: BatchSettings


def resolve(settings: Settings, device: Device) -> Resolved:
    """Decide every auto setting for `device` (the `--device`, or what auto found)."""
    model, scheduler = settings.model, settings.scheduler
    gpu = device == "cuda"
    pack_window_s = scheduler.pack_window_s
    if pack_window_s is None:
        # On CPU a call costs a 30 s encoder pass whatever its length: packing the 15 VAD
        # utterances of the shared audio (batches of 8, 1 thread) took 0.82 s per final
        # against 1.58 s one by one, at equal WER (tests/test_packing.py checks the WER).
        # On a GPU batching gives the throughput without the split.
        pack_window_s = 0.0 if gpu else MAX_PACK_WINDOW_S
    max_batch = scheduler.max_batch
    if max_batch is None:
        # On CPU the encoder is compute-bound: a batch of K windows costs about K single
        # calls, so unpacked it only makes the first final wait for the others (capacity
        # bench: final p95 at 4 streams 4.9 s batched vs 2.5 s unbatched); packed, a batch
        # is what fits one window. On a GPU a batch of 64 gave 2.5x the throughput.
        max_batch = 32 if gpu else (16 if pack_window_s > 0 else 1)
    batch_wait_ms = scheduler.batch_wait_ms
    if batch_wait_ms is None:
        batch_wait_ms = 10 if gpu else 0
    compute_type = model.compute_type or ("float16" if gpu else "int8")
    return Resolved(
        engine=EngineSettings(
            device=device,
            compute_type=compute_type,
            cpu_threads=model.cpu_threads,
            workers=model.workers,
            beam_size=model.beam_size,
            pack_window_s=pack_window_s,
        ),
        batching=BatchSettings(
            workers=model.workers, max_batch=max_batch, batch_wait_ms=batch_wait_ms
        ),
    )


# ---------------------------------------------------------------- flags


@dataclass(frozen=True)
class _Flag:
    name: str
    section: str
    field: str
    parse: Callable[[str], Any]
    help: str
    repeatable: bool = False
    metavar: str | None = None
    none_means: str | None = None
    """How help shows a default of None ("auto", "off"); None: no default shown."""

    @property
    def env(self) -> str:
        if self.name == "api-key":
            return ENV_PREFIX + "API_KEYS"
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


def _auto(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`auto` becomes None; anything else goes to `parse`."""

    def parse_or_auto(text: str) -> Any:
        return None if text.strip().lower() == "auto" else parse(text)

    return parse_or_auto


def _or_off(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`off`, `none` or a zero become None (off); `parse` reads the rest."""

    def parse_or_off(text: str) -> Any:
        if text.strip().lower() in {"off", "none"}:
            return None
        value = parse(text)
        return None if value == 0 else value

    return parse_or_off


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("must be zero or more")
    return value


def _pack_window(text: str) -> float:
    value = float(text)
    if value != 0.0 and not MIN_PACK_WINDOW_S <= value <= MAX_PACK_WINDOW_S:
        raise ValueError(
            f"must be auto, 0 (off) or between {MIN_PACK_WINDOW_S:g} and "
            f"{MAX_PACK_WINDOW_S:g} seconds"
        )
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
    _Flag(
        "cache-dir",
        "model",
        "cache_dir",
        _path,
        "local cache for hydrated models",
        none_means="the user's cache directory",
    ),
    _Flag(
        "cache-reserve-bytes",
        "model",
        "cache_reserve_bytes",
        _non_negative_int,
        "free space a model download must leave on the cache's disk",
    ),
    _Flag("s3-endpoint", "model", "s3_endpoint", str, "S3/B2 endpoint URL (else AWS_ENDPOINT_URL)"),
    _Flag(
        "keep-models",
        "model",
        "keep_models",
        _optional_int,
        "keep only the newest K models (0: all)",
        metavar="K",
        none_means="all",
    ),
    _Flag(
        "device",
        "model",
        "device",
        _auto(_choice(*DEVICES)),
        "inference device: auto, cpu or cuda (auto: cuda when a GPU is visible)",
        none_means="auto",
    ),
    _Flag(
        "compute-type",
        "model",
        "compute_type",
        _auto(str),
        "CTranslate2 compute type (auto: int8 on CPU, float16 on CUDA)",
        none_means="auto",
    ),
    _Flag("cpu-threads", "model", "cpu_threads", _positive_int, "intra-op threads per worker"),
    _Flag("workers", "model", "workers", _positive_int, "concurrent inference workers"),
    _Flag("beam-size", "model", "beam_size", _positive_int, "beam size for finals"),
    _Flag(
        "speaker-model",
        "model",
        "speaker_model",
        _path,
        "speaker encoder weights for diarize=true",
        none_means="the cache's resemblyzer-encoder",
    ),
    _Flag(
        "max-batch",
        "scheduler",
        "max_batch",
        _auto(_positive_int),
        "max requests per batch (auto: 32 on CUDA; on CPU 16 when packing, else 1)",
        metavar="N",
        none_means="auto",
    ),
    _Flag(
        "batch-wait-ms",
        "scheduler",
        "batch_wait_ms",
        _auto(_non_negative_int),
        "max wait to fill a batch (auto: 10 on CUDA, 0 on CPU)",
        none_means="auto",
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
        _auto(_pack_window),
        "pack utterances into shared windows of this many seconds "
        f"({MIN_PACK_WINDOW_S:g}-{MAX_PACK_WINDOW_S:g}; 0: off; auto: 30 on CPU, off on CUDA)",
        none_means="auto",
    ),
    _Flag(
        "vad",
        "stream",
        "vad",
        _choice("webrtc", "silero", "either"),
        "voice activity detector (either: speech when WebRTC or Silero says so)",
    ),
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
    _Flag(
        "speculate-ms",
        "stream",
        "speculate_ms",
        _or_off(_non_negative_int),
        "silence after which an utterance's final is computed ahead of its end; a final's "
        "audio ends this long after its last voiced frame (0: never; finals end at the endpoint)",
        none_means="off",
    ),
    _Flag(
        "sentence-end-ms",
        "stream",
        "sentence_end_ms",
        _or_off(_non_negative_int),
        "endpointing once the words so far end a sentence (0: off)",
        none_means="off",
    ),
    _Flag(
        "context-s",
        "stream",
        "context_s",
        _or_off(_non_negative_float),
        "preceding audio and transcript a final is decoded with (0: none)",
        none_means="off",
    ),
    _Flag(
        "context-gap-ms",
        "stream",
        "context_gap_ms",
        _or_off(_non_negative_int),
        "no context across a silence longer than this (0: no limit)",
        none_means="no limit",
    ),
    _Flag(
        "max-sessions",
        "limits",
        "max_sessions",
        _auto(_positive_int),
        "concurrent sessions (auto: what the descriptor limit and the memory hold)",
        none_means="auto",
    ),
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
        "accepted API key (repeatable; the variable is comma separated)",
        repeatable=True,
    ),
    _Flag("api-key-file", "auth", "api_keys", _path, "file with one API key per line"),
    _Flag(
        "metrics-require-key",
        "auth",
        "metrics_require_key",
        _bool,
        "protect /metrics with the API keys",
        metavar="BOOL",
    ),
    _Flag(
        "allowed-origins",
        "auth",
        "allowed_origins",
        str,
        "comma-separated browser Origins allowed to connect",
        none_means="any",
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


def _default_text(flag: _Flag) -> str | None:
    """The default a flag's help shows (None: none worth showing)."""
    value = getattr(getattr(Settings(), flag.section), flag.field)
    if value is None or value == ():
        return flag.none_means
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).lower() if flag.section == "log" else str(value)


def build_parser(prog: str = "python -m server") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="streamscribe: Deepgram-compatible live transcription server.",
        epilog="Every flag can also be set by the environment variable shown in brackets.",
    )
    for flag in _FLAGS:
        default = _default_text(flag)
        shown = f" (default: {default})" if default is not None else ""
        parser.add_argument(
            f"--{flag.name}",
            dest=flag.name.replace("-", "_"),
            action="append" if flag.repeatable else "store",
            default=None,
            metavar=flag.metavar or flag.name.split("-")[-1].upper(),
            help=f"{flag.help}{shown} [{flag.env}]",
        )
    return parser


def load(
    argv: Sequence[str], environ: Mapping[str, str], prog: str = "python -m server"
) -> Settings:
    """Parse argv and environ into Settings; raise ConfigError on an invalid value.

    `prog` is the command name `--help` and usage errors show.
    """
    args = vars(build_parser(prog).parse_args(list(argv)))
    sections: dict[str, dict[str, Any]] = {name: {} for name in Settings.__dataclass_fields__}
    keys: list[str] = []
    for flag in _FLAGS:
        raw = args[flag.name.replace("-", "_")]
        source = f"--{flag.name}"
        if raw is None:
            if flag.env not in environ:
                continue
            raw = environ[flag.env]
            source = flag.env
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
    sentence_end_ms = settings.stream.sentence_end_ms
    if sentence_end_ms is not None and not 10 <= sentence_end_ms <= 60_000:
        raise ConfigError("--sentence-end-ms must be 0 (off) or between 10 and 60000")
    context_s = settings.stream.context_s
    if context_s is not None and context_s > MAX_CONTEXT_S:
        raise ConfigError(
            f"--context-s must be at most {MAX_CONTEXT_S:g} (context and utterance share "
            "Whisper's 30 s window)"
        )
    if settings.auth.metrics_require_key and not settings.auth.api_keys:
        raise ConfigError("--metrics-require-key needs at least one --api-key")
