"""Runtime: the live state one server process shares between its HTTP routes and sessions."""

from __future__ import annotations

import contextlib
import enum
import functools
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from server.asr import WhisperEngine
from server.config import Settings
from server.metrics import Metrics
from server.protocol import ModelInfo
from server.scheduler import Scheduler
from server.session import SessionConfig
from server.transcription import AsrRequest, AsrResult
from vad.base import SpeechClassifier

if TYPE_CHECKING:
    from server.speakers.encoder import SpeakerEncoder


class ProgressReport(Protocol):
    def as_dict(self) -> dict[str, object]: ...


class Drainable(Protocol):
    """An open session as the server's lifecycle sees it."""

    def drain(self) -> None:
        """Finalize what is open and close (the server is shutting down)."""

    async def closed(self) -> None:
        """Return once the session's connection is gone."""

    def abort(self) -> None:
        """Drop the connection at once (the drain timeout passed)."""


class Phase(enum.Enum):
    STARTING = "starting"
    HYDRATING = "hydrating"
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


def model_info(name: str, version: str) -> ModelInfo:
    return ModelInfo(
        name=name,
        version=version,
        arch="whisper",
        uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"streamscribe:{name}:{version}")),
    )


@dataclass
class Speakers:
    """The speaker encoder for diarize=true: shared by all sessions (read-only once loaded),
    loaded on first use so that a server nobody asks to diarize pays nothing for it."""

    weights: Path | None = None
    _encoder: SpeakerEncoder | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def available(self) -> bool:
        return self.weights is not None

    def encoder(self) -> SpeakerEncoder:
        """The loaded encoder (blocks while loading: call it off the event loop)."""
        from server.speakers.encoder import SpeakerEncoder

        assert self.weights is not None
        with self._lock:
            if self._encoder is None:
                self._encoder = SpeakerEncoder.load(self.weights)
            return self._encoder


@dataclass
class Runtime:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    phase: Phase = Phase.STARTING
    progress: ProgressReport | None = None
    model_source: str = ""
    engine: WhisperEngine | None = None
    scheduler: Scheduler[AsrRequest, AsrResult] | None = None
    model: ModelInfo | None = None
    classifier_factory: Callable[[], SpeechClassifier] | None = None
    speakers: Speakers = field(default_factory=Speakers)
    connections: set[Drainable] = field(default_factory=set)

    @functools.cached_property
    def session_config(self) -> SessionConfig:
        """Every session's configuration, built once from the stream and limit settings."""
        return self.settings.stream.session_config(self.settings.limits)

    session_cap: int = 64
    """The session limit: --max-sessions, or what the resources hold (set at startup)."""

    @property
    def max_sessions(self) -> int:
        return self.session_cap

    @contextlib.contextmanager
    def session(self, session: Drainable) -> Iterator[None]:
        """While open, `session` (a live stream or a file) counts: towards the session
        limit, in the sessions metrics, and among those a drain waits for."""
        self.connections.add(session)
        self.metrics.sessions_total.inc()
        self.metrics.sessions_active.inc()
        try:
            yield
        finally:
            self.connections.discard(session)
            self.metrics.sessions_active.dec()

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY and self.scheduler is not None

    def readiness(self) -> dict[str, object]:
        body: dict[str, object] = {"state": self.phase.value}
        if self.phase in (Phase.HYDRATING, Phase.STARTING, Phase.LOADING):
            body["progress"] = self.progress.as_dict() if self.progress else {}
        if self.scheduler is not None:
            body["sessions"] = len(self.connections)
            body["max_sessions"] = self.max_sessions
            body["queue_depth"] = self.scheduler.depth
            body["estimated_final_wait_s"] = round(self.scheduler.estimated_final_wait_s(), 3)
        return body
