"""Score VAD settings on the evaluation set: per-frame traces, segmentation, speech metrics.

A *trace* is one pass of a classifier backend over a track: the raw per-frame output
(webrtcvad's decision, or Silero's probability) and the frame energy. Gates and thresholds
are applied to a trace afterwards, so one pass serves many settings. All positions are in
samples of the 16 kHz track unless a name says otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from bench.vadset import SAMPLE_RATE_HZ, Spans, Track, spans_to_mask
from vad.framing import Framer, frame_dbfs
from vad.noisefloor import NoiseFloor
from vad.segmenter import Segmenter, SegmenterConfig, SpeechEnded, SpeechStarted
from vad.silero import SileroClassifier
from vad.webrtc import WebRtcClassifier


@dataclass(frozen=True)
class ClassifierSetting:
    """A classifier backend and its knobs; `label` names it in tables."""

    backend: str = "webrtc"  # "webrtc" or "silero"
    aggressiveness: int = 3
    frame_ms: int = 30
    energy_gate_dbfs: float = -60.0
    threshold: float = 0.5
    snr_gate_db: float | None = None  # webrtc only
    noise_window_ms: int = 3_000
    snr_hold_ms: int = 0

    @property
    def label(self) -> str:
        gate = "off" if self.energy_gate_dbfs <= -100 else f"{self.energy_gate_dbfs:g}"
        if self.backend == "silero":
            return f"silero t={self.threshold:g} gate={gate}"
        label = f"webrtc a={self.aggressiveness} {self.frame_ms}ms gate={gate}"
        if self.snr_gate_db is not None:
            label += f" snr>{self.snr_gate_db:g}/{self.noise_window_ms / 1000:g}s"
            label += f" hold={self.snr_hold_ms}"
        return label

    @property
    def trace_key(self) -> tuple[str, int, int]:
        """Settings that need their own pass over the audio (the rest are applied after)."""
        if self.backend == "silero":
            return ("silero", 0, 32)
        return ("webrtc", self.aggressiveness, self.frame_ms)


@dataclass(frozen=True)
class Trace:
    frame_ms: int
    raw: npt.NDArray[np.float64]  # webrtc: 0/1 decision; silero: probability
    energy_dbfs: npt.NDArray[np.float64]
    cpu_s: float  # process CPU seconds of the pass (framing, energy, classifier)


def run_trace(track: Track, setting: ClassifierSetting) -> Trace:
    """One pass of the real classifier over a track, timed in process CPU seconds."""
    started = time.process_time()
    raw: list[float] = []
    energy: list[float] = []
    if setting.backend == "silero":
        silero = SileroClassifier(energy_gate_dbfs=-200.0)
        framer = Framer(silero.frame_ms)
        for frame in framer.push(track.samples):
            raw.append(silero.probability(frame))
            energy.append(frame_dbfs(frame))
    else:
        webrtc = WebRtcClassifier(
            aggressiveness=setting.aggressiveness,
            frame_ms=setting.frame_ms,
            energy_gate_dbfs=-200.0,
        )
        framer = Framer(setting.frame_ms)
        for frame in framer.push(track.samples):
            raw.append(float(webrtc.is_speech(frame)))
            energy.append(frame_dbfs(frame))
    cpu_s = time.process_time() - started
    frame_ms = 32 if setting.backend == "silero" else setting.frame_ms
    return Trace(frame_ms, np.array(raw), np.array(energy), cpu_s)


def decisions(trace: Trace, setting: ClassifierSetting) -> npt.NDArray[np.bool_]:
    """Per-frame speech decisions of `setting` from a trace (same rules as the classifiers)."""
    gate = trace.energy_dbfs >= setting.energy_gate_dbfs
    if setting.backend != "silero":
        result: npt.NDArray[np.bool_] = (trace.raw > 0.5) & gate
        if setting.snr_gate_db is not None:
            result = _snr_gate(result, trace, setting)
        return result
    low = max(setting.threshold - 0.15, 0.01)
    speaking = False
    out = np.zeros(len(trace.raw), dtype=bool)
    for i, probability in enumerate(trace.raw):
        speaking = probability >= (low if speaking else setting.threshold)
        out[i] = speaking
    result = out & gate
    return result


def _snr_gate(
    voiced: npt.NDArray[np.bool_], trace: Trace, setting: ClassifierSetting
) -> npt.NDArray[np.bool_]:
    """The WebRtcClassifier's SNR gate with hold, replayed over a trace."""
    assert setting.snr_gate_db is not None
    tracker = NoiseFloor(frame_ms=trace.frame_ms, window_ms=setting.noise_window_ms)
    hold = setting.snr_hold_ms // trace.frame_ms
    since_loud = hold + 1
    out = np.zeros(len(voiced), dtype=bool)
    for i, (flag, energy) in enumerate(
        zip(voiced.tolist(), trace.energy_dbfs.tolist(), strict=True)
    ):
        floor = tracker.update(energy)
        if flag and energy >= floor + setting.snr_gate_db:
            since_loud = 0
            out[i] = True
        else:
            since_loud += 1
            out[i] = flag and since_loud <= hold
    return out


@dataclass(frozen=True)
class Utterance:
    """A segmenter utterance in samples: [start, end) is sent, [start, speech_end) is speech."""

    start: int
    end: int
    speech_end: int
    emitted: int  # sample position at which the SpeechEnded was emitted
    reason: str
    discard: bool


def segment(flags: npt.NDArray[np.bool_], trace: Trace, config: SegmenterConfig) -> list[Utterance]:
    """Run the real segmenter over per-frame decisions; flush at the end of the track."""
    frame_samples = SAMPLE_RATE_HZ * trace.frame_ms // 1000
    segmenter = Segmenter(config)
    out: list[Utterance] = []
    start = 0

    def add(event: SpeechEnded, emitted_frame: int) -> None:
        out.append(
            Utterance(
                start * frame_samples,
                event.end_frame * frame_samples,
                event.speech_end_frame * frame_samples,
                emitted_frame * frame_samples,
                event.reason,
                event.discard,
            )
        )

    for i, (flag, energy) in enumerate(
        zip(flags.tolist(), trace.energy_dbfs.tolist(), strict=True)
    ):
        for event in segmenter.push(flag, energy):
            if isinstance(event, SpeechStarted):
                start = event.start_frame
            else:
                add(event, i + 1)
    ended = segmenter.flush()
    if ended is not None:
        add(ended, segmenter.frames_seen)
    return out


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def reference_utterances(speech: Spans, endpointing_ms: int | None) -> Spans:
    """Reference speech runs joined across gaps shorter than the endpointing silence."""
    gap = (endpointing_ms if endpointing_ms is not None else 10**9) * SAMPLE_RATE_HZ // 1000
    merged: Spans = []
    for start, end in speech:
        if merged and start - merged[-1][1] < gap:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


@dataclass
class TrackScore:
    """Metrics of one setting on one track (times in ms or s as named)."""

    track: str
    audio_s: float
    speech_s: float
    frame_correct: int = 0
    frames: int = 0
    span_correct_s: float = 0.0
    missed_speech_s: float = 0.0
    false_speech_s: float = 0.0
    kept_utterances: int = 0
    discarded_utterances: int = 0
    onset_clips_ms: list[float] = field(default_factory=list)
    offset_clips_ms: list[float] = field(default_factory=list)
    missed_utterances: int = 0
    splits: int = 0
    merges: int = 0
    cuts_in_speech: int = 0
    endpoint_delays_ms: list[float] = field(default_factory=list)


def score_track(
    track: Track,
    trace: Trace,
    flags: npt.NDArray[np.bool_],
    utterances: Sequence[Utterance],
    endpointing_ms: int | None,
) -> TrackScore:
    n = len(track.samples)
    ref = spans_to_mask(track.speech, n)
    score = TrackScore(track.name, n / SAMPLE_RATE_HZ, float(ref.sum()) / SAMPLE_RATE_HZ)
    ref_frames = track.speech_mask(SAMPLE_RATE_HZ * trace.frame_ms // 1000)
    score.frames = min(len(ref_frames), len(flags))
    score.frame_correct = int((ref_frames[: score.frames] == flags[: score.frames]).sum())
    kept = [u for u in utterances if not u.discard]
    score.kept_utterances = len(kept)
    score.discarded_utterances = len(utterances) - len(kept)
    sent = spans_to_mask([(u.start, u.end) for u in kept], n)
    voiced = spans_to_mask([(u.start, u.speech_end) for u in kept], n)
    score.span_correct_s = float((voiced == ref).sum()) / SAMPLE_RATE_HZ
    score.missed_speech_s = float((ref & ~sent).sum()) / SAMPLE_RATE_HZ
    score.false_speech_s = float((sent & ~ref).sum()) / SAMPLE_RATE_HZ
    ms = 1000.0 / SAMPLE_RATE_HZ
    for start, end in reference_utterances(track.speech, endpointing_ms):
        covered = np.flatnonzero(sent[start:end])
        if covered.size == 0:
            score.missed_utterances += 1
            continue
        score.onset_clips_ms.append(float(covered[0]) * ms)
        score.offset_clips_ms.append(float(end - start - 1 - covered[-1]) * ms)
        overlapping = [u for u in kept if u.start < end and u.end > start]
        score.splits += sum(
            1 for a in overlapping[:-1] if a.reason != "max_length"
        )  # a piece that ended inside, other than a deliberate length cut
        score.cuts_in_speech += sum(
            1 for a in overlapping[:-1] if a.reason == "max_length" and ref[a.end - 1]
        )
    ref_utts = reference_utterances(track.speech, endpointing_ms)
    for u in kept:
        inside = sum(1 for s, e in ref_utts if s < u.end and e > u.start)
        score.merges += max(0, inside - 1)
        if u.reason == "endpoint":
            speech_in = np.flatnonzero(ref[u.start : u.end])
            if speech_in.size:
                last_speech = u.start + int(speech_in[-1]) + 1
                score.endpoint_delays_ms.append((u.emitted - last_speech) * ms)
    return score


@dataclass(frozen=True)
class Summary:
    """Metrics of one setting over a group of tracks."""

    frame_accuracy: float
    span_accuracy: float
    missed_speech_s: float
    false_speech_s: float
    onset_clip_p50_ms: float | None
    onset_clip_p95_ms: float | None
    offset_clip_p95_ms: float | None
    missed_utterances: int
    splits: int
    merges: int
    cuts_in_speech: int
    endpoint_delay_p50_ms: float | None
    endpoint_delay_p95_ms: float | None
    kept_utterances: int
    discarded_utterances: int
    audio_s: float
    speech_s: float


def summarize(scores: Sequence[TrackScore]) -> Summary:
    onsets = [x for s in scores for x in s.onset_clips_ms]
    offsets = [x for s in scores for x in s.offset_clips_ms]
    delays = [x for s in scores for x in s.endpoint_delays_ms]
    audio_s = sum(s.audio_s for s in scores)
    return Summary(
        frame_accuracy=sum(s.frame_correct for s in scores) / max(1, sum(s.frames for s in scores)),
        span_accuracy=sum(s.span_correct_s for s in scores) / max(1e-9, audio_s),
        missed_speech_s=sum(s.missed_speech_s for s in scores),
        false_speech_s=sum(s.false_speech_s for s in scores),
        onset_clip_p50_ms=_percentile(onsets, 50),
        onset_clip_p95_ms=_percentile(onsets, 95),
        offset_clip_p95_ms=_percentile(offsets, 95),
        missed_utterances=sum(s.missed_utterances for s in scores),
        splits=sum(s.splits for s in scores),
        merges=sum(s.merges for s in scores),
        cuts_in_speech=sum(s.cuts_in_speech for s in scores),
        endpoint_delay_p50_ms=_percentile(delays, 50),
        endpoint_delay_p95_ms=_percentile(delays, 95),
        kept_utterances=sum(s.kept_utterances for s in scores),
        discarded_utterances=sum(s.discarded_utterances for s in scores),
        audio_s=audio_s,
        speech_s=sum(s.speech_s for s in scores),
    )
