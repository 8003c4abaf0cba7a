"""File transcription: one uploaded recording through a Session, on the scheduler's bulk lane.

`FileTranscriber.segments(body)` reads an upload (spooled to memory or disk) in pieces,
decodes it as the live path does (a container, or raw audio announced with `encoding`),
feeds a pure `Session`, and carries out the Session's transcriptions through the
scheduler's bulk lane, behind all live work. The Session cuts utterances with the VAD and
chains finals with context, so a file is transcribed one final at a time (one upload cannot
hog the workers), and reading pauses while its finals backlog is full (memory stays bounded
whatever the file's length). Each final is yielded as soon as it is released, together with
the engine's own result for it (the scores and tokens some response formats report).

A transcription in progress is a `Drainable`: when the server drains, it stops with a 503.

Errors (the whole tree): `FileError` with the HTTP status and a message for the client
(400 audio that cannot be decoded, 500 a failed transcription, 503 shutting down).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import IO

import numpy as np
import numpy.typing as npt

from server.audio import AudioDecodeError, decoder_for
from server.connection import SessionLog
from server.dispatch import Dispatcher
from server.protocol import SAMPLE_RATE_HZ, CloseStream, Error, Results, StreamOptions
from server.runtime import Runtime
from server.session import (
    Action,
    Cancel,
    Label,
    Promote,
    Send,
    Session,
    SpeakerLabel,
    Transcribe,
)
from server.transcription import AsrResult

log = logging.getLogger(__name__)

READ_BYTES = 64 * 1024
"""Upload bytes decoded per step (2 s of 16 kHz PCM)."""
FEED_SAMPLES = SAMPLE_RATE_HZ
"""Audio the VAD goes through in one go (about 1 ms of work); the event loop runs between."""


class FileError(Exception):
    """The file cannot be transcribed; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class FileSegment:
    """One final of the file (stream times from the file's start) and the engine's result."""

    results: Results
    asr: AsrResult


@dataclass
class _Finals:
    """Pairs each released final with its engine result: finals are released in ticket
    order and only non-empty results become finals, so the k-th final is the k-th
    non-empty final result by ticket."""

    results: dict[int, AsrResult] = field(default_factory=dict)

    def add(self, ticket: int, result: AsrResult) -> None:
        self.results[ticket] = result

    def match(self, final: Results) -> FileSegment:
        for ticket in sorted(self.results):
            result = self.results.pop(ticket)
            if result.text:
                return FileSegment(final, result)
        raise RuntimeError("a final was released without a result")


class FileTranscriber:
    """Transcribes one file; `segments()` may be iterated once."""

    def __init__(self, runtime: Runtime, options: StreamOptions, request_id: str) -> None:
        if runtime.model is None or runtime.classifier_factory is None:
            raise FileError(503, "the model is still loading; retry in a few seconds")
        self.request_id = request_id
        self.options = replace(
            options, interim_results=False, vad_events=False, utterance_end_ms=None
        )
        # Speculation and adaptive endpointing save live latency; a file has none to save.
        config = replace(runtime.session_config, speculate_ms=None, sentence_end_ms=None)
        self.session = Session(
            request_id=request_id,
            options=self.options,
            config=config,
            classifier=runtime.classifier_factory(),
            model=runtime.model,
        )
        self.warnings: list[str] = []
        self._runtime = runtime
        self._dispatcher = Dispatcher(
            runtime, request_id, self._on_result, on_labels=self._on_labels, bulk=True
        )
        self._finals = _Finals()
        self._released: list[FileSegment] = []
        self._changed = asyncio.Event()
        self._error: FileError | None = None
        self._finished = asyncio.Event()
        self._log = SessionLog(log, {"request_id": request_id})

    @property
    def duration_s(self) -> float:
        """Seconds of audio decoded so far (all of it once `segments()` is exhausted)."""
        return self.session.counters.audio_s

    async def segments(self, body: IO[bytes]) -> AsyncIterator[FileSegment]:
        """The file's finals in order, each as soon as it is released."""
        decoder = decoder_for(self.options)
        try:
            while chunk := await asyncio.to_thread(body.read, READ_BYTES):
                try:
                    samples = await decoder.feed(chunk)
                except AudioDecodeError as exc:
                    raise FileError(400, f"the audio cannot be decoded: {exc}") from exc
                await self._feed(samples)
                while self.session.backlog_full:
                    await self._wait()
                    for segment in self._take():
                        yield segment
                for segment in self._take():
                    yield segment
            try:
                tail = await decoder.finish()
            except AudioDecodeError as exc:
                raise FileError(400, f"the audio cannot be decoded: {exc}") from exc
            if tail.warning is not None:
                self.warnings.append(tail.warning)
            await self._feed(tail.samples)
            self._apply(self.session.control(CloseStream()))
            while not self.session.closed:
                await self._wait()
                for segment in self._take():
                    yield segment
            for segment in self._take():
                yield segment
        finally:
            decoder.close()
            self._dispatcher.cancel_all()
            self.session.client_gone()
            self._finished.set()

    # ------------------------------------------------------------------ Drainable

    def drain(self) -> None:
        """The server is shutting down: stop with a 503 (a file cannot finish in time)."""
        self._fail(FileError(503, "the server is shutting down; send the file again"))

    async def closed(self) -> None:
        await self._finished.wait()

    def abort(self) -> None:
        self.drain()

    # ------------------------------------------------------------------ internals

    async def _feed(self, samples: npt.NDArray[np.float32]) -> None:
        for start in range(0, len(samples), FEED_SAMPLES):
            self._apply(self.session.feed_samples(samples[start : start + FEED_SAMPLES]))
            await asyncio.sleep(0)  # live sessions run between pieces of a long file
            if self._error is not None:
                raise self._error

    async def _wait(self) -> None:
        """Until a result came in (or the transcription failed)."""
        if self._error is None and not self._released:
            self._changed.clear()
            await self._changed.wait()
        if self._error is not None:
            raise self._error

    def _take(self) -> list[FileSegment]:
        released, self._released = self._released, []
        return released

    def _fail(self, error: FileError) -> None:
        if self._error is None:
            self._error = error
        self._changed.set()

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Transcribe):
                self._dispatcher.submit(action)
            elif isinstance(action, Promote | Cancel):
                self._dispatcher.steer(action)
            elif isinstance(action, Label):
                self._dispatcher.label(action)
            elif isinstance(action, Send):
                message = action.message
                if isinstance(message, Results):
                    self._released.append(self._finals.match(message))
                elif isinstance(message, Error):
                    self._fail(FileError(500, "transcription failed on the server; retry"))
        self._changed.set()

    def _on_labels(self, ticket: int, outcome: Sequence[SpeakerLabel] | BaseException) -> None:
        if isinstance(outcome, BaseException):
            self._log.error("speaker assignment failed", exc_info=outcome)
            self._fail(FileError(500, "speaker assignment failed on the server; retry"))
            return
        self._apply(self.session.on_speakers(ticket, outcome))

    def _on_result(self, ticket: int, outcome: AsrResult | BaseException) -> None:
        if isinstance(outcome, AsrResult):
            self._finals.add(ticket, outcome)
        else:
            self._log.error("file transcription failed: %s", outcome)
        self._apply(self.session.on_result(ticket, outcome))
