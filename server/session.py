"""Session: the pure state machine of one stream; audio, control and results in, actions out.

States and transitions (the only ones there are):

    OPEN     --CloseStream-->   CLOSING   (flush: open utterance -> final; then Metadata, 1000)
    OPEN     --shutdown()--->   DRAINING  (flush as above; then Metadata, 1001)
    OPEN     --bad container->  CLOSED    (Error INVALID_AUDIO, Metadata, 1007)
    any      --fail()-------->  CLOSED    (Error, Metadata, the given close code)
    CLOSING/DRAINING --last final released--> CLOSED

Audio becomes 16 kHz frames, each frame a speech decision, the segmenter cuts utterances.
An utterance that ends asks for a final (`Transcribe`); while it grows, interims are asked
for on a cadence measured in stream time (so results do not depend on wall-clock speed).
Speculative finals: when an open utterance has been silent for `speculate_ms`, its final
is asked for at once (`Transcribe(speculative=True)`, scheduled after finals and before
interims). If the silence becomes the endpoint, that request is promoted (`Promote`) and
becomes the final, so the final's latency is counted from the pause rather than from the
endpoint; if speech resumes first, it is withdrawn (`Cancel`). Only trailing silence
separates the audio it transcribed from the utterance's full span. Adaptive endpointing
builds on it: when the guess ends a sentence (. ? !) and the client left `endpointing` to
the server, the utterance may close after `sentence_end_ms` of silence instead.

Finals are released strictly in utterance order; interims of an utterance are dropped once
it is final. Interims of the open utterance may come before the final of an earlier one
(the scheduler serves finals first, so that only happens when the final is still running).
"""

from __future__ import annotations

import enum
import itertools
import string
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from server.asr import AsrRequest, AsrResult
from server.audio import Linear16Decoder
from server.container import ContainerDecodeError, ContainerDecoder
from server.protocol import (
    SAMPLE_RATE_HZ,
    CloseStream,
    ControlMessage,
    Error,
    ErrorCode,
    Finalize,
    KeepAlive,
    Metadata,
    ModelInfo,
    Results,
    ServerMessage,
    SpeechStarted,
    StreamOptions,
    UtteranceEnd,
    Word,
)
from vad.base import SpeechClassifier
from vad.framing import Framer, frame_dbfs
from vad.segmenter import Segmenter, SegmenterConfig, SpeechEnded
from vad.segmenter import SpeechStarted as VadSpeechStarted

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013

# Decoded audio a container stream may yield: real codecs stay under about 1.3 s per KiB
# (Opus at its lowest bitrate); beyond this the input is a decompression bomb.
CONTAINER_FREE_S = 60.0
CONTAINER_S_PER_KIB = 2.0

_STRIP = string.punctuation + "“”‘’¿¡…"


class State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    DRAINING = "draining"
    CLOSED = "closed"


@dataclass(frozen=True)
class Send:
    message: ServerMessage


@dataclass(frozen=True)
class Transcribe:
    ticket: int
    request: AsrRequest
    speculative: bool = False


@dataclass(frozen=True)
class Promote:
    """A speculative request became the utterance's final: schedule it as one."""

    ticket: int


@dataclass(frozen=True)
class Cancel:
    """A speculative request is no longer wanted (speech resumed)."""

    ticket: int


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


Action = Send | Transcribe | Promote | Cancel | Close


@dataclass(frozen=True)
class SessionConfig:
    endpointing_ms: int = 500
    max_utterance_ms: int = 25_000
    interim_interval_ms: int = 700
    first_interim_ms: int = 500
    max_pending_finals: int = 8
    speculate_ms: int | None = 240
    """Silence after which an open utterance's final is asked for early (None: never)."""
    sentence_end_ms: int | None = 300
    """Endpointing after a guess that ends a sentence (None: no adaptive endpointing)."""


@dataclass
class _Open:
    index: int
    start_frame: int
    onset_frame: int
    last_interim_frame: int | None = None


@dataclass
class _Speculation:
    utterance: int
    ticket: int
    result: AsrResult | None = None


@dataclass
class _PendingFinal:
    index: int
    ticket: int
    start_frame: int
    end_frame: int
    speech_final: bool
    from_finalize: bool
    result: AsrResult | None = None


@dataclass
class SessionCounters:
    audio_s: float = 0.0
    finals: int = 0
    interims: int = 0
    utterances: int = 0


@dataclass
class Session:
    """One stream's state; every method returns the actions the connection must carry out."""

    request_id: str
    options: StreamOptions
    config: SessionConfig
    classifier: SpeechClassifier
    model: ModelInfo
    segmenter_defaults: SegmenterConfig = field(default_factory=SegmenterConfig)
    created: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        opts = self.options
        self.state = State.OPEN
        self.counters = SessionCounters()
        self._decoder: Linear16Decoder | ContainerDecoder = (
            Linear16Decoder(opts.sample_rate_hz, opts.channels)
            if opts.encoding == "linear16"
            else ContainerDecoder()
        )
        frame_ms = self.classifier.frame_ms
        self._framer = Framer(frame_ms)
        endpointing: int | None
        if opts.endpointing_off:
            endpointing = None
        else:
            endpointing = opts.endpointing_ms or self.config.endpointing_ms
        base = self.segmenter_defaults
        self._segmenter = Segmenter(
            SegmenterConfig(
                frame_ms=frame_ms,
                pre_roll_ms=base.pre_roll_ms,
                start_window_ms=max(base.start_window_ms, frame_ms),
                start_ratio=base.start_ratio,
                endpointing_ms=endpointing,
                max_utterance_ms=self.config.max_utterance_ms,
                cut_search_ms=min(base.cut_search_ms, self.config.max_utterance_ms // 2),
                min_speech_ms=base.min_speech_ms,
                hangover_ms=base.hangover_ms,
            )
        )
        self._frame_s = frame_ms / 1000.0
        self._keep_idle_frames = self._segmenter.config.max_backdate_frames + 2
        self._frames: deque[npt.NDArray[np.float32]] = deque()
        self._frames_base = 0  # frame index of self._frames[0]
        self._open: _Open | None = None
        self._pending: deque[_PendingFinal] = deque()
        self._tickets = itertools.count(1)
        self._utterances = itertools.count()
        self._interim_ticket: int | None = None
        self._spec: _Speculation | None = None
        self._container_kib = 0.0
        self._container_s = 0.0
        self._silent_frames = 0
        self._interim_for: tuple[int, int] | None = None  # (utterance index, end frame)
        self._last_word_end_s: float | None = None
        self._utterance_end_sent = True
        self._hotwords = " ".join(opts.keyterms) or None
        self._adaptive = (
            self.config.sentence_end_ms is not None
            and endpointing is not None
            and opts.endpointing_ms is None
            and self.config.sentence_end_ms < endpointing
        )
        self._endpointing_ms = endpointing
        self._close_code = CLOSE_NORMAL

    # ------------------------------------------------------------------ inputs

    @property
    def stream_s(self) -> float:
        return self._segmenter.frames_seen * self._frame_s

    @property
    def backlog(self) -> int:
        """Finals asked for and not yet released: the connection pauses reading at the limit."""
        return len(self._pending)

    @property
    def backlog_full(self) -> bool:
        return self.backlog >= self.config.max_pending_finals

    def feed_audio(self, data: bytes) -> list[Action]:
        if self.state is not State.OPEN:
            return []  # after CloseStream or during a drain audio is not transcribed
        try:
            samples = self._decoder.feed(data)
        except ContainerDecodeError as exc:
            return self.fail("INVALID_AUDIO", str(exc), CLOSE_INVALID_DATA)
        if isinstance(self._decoder, ContainerDecoder):
            self._container_kib += len(data) / 1024
            self._container_s += len(samples) / SAMPLE_RATE_HZ
            allowed_s = CONTAINER_FREE_S + CONTAINER_S_PER_KIB * self._container_kib
            if self._container_s > allowed_s:
                # Checked before the VAD sees it: 300 kB of FLAC silence is 30 minutes.
                return self.fail(
                    "INVALID_AUDIO",
                    f"the stream decodes to {self._container_s:.0f} s of audio from "
                    f"{self._container_kib:.0f} KiB, more than real recordings do; send "
                    "linear16 or a normally encoded container",
                    CLOSE_INVALID_DATA,
                )
        return self._push_samples(samples)

    def control(self, message: ControlMessage) -> list[Action]:
        if isinstance(message, KeepAlive) or self.state is not State.OPEN:
            return []
        if isinstance(message, Finalize):
            return self._flush(speech_final=False, from_finalize=True)
        assert isinstance(message, CloseStream)
        actions = self._finish_decoder()
        self.state = State.CLOSING
        self._close_code = CLOSE_NORMAL
        actions += self._flush(speech_final=True, from_finalize=False)
        return actions + self._maybe_close()

    def shutdown(self) -> list[Action]:
        """The server is draining: finalize the open utterance, then close with 1001."""
        if self.state is not State.OPEN:
            return []
        self.state = State.DRAINING
        self._close_code = CLOSE_GOING_AWAY
        return self._flush(speech_final=True, from_finalize=False) + self._maybe_close()

    def release(self) -> None:
        """Free what outlives the state machine: a container decoder's worker thread."""
        if isinstance(self._decoder, ContainerDecoder):
            self._decoder.close()

    def fail(self, code: ErrorCode, message: str, close_code: int) -> list[Action]:
        """End the session at once with an Error, Metadata and `close_code`."""
        if self.state is State.CLOSED:
            return []
        self.state = State.CLOSED
        self._pending.clear()
        self._open = None
        return [Send(Error(code, message)), Send(self._metadata()), Close(close_code, code)]

    def on_result(self, ticket: int, result: AsrResult | BaseException) -> list[Action]:
        if self.state is State.CLOSED:
            return []
        if isinstance(result, BaseException):
            return self.fail(
                "INTERNAL",
                "transcription failed on the server for this session; reconnect to continue",
                CLOSE_INTERNAL,
            )
        if ticket == self._interim_ticket:
            self._interim_ticket = None
            return self._interim_result(result)
        if self._spec is not None and ticket == self._spec.ticket:
            self._spec.result = result  # kept until the endpoint decides its fate
            if self._adaptive and result.text.rstrip().endswith((".", "?", "!")):
                self._segmenter.set_endpointing_ms(self.config.sentence_end_ms)
            return []
        for pending in self._pending:
            if pending.ticket == ticket:
                pending.result = result
                break
        else:
            return []
        actions = self._release_finals()
        actions += self._maybe_utterance_end()
        actions += self._maybe_interim()
        return actions + self._maybe_close()

    # ------------------------------------------------------------------ audio path

    def _finish_decoder(self) -> list[Action]:
        actions: list[Action] = []
        if isinstance(self._decoder, Linear16Decoder) and self._decoder.leftover_bytes:
            actions.append(
                Send(
                    Error(
                        "INVALID_AUDIO",
                        f"the stream ended with {self._decoder.leftover_bytes} byte(s) of an "
                        "incomplete sample; linear16 needs 2 bytes per sample per channel",
                    )
                )
            )
        try:
            samples = self._decoder.finish()
        except ContainerDecodeError as exc:
            return self.fail("INVALID_AUDIO", str(exc), CLOSE_INVALID_DATA)
        return actions + self._push_samples(samples)

    def _push_samples(self, samples: npt.NDArray[np.float32]) -> list[Action]:
        self.counters.audio_s += len(samples) / SAMPLE_RATE_HZ
        actions: list[Action] = []
        for frame in self._framer.push(samples):
            self._frames.append(frame)
            is_speech = self.classifier.is_speech(frame)
            self._silent_frames = 0 if is_speech else self._silent_frames + 1
            for event in self._segmenter.push(is_speech, frame_dbfs(frame)):
                actions += self._on_vad_event(event)
            actions += self._maybe_speculate(is_speech)
        actions += self._maybe_interim()
        actions += self._maybe_utterance_end()
        self._trim_frames()
        return actions

    def _drop_speculation(self) -> list[Action]:
        spec, self._spec = self._spec, None
        if self._adaptive:
            self._segmenter.set_endpointing_ms(self._endpointing_ms)
        return [Cancel(spec.ticket)] if spec is not None else []

    def _on_vad_event(self, event: VadSpeechStarted | SpeechEnded) -> list[Action]:
        if isinstance(event, VadSpeechStarted):
            if self._adaptive:
                self._segmenter.set_endpointing_ms(self._endpointing_ms)
            self._open = _Open(next(self._utterances), event.start_frame, event.onset_frame)
            if self.options.vad_events:
                return [Send(SpeechStarted(event.onset_frame * self._frame_s))]
            return []
        opened, self._open = self._open, None
        if opened is None or event.discard:
            return self._drop_speculation()
        return self._request_final(
            opened,
            event.end_frame,
            speech_final=event.reason != "max_length",
            from_finalize=False,
        )

    def _maybe_speculate(self, is_speech: bool) -> list[Action]:
        if self._spec is not None and is_speech:
            return self._drop_speculation()  # speech resumed: that guess is stale
        spec = self._spec
        opened = self._open
        limit_ms = self.config.speculate_ms
        if (
            spec is not None
            or opened is None
            or limit_ms is None
            or self.state is not State.OPEN
            or self._silent_frames != self._frames_for(limit_ms)
        ):
            return []
        ticket = next(self._tickets)
        self._spec = _Speculation(opened.index, ticket)
        audio = self._audio(opened.start_frame, self._segmenter.frames_seen)
        request = AsrRequest(audio, self.options.language, self._hotwords, final=True)
        return [Transcribe(ticket, request, speculative=True)]

    def _flush(self, *, speech_final: bool, from_finalize: bool) -> list[Action]:
        event = self._segmenter.flush()
        opened, self._open = self._open, None
        if event is None or opened is None or event.discard:
            return self._drop_speculation()
        return self._request_final(
            opened, event.end_frame, speech_final=speech_final, from_finalize=from_finalize
        )

    def _audio(self, start_frame: int, end_frame: int) -> npt.NDArray[np.float32]:
        lo = max(0, start_frame - self._frames_base)
        hi = max(lo, end_frame - self._frames_base)
        frames = list(itertools.islice(self._frames, lo, hi))
        if not frames:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(frames)

    def _trim_frames(self) -> None:
        if self._pending or self._open is not None:
            keep_from = min(
                [p.start_frame for p in self._pending if p.result is None]
                + ([self._open.start_frame] if self._open else [])
                + [self._segmenter.frames_seen]
            )
        else:
            keep_from = self._segmenter.frames_seen - self._keep_idle_frames
        while self._frames and self._frames_base < keep_from:
            self._frames.popleft()
            self._frames_base += 1

    def _request_final(
        self, opened: _Open, end_frame: int, *, speech_final: bool, from_finalize: bool
    ) -> list[Action]:
        self.counters.utterances += 1
        spec, self._spec = self._spec, None
        if spec is not None and spec.utterance == opened.index:
            # Nothing but silence since the guess was made: it is the final.
            pending = _PendingFinal(
                opened.index,
                spec.ticket,
                opened.start_frame,
                end_frame,
                speech_final,
                from_finalize,
                spec.result,
            )
            self._pending.append(pending)
            return [Promote(spec.ticket)] + (self._release_finals() if spec.result else [])
        actions: list[Action] = [Cancel(spec.ticket)] if spec is not None else []
        ticket = next(self._tickets)
        audio = self._audio(opened.start_frame, end_frame)
        self._pending.append(
            _PendingFinal(
                opened.index, ticket, opened.start_frame, end_frame, speech_final, from_finalize
            )
        )
        request = AsrRequest(audio, self.options.language, self._hotwords, final=True)
        return [*actions, Transcribe(ticket, request)]

    # ------------------------------------------------------------------ interims

    def _maybe_interim(self) -> list[Action]:
        opened = self._open
        if (
            not self.options.interim_results
            or self.state is not State.OPEN
            or opened is None
            or self._interim_ticket is not None
            or self._spec is not None
        ):
            return []
        now = self._segmenter.frames_seen
        if opened.last_interim_frame is None:
            due = opened.onset_frame + self._frames_for(self.config.first_interim_ms)
        else:
            due = opened.last_interim_frame + self._frames_for(self.config.interim_interval_ms)
        if now < due:
            return []
        opened.last_interim_frame = now
        ticket = next(self._tickets)
        self._interim_ticket = ticket
        self._interim_for = (opened.index, now)
        audio = self._audio(opened.start_frame, now)
        request = AsrRequest(audio, self.options.language, self._hotwords, final=False)
        return [Transcribe(ticket, request)]

    def _interim_result(self, result: AsrResult) -> list[Action]:
        target = self._interim_for
        opened = self._open
        actions = self._maybe_interim()
        if target is None or opened is None or opened.index != target[0]:
            return actions  # that utterance is already final (or waiting for one)
        if not result.text:
            return actions
        self.counters.interims += 1
        start_s = opened.start_frame * self._frame_s
        message = Results(
            request_id=self.request_id,
            model=self.model,
            start_s=start_s,
            duration_s=target[1] * self._frame_s - start_s,
            is_final=False,
            speech_final=False,
            from_finalize=False,
            transcript=result.text,
            confidence=float(np.exp(min(0.0, result.avg_logprob))),
            words=(),
        )
        return [Send(message), *actions]

    def _frames_for(self, ms: int) -> int:
        return max(1, round(ms / 1000.0 / self._frame_s))

    # ------------------------------------------------------------------ finals

    def _release_finals(self) -> list[Action]:
        actions: list[Action] = []
        while self._pending and self._pending[0].result is not None:
            pending = self._pending.popleft()
            assert pending.result is not None
            message = self._final_message(pending, pending.result)
            if message is not None:
                actions.append(Send(message))
        self._trim_frames()
        return actions

    def _final_message(self, pending: _PendingFinal, result: AsrResult) -> Results | None:
        if not result.text:
            return None
        start_s = pending.start_frame * self._frame_s
        end_s = pending.end_frame * self._frame_s
        words = tuple(
            Word(
                word=w.text.strip().strip(_STRIP).lower() or w.text.strip().lower(),
                start_s=min(max(start_s + w.start_s, start_s), end_s),
                end_s=min(max(start_s + w.end_s, start_s), end_s),
                confidence=w.probability,
                punctuated_word=w.text.strip(),
            )
            for w in result.words
        )
        confidence = (
            float(np.mean([w.confidence for w in words]))
            if words
            else float(np.exp(min(0.0, result.avg_logprob)))
        )
        self.counters.finals += 1
        if words:
            self._last_word_end_s = words[-1].end_s
            self._utterance_end_sent = False
        return Results(
            request_id=self.request_id,
            model=self.model,
            start_s=start_s,
            duration_s=end_s - start_s,
            is_final=True,
            speech_final=pending.speech_final,
            from_finalize=pending.from_finalize,
            transcript=result.text,
            confidence=confidence,
            words=words,
        )

    def _maybe_utterance_end(self) -> list[Action]:
        gap_ms = self.options.utterance_end_ms
        last = self._last_word_end_s
        if gap_ms is None or last is None or self._utterance_end_sent or self._pending:
            return []
        gap_s = gap_ms / 1000.0
        if self.stream_s - last < gap_s:
            return []
        if self._open is not None and self._open.onset_frame * self._frame_s - last < gap_s:
            return []  # speech resumed within the gap: its final will move last_word_end
        self._utterance_end_sent = True
        return [Send(UtteranceEnd(last))]

    # ------------------------------------------------------------------ closing

    def _maybe_close(self) -> list[Action]:
        if self.state not in (State.CLOSING, State.DRAINING) or self._pending:
            return []
        self.state = State.CLOSED
        reason = "CloseStream" if self._close_code == CLOSE_NORMAL else "server shutting down"
        return [Send(self._metadata()), Close(self._close_code, reason)]

    def _metadata(self) -> Metadata:
        return Metadata(
            request_id=self.request_id,
            created=self.created,
            duration_s=self.counters.audio_s,
            channels=self.options.channels,
            model=self.model,
        )
