"""Session: the pure state machine of one stream; samples, control and results in, actions out.

It does no I/O, starts no threads and loads no model: the connection decodes the client's
bytes (off the event loop), runs the transcriptions it asks for and sends what it says.

States, and every transition there is (`_TRANSITIONS`):

    OPEN     --close_stream-->  CLOSING   (flush: open utterance -> final; then Metadata, 1000)
    OPEN     --shutdown------>  DRAINING  (flush as above; then Metadata, 1001)
    OPEN/CLOSING/DRAINING --fail--> CLOSED (Error, Metadata, the given close code)
    CLOSING/DRAINING --flushed--> CLOSED  (the last final was released)
    OPEN/CLOSING/DRAINING --client_gone--> CLOSED (nothing more is sent)

16 kHz samples become frames, each frame a speech decision, the segmenter cuts utterances.
An utterance that ends asks for a final (`Transcribe`); while it grows, interims are asked
for on a cadence measured in stream time (so results do not depend on wall-clock speed).

Context: Whisper hears an utterance better with what came before it. A final (and an
interim) is decoded over the stream's own preceding audio, up to `context_ms`, with the
tokens already transcribed for that audio forced as the start of the output, so the engine
only adds what follows. Context is carried only where it continues one talk: not across a
silence longer than `context_gap_ms`, never further back than the earliest word still in
the window, and only once every earlier final is in (a final waits for the one before it,
so its context is complete and results do not depend on load).

Speculative finals: when an open utterance has been silent for `speculate_ms`, its final
is asked for at once (`Transcribe(speculative=True)`, scheduled after finals and before
interims). If the silence becomes the endpoint, that request is promoted (`Promote`) and
becomes the final, so the final's latency is counted from the pause rather than from the
endpoint; if speech resumes first, it is withdrawn (`Cancel`). A final's audio ends where
its guess's does, `speculate_ms` after its last voiced frame, also when no guess was made
(it waits while the final before it is out), so what a final hears does not depend on when
results come back. Adaptive endpointing builds on it: when the guess ends a sentence
(. ? !) and the client left `endpointing` to the server, the utterance may close after
`sentence_end_ms` of silence instead.

Language: a stream whose language is detected (`language` unset on a multilingual model,
or `multi`/`auto`) tells the engine its language so far (`expected_language`: that of its
latest final with words), which a short utterance must clearly outvote to change
(server.language). When a final comes back in another language the context is forgotten:
tokens of one language are no prefix for another.

Speakers (diarize=true): before a final with words is released, the session asks for its
talkers (`Label`: the utterance's audio and word spans) and releases it once they are in
(`on_speakers`), so every final word carries a speaker. Labels are asked for in utterance
order, one at a time: the tracker that assigns them keeps per-session state.

Finals are released strictly in utterance order; interims of an utterance are dropped once
it is final.
"""

from __future__ import annotations

import enum
import itertools
import math
import string
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
from websockets.frames import CloseCode

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
from server.transcription import AsrRequest, AsrResult
from vad.base import SpeechClassifier
from vad.framing import Framer, frame_dbfs
from vad.segmenter import Segmenter, SegmenterConfig, SpeechEnded
from vad.segmenter import SpeechStarted as VadSpeechStarted

_STRIP = string.punctuation + "“”‘’¿¡…。，、！？：；「」『』（）《》"
MAX_WINDOW_MS = 29_500
"""Context and utterance together stay inside Whisper's 30 s window."""
CONTEXT_LEAD_MS = 200
"""Audio kept before the first context word, so that word is not clipped."""


class State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    DRAINING = "draining"
    CLOSED = "closed"


_TRANSITIONS: dict[tuple[State, str], State] = {
    (State.OPEN, "close_stream"): State.CLOSING,
    (State.OPEN, "shutdown"): State.DRAINING,
    **{(s, "fail"): State.CLOSED for s in (State.OPEN, State.CLOSING, State.DRAINING)},
    (State.CLOSING, "flushed"): State.CLOSED,
    (State.DRAINING, "flushed"): State.CLOSED,
    **{(s, "client_gone"): State.CLOSED for s in (State.OPEN, State.CLOSING, State.DRAINING)},
}


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
class Label:
    """Find the talker of each word of a final (diarize=true); answer with on_speakers."""

    ticket: int
    audio: npt.NDArray[np.float32]
    word_spans_s: tuple[tuple[float, float], ...]
    """(start, end) of each word, in seconds from the start of `audio`."""


@dataclass(frozen=True)
class Close:
    code: CloseCode
    reason: str


Action = Send | Transcribe | Promote | Cancel | Label | Close

SpeakerLabel = tuple[int, float]
"""(speaker, confidence) of one word."""


@dataclass(frozen=True)
class SessionConfig:
    endpointing_ms: int = 500
    max_utterance_ms: int = 25_000
    interim_interval_ms: int = 700
    first_interim_ms: int = 500
    interim_min_speech_ms: int = 300
    """An interim is asked for only when this much new speech came since the last one."""
    max_pending_finals: int = 8
    speculate_ms: int | None = 240
    """Silence after which an open utterance's final is asked for early, and where a final's
    audio ends after its last voiced frame (None: never; finals end at the endpoint)."""
    sentence_end_ms: int | None = 300
    """Endpointing after a guess that ends a sentence (None: no adaptive endpointing)."""
    context_ms: int | None = 20_000
    """Preceding audio (with its transcript) a request may carry (None: no context)."""
    context_gap_ms: int | None = None
    """No context across a silence longer than this (None: any silence)."""
    max_prefix_tokens: int = 128
    """Tokens of transcript forced ahead of an utterance (the oldest context words go first)."""


@dataclass
class _Open:
    index: int
    start_frame: int
    onset_frame: int
    last_interim_frame: int | None = None
    voiced_frames: int = 0
    voiced_at_last_interim: int = 0


@dataclass(frozen=True)
class _SpokenWord:
    """A word of a released final, in stream seconds, with the engine's tokens for it."""

    start_s: float
    end_s: float
    tokens: tuple[int, ...]


@dataclass
class _Speculation:
    utterance: int
    ticket: int
    audio_start_frame: int
    result: AsrResult | None = None


@dataclass
class _PendingFinal:
    index: int
    start_frame: int
    end_frame: int
    speech_final: bool
    from_finalize: bool
    audio_end_frame: int
    """Where the request's audio ends (see `Session._final_audio_end`)."""
    ticket: int | None = None
    """None until it is asked for (with context, once the final before it is in)."""
    audio_start_frame: int = 0
    """Where the request's audio (context included) begins."""
    result: AsrResult | None = None
    speakers: tuple[SpeakerLabel, ...] | None = None
    labelling: bool = False


@dataclass(frozen=True)
class _InterimTarget:
    utterance: int
    end_frame: int


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
        self._interim_for: _InterimTarget | None = None
        self._spec: _Speculation | None = None
        self._silent_frames = 0
        self._spoken: deque[_SpokenWord] = deque()
        self._last_word_end_s: float | None = None
        self._language: str | None = None
        """Of a stream whose language is detected: that of its latest final with words."""
        self._utterance_end_sent = True
        self._hotwords = " ".join(opts.keyterms) or None
        self._adaptive = (
            self.config.sentence_end_ms is not None
            and endpointing is not None
            and opts.endpointing_ms is None
            and self.config.sentence_end_ms < endpointing
        )
        self._endpointing_ms = endpointing
        self._close_code = CloseCode.NORMAL_CLOSURE

    # ------------------------------------------------------------------ inputs

    @property
    def stream_s(self) -> float:
        return self._segmenter.frames_seen * self._frame_s

    @property
    def in_utterance(self) -> bool:
        """Speech started and its utterance is not closed yet (the VAD's view)."""
        return self._open is not None

    @property
    def backlog(self) -> int:
        """Finals asked for and not yet released: the connection pauses reading at the limit."""
        return len(self._pending)

    @property
    def backlog_full(self) -> bool:
        return self.backlog >= self.config.max_pending_finals

    @property
    def open(self) -> bool:
        """Audio is still transcribed (no CloseStream, drain or failure yet)."""
        return self.state is State.OPEN

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def feed_samples(self, samples: npt.NDArray[np.float32]) -> list[Action]:
        """16 kHz mono float32 audio, as the connection decoded it."""
        if self.state is not State.OPEN:
            return []  # after CloseStream or during a drain audio is not transcribed
        self.counters.audio_s += len(samples) / SAMPLE_RATE_HZ
        actions: list[Action] = []
        for frame in self._framer.push(samples):
            self._frames.append(frame)
            is_speech = self.classifier.is_speech(frame)
            self._silent_frames = 0 if is_speech else self._silent_frames + 1
            if is_speech and self._open is not None:
                self._open.voiced_frames += 1
            for event in self._segmenter.push(is_speech, frame_dbfs(frame)):
                actions += self._on_vad_event(event)
            actions += self._maybe_speculate(is_speech)
        actions += self._maybe_interim()
        actions += self._maybe_utterance_end()
        self._trim_frames()
        return actions

    def control(self, message: ControlMessage) -> list[Action]:
        if isinstance(message, KeepAlive) or self.state is not State.OPEN:
            return []
        if isinstance(message, Finalize):
            return self._flush(speech_final=False, from_finalize=True)
        assert isinstance(message, CloseStream)
        self._to("close_stream")
        self._close_code = CloseCode.NORMAL_CLOSURE
        actions = self._flush(speech_final=True, from_finalize=False)
        return actions + self._maybe_close()

    def shutdown(self) -> list[Action]:
        """The server is draining: finalize the open utterance, then close with 1001."""
        if self.state is not State.OPEN:
            return []
        self._to("shutdown")
        self._close_code = CloseCode.GOING_AWAY
        return self._flush(speech_final=True, from_finalize=False) + self._maybe_close()

    def internal_error(self) -> list[Action]:
        """End the session after a failure in the server around it (1011)."""
        return self.fail(
            "INTERNAL", "internal error in this session; reconnect", CloseCode.INTERNAL_ERROR
        )

    def fail(self, code: ErrorCode, message: str, close_code: CloseCode) -> list[Action]:
        """End the session at once with an Error, Metadata and `close_code`."""
        if self.state is State.CLOSED:
            return []
        self._to("fail")
        self._forget()
        return [Send(Error(code, message)), Send(self._metadata()), Close(close_code, code)]

    def client_gone(self) -> None:
        """The client went away: nothing more will be sent, nothing more is wanted."""
        if self.state is not State.CLOSED:
            self._to("client_gone")
            self._forget()

    def on_result(self, ticket: int, result: AsrResult | BaseException) -> list[Action]:
        if self.state is State.CLOSED:
            return []
        if isinstance(result, BaseException):
            return self.fail(
                "INTERNAL",
                "transcription failed on the server for this session; reconnect to continue",
                CloseCode.INTERNAL_ERROR,
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
        return self._after_final()

    def on_speakers(self, ticket: int, labels: Sequence[SpeakerLabel]) -> list[Action]:
        """The talkers of a final's words, in word order (the answer to `Label`)."""
        if self.state is State.CLOSED:
            return []
        for pending in self._pending:
            if pending.ticket == ticket and pending.labelling:
                pending.speakers = tuple(labels)
                break
        else:
            return []
        return self._after_final()

    def _after_final(self) -> list[Action]:
        actions = self._release_finals()
        actions += self._maybe_utterance_end()
        actions += self._maybe_interim()
        return actions + self._maybe_close()

    # ------------------------------------------------------------------ state

    def _to(self, event: str) -> None:
        target = _TRANSITIONS.get((self.state, event))
        if target is None:
            raise RuntimeError(f"session: no transition from {self.state.value} on {event}")
        self.state = target

    def _forget(self) -> None:
        self._pending.clear()
        self._open = None
        self._spec = None

    # ------------------------------------------------------------------ audio path

    def _drop_speculation(self) -> list[Action]:
        spec, self._spec = self._spec, None
        if self._adaptive:
            self._segmenter.set_endpointing_ms(self._endpointing_ms)
        return [Cancel(spec.ticket)] if spec is not None else []

    def _on_vad_event(self, event: VadSpeechStarted | SpeechEnded) -> list[Action]:
        if isinstance(event, VadSpeechStarted):
            if self._adaptive:
                self._segmenter.set_endpointing_ms(self._endpointing_ms)
            self._open = _Open(
                next(self._utterances),
                event.start_frame,
                event.onset_frame,
                # The onset window is mostly voice (that is what opened it).
                voiced_frames=self._segmenter.frames_seen - event.onset_frame,
            )
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
        opened = self._open
        limit_ms = self.config.speculate_ms
        if (
            self._spec is not None
            or opened is None
            or limit_ms is None
            or self.state is not State.OPEN
            or self._silent_frames < self._frames_for(limit_ms)
            or (self._pending and self._context_on)  # its context is not complete yet
        ):
            return []
        ticket = next(self._tickets)
        end = self._final_audio_end(opened, self._segmenter.frames_seen)
        request, audio_start = self._request(opened.start_frame, end, final=True)
        self._spec = _Speculation(opened.index, ticket, audio_start)
        return [Transcribe(ticket, request, speculative=True)]

    def _flush(self, *, speech_final: bool, from_finalize: bool) -> list[Action]:
        event = self._segmenter.flush()
        opened, self._open = self._open, None
        if event is None or opened is None or event.discard:
            return self._drop_speculation()
        return self._request_final(
            opened, event.end_frame, speech_final=speech_final, from_finalize=from_finalize
        )

    def _final_audio_end(self, opened: _Open, end_frame: int) -> int:
        """Where the audio of `opened`'s final ends if the utterance ends at `end_frame`:
        `speculate_ms` after its last voiced frame, the audio a guess hears. The same frame
        whether the final is a promoted guess or (the guess held back while the final before
        it was out) asked for at the endpoint, so its text does not depend on load."""
        tail_ms = self.config.speculate_ms
        if tail_ms is None:
            return end_frame
        # The frame after the last voiced one: every frame since it was silent.
        voiced_end = self._segmenter.frames_seen - self._silent_frames
        voiced_end = max(voiced_end, opened.onset_frame + 1)
        return min(end_frame, voiced_end + self._frames_for(tail_ms))

    def _audio(self, start_frame: int, end_frame: int) -> npt.NDArray[np.float32]:
        lo = max(0, start_frame - self._frames_base)
        hi = max(lo, end_frame - self._frames_base)
        frames = list(itertools.islice(self._frames, lo, hi))
        if not frames:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(frames)

    def _trim_frames(self) -> None:
        """Drop audio nothing can ask for any more: before the open utterance, the finals
        not transcribed yet, the context they may carry, and the segmenter's pre-roll."""
        now = self._segmenter.frames_seen
        anchor = self._first_unheard_frame()
        if self.options.diarize:  # labelling needs the audio of the finals heard too
            anchor = min([anchor] + [p.start_frame for p in self._pending])
        keep_from = min(anchor, now - self._keep_idle_frames)
        if self.config.context_ms and self._spoken:
            # The next utterance may be backdated to `keep_from`: keep its context too.
            lead_s = CONTEXT_LEAD_MS / 1000
            lo_s = keep_from * self._frame_s - self.config.context_ms / 1000 - lead_s
            first_s = next((w.start_s for w in self._spoken if w.start_s >= lo_s), None)
            if first_s is not None:
                keep_from = min(keep_from, math.floor((first_s - lead_s) / self._frame_s))
        while self._frames and self._frames_base < keep_from:
            self._frames.popleft()
            self._frames_base += 1

    def _first_unheard_frame(self) -> int:
        """Where the earliest audio no result has covered yet begins: the first final not
        transcribed, else the open utterance, else the end of the stream so far. Every
        request still to come starts there or later."""
        starts = [p.start_frame for p in self._pending if p.result is None]
        if self._open is not None:
            starts.append(self._open.start_frame)
        return min(starts, default=self._segmenter.frames_seen)

    # ------------------------------------------------------------------ context

    @property
    def _context_on(self) -> bool:
        return bool(self.config.context_ms)

    def _context(self, start_frame: int, end_frame: int) -> tuple[int, tuple[int, ...]]:
        """Where the request for [start_frame, end_frame) should begin, and its prefix."""
        ms = self.config.context_ms
        if not ms or not self._spoken:
            return start_frame, ()
        start_s = start_frame * self._frame_s
        gap_ms = self.config.context_gap_ms
        if gap_ms is not None and (start_s - self._spoken[-1].end_s) * 1000 > gap_ms:
            return start_frame, ()
        lo_s = max(end_frame * self._frame_s - MAX_WINDOW_MS / 1000, start_s - ms / 1000)
        words: list[_SpokenWord] = []
        tokens = 0
        for word in reversed(self._spoken):
            if word.start_s < lo_s or tokens + len(word.tokens) > self.config.max_prefix_tokens:
                break
            words.append(word)
            tokens += len(word.tokens)
        if not words:
            return start_frame, ()
        words.reverse()
        earlier = len(self._spoken) - len(words) - 1
        floor_s = self._spoken[earlier].end_s if earlier >= 0 else 0.0
        begin_s = max(floor_s, words[0].start_s - CONTEXT_LEAD_MS / 1000)
        begin = max(self._frames_base, min(start_frame, math.floor(begin_s / self._frame_s)))
        if begin >= start_frame:
            return start_frame, ()
        return begin, tuple(t for w in words for t in w.tokens)

    def _request(
        self, start_frame: int, end_frame: int, *, final: bool, context: bool = True
    ) -> tuple[AsrRequest, int]:
        """The request for [start_frame, end_frame) and the frame its audio starts at."""
        begin, prefix = self._context(start_frame, end_frame) if context else (start_frame, ())
        request = AsrRequest(
            self._audio(begin, end_frame),
            self.options.language,
            self._hotwords,
            final=final,
            context_s=(start_frame - begin) * self._frame_s,
            prefix_tokens=prefix,
            task=self.options.task,
            expected_language=self._language if self.options.language is None else None,
        )
        return request, begin

    def _follow_language(self, result: AsrResult) -> None:
        """A detected stream's language is its latest final's; the context of another
        language is forgotten."""
        if self.options.language is not None or not result.words:
            return
        if result.language != self._language:
            self._spoken.clear()
            self._language = result.language

    def _languages(self, result: AsrResult) -> tuple[str, ...] | None:
        """The `languages` of a result (one utterance is heard in one language)."""
        return (result.language,) if self.options.report_languages else None

    def _remember(self, pending: _PendingFinal, result: AsrResult) -> None:
        """Keep the words of a released final as context for the ones after it."""
        if not self._context_on:
            return
        offset_s = pending.audio_start_frame * self._frame_s
        floor_s = self._spoken[-1].end_s if self._spoken else 0.0
        for w in result.words:
            start_s = max(floor_s, offset_s + w.start_s)
            end_s = max(start_s, offset_s + w.end_s)
            if w.tokens:
                self._spoken.append(_SpokenWord(start_s, end_s, w.tokens))
                floor_s = end_s
        assert self.config.context_ms is not None
        # Measured from the next request's start, not the stream's end: when the audio runs
        # ahead of the engine, the words a waiting final needs are kept.
        next_start_s = self._first_unheard_frame() * self._frame_s
        horizon_s = next_start_s - self.config.context_ms / 1000.0 - MAX_WINDOW_MS / 1000
        while self._spoken and self._spoken[0].end_s < horizon_s:
            self._spoken.popleft()

    # ------------------------------------------------------------------ finals

    def _request_final(
        self, opened: _Open, end_frame: int, *, speech_final: bool, from_finalize: bool
    ) -> list[Action]:
        self.counters.utterances += 1
        pending = _PendingFinal(
            opened.index,
            opened.start_frame,
            end_frame,
            speech_final,
            from_finalize,
            audio_end_frame=self._final_audio_end(opened, end_frame),
        )
        spec, self._spec = self._spec, None
        if spec is not None and spec.utterance == opened.index:
            # Nothing but silence since the guess was made: it is the final.
            pending.ticket = spec.ticket
            pending.audio_start_frame = spec.audio_start_frame
            pending.result = spec.result
            self._pending.append(pending)
            return [Promote(spec.ticket)] + (self._release_finals() if spec.result else [])
        actions: list[Action] = [Cancel(spec.ticket)] if spec is not None else []
        self._pending.append(pending)
        return actions + self._submit_finals()

    def _submit_finals(self) -> list[Action]:
        """Ask for every final that may be asked for now: with context, only the one whose
        predecessors are all in (so its context is complete); without, all of them."""
        actions: list[Action] = []
        for pending in self._pending:
            if pending.ticket is None:
                if self._context_on and actions:
                    break
                pending.ticket = next(self._tickets)
                request, pending.audio_start_frame = self._request(
                    pending.start_frame, pending.audio_end_frame, final=True
                )
                actions.append(Transcribe(pending.ticket, request))
            if self._context_on and (pending.result is None or self._awaits_speakers(pending)):
                break  # the next one's context needs this one's words, released
        return actions

    def _awaits_speakers(self, pending: _PendingFinal) -> bool:
        result = pending.result
        return bool(self.options.diarize and result and result.words and pending.speakers is None)

    def _release_finals(self) -> list[Action]:
        actions: list[Action] = []
        while self._pending and self._pending[0].result is not None:
            head = self._pending[0]
            assert head.result is not None
            if self._awaits_speakers(head):
                if not head.labelling:
                    head.labelling = True
                    actions.append(self._label(head, head.result))
                break
            pending = self._pending.popleft()
            assert pending.result is not None
            self._follow_language(pending.result)
            self._remember(pending, pending.result)
            message = self._final_message(pending, pending.result)
            if message is not None:
                actions.append(Send(message))
        actions += self._submit_finals()
        self._trim_frames()
        return actions

    def _label(self, pending: _PendingFinal, result: AsrResult) -> Label:
        assert pending.ticket is not None
        offset_s = (pending.audio_start_frame - pending.start_frame) * self._frame_s
        length_s = (pending.end_frame - pending.start_frame) * self._frame_s
        spans = tuple(
            (
                min(max(0.0, offset_s + w.start_s), length_s),
                min(max(0.0, offset_s + w.end_s), length_s),
            )
            for w in result.words
        )
        audio = self._audio(pending.start_frame, pending.end_frame)
        return Label(pending.ticket, audio, spans)

    def _final_message(self, pending: _PendingFinal, result: AsrResult) -> Results | None:
        if not result.text:
            return None
        start_s = pending.start_frame * self._frame_s
        end_s = pending.end_frame * self._frame_s
        offset_s = pending.audio_start_frame * self._frame_s
        languages = self._languages(result)
        speakers: Sequence[SpeakerLabel | None] = pending.speakers or [None] * len(result.words)
        words = tuple(
            Word(
                word=w.text.strip().strip(_STRIP).lower() or w.text.strip().lower(),
                start_s=min(max(offset_s + w.start_s, start_s), end_s),
                end_s=min(max(offset_s + w.end_s, start_s), end_s),
                confidence=w.probability,
                punctuated_word=w.text.strip(),
                language=languages[0] if languages else None,
                speaker=label[0] if label else None,
                speaker_confidence=label[1] if label else None,
            )
            for w, label in zip(result.words, speakers, strict=True)
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
            languages=languages,
        )

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
        new_speech = opened.voiced_frames - opened.voiced_at_last_interim
        if now < due or new_speech < self._frames_for(self.config.interim_min_speech_ms):
            return []  # not yet, or nothing new to say: a pause inside the utterance
        opened.last_interim_frame = now
        opened.voiced_at_last_interim = opened.voiced_frames
        ticket = next(self._tickets)
        self._interim_ticket = ticket
        self._interim_for = _InterimTarget(opened.index, now)
        # Context only when every earlier final is in: its audio would be heard twice.
        request, _ = self._request(opened.start_frame, now, final=False, context=not self._pending)
        return [Transcribe(ticket, request)]

    def _interim_result(self, result: AsrResult) -> list[Action]:
        target = self._interim_for
        opened = self._open
        actions = self._maybe_interim()
        if target is None or opened is None or opened.index != target.utterance:
            return actions  # that utterance is already final (or waiting for one)
        if not result.text:
            return actions
        self.counters.interims += 1
        start_s = opened.start_frame * self._frame_s
        message = Results(
            request_id=self.request_id,
            model=self.model,
            start_s=start_s,
            duration_s=target.end_frame * self._frame_s - start_s,
            is_final=False,
            speech_final=False,
            from_finalize=False,
            transcript=result.text,
            confidence=float(np.exp(min(0.0, result.avg_logprob))),
            words=(),
            languages=self._languages(result),
        )
        return [Send(message), *actions]

    def _frames_for(self, ms: int) -> int:
        return max(1, round(ms / 1000.0 / self._frame_s))

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
        self._to("flushed")
        reason = (
            "CloseStream"
            if self._close_code == CloseCode.NORMAL_CLOSURE
            else "server shutting down"
        )
        return [Send(self._metadata()), Close(self._close_code, reason)]

    def _metadata(self) -> Metadata:
        return Metadata(
            request_id=self.request_id,
            created=self.created,
            duration_s=self.counters.audio_s,
            channels=self.options.channels,
            model=self.model,
        )
