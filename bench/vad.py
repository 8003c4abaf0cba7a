"""`python -m bench.vad`: speech-detection quality of the VAD settings on the evaluation set.

Builds the set (bench.vadset), runs each classifier setting over every track, cuts the
result into utterances with the real segmenter and prints, per setting and noise condition:
frame accuracy (raw classifier and the segmented speech spans), missed speech (seconds,
clipped onsets/offsets of reference utterances in ms), false speech (seconds of non-speech
that would be sent to Whisper; on noise-only tracks this should be 0), utterance split and
merge errors, endpoint delay (reference speech end to the SpeechEnded event) and CPU cost.

Modes: default compares the shipped webrtc and silero defaults; `--tune` sweeps the webrtc
(and silero) settings; `--e2e` adds the end-to-end numbers through a running server
(`bench.vade2e`); `--json PATH` writes everything as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.vade2e import DEFAULT_TRACKS
from bench.vadscore import (
    ClassifierSetting,
    Summary,
    Trace,
    TrackScore,
    decisions,
    run_trace,
    score_track,
    segment,
    summarize,
)
from bench.vadset import Track, build, default_audio_dir
from vad.segmenter import SegmenterConfig
from vad.silero import SileroClassifier
from vad.webrtc import WebRtcClassifier

GROUPS: dict[str, Callable[[Track], bool]] = {
    "clean": lambda t: t.noise == "none",
    "20dB": lambda t: t.snr_db == 20,
    "10dB": lambda t: t.snr_db == 10,
    "5dB": lambda t: t.snr_db == 5,
    "noisy": lambda t: t.snr_db is not None,
    "noise-only": lambda t: t.noise_only,
}


def default_webrtc() -> ClassifierSetting:
    shipped = WebRtcClassifier()
    return ClassifierSetting(
        "webrtc",
        shipped.aggressiveness,
        shipped.frame_ms,
        shipped.energy_gate_dbfs,
        snr_gate_db=shipped.snr_gate_db,
        noise_window_ms=shipped.noise_window_ms,
        snr_hold_ms=shipped.snr_hold_ms,
    )


def default_silero() -> ClassifierSetting:
    shipped = SileroClassifier()
    return ClassifierSetting(
        "silero",
        frame_ms=32,
        energy_gate_dbfs=shipped.energy_gate_dbfs,
        threshold=shipped.threshold,
    )


class Evaluator:
    """Runs settings over the tracks, caching one classifier pass per (backend, frame) key."""

    def __init__(self, tracks: Sequence[Track]) -> None:
        self.tracks = list(tracks)
        self._traces: dict[tuple[str, int, int], list[Trace]] = {}

    def traces(self, setting: ClassifierSetting) -> list[Trace]:
        key = setting.trace_key
        if key not in self._traces:
            self._traces[key] = [run_trace(track, setting) for track in self.tracks]
        return self._traces[key]

    def cpu_ms_per_audio_s(self, setting: ClassifierSetting) -> float:
        traces = self.traces(setting)
        audio_s = sum(t.duration_s for t in self.tracks)
        return 1000.0 * sum(t.cpu_s for t in traces) / audio_s

    def scores(self, setting: ClassifierSetting, config: SegmenterConfig) -> list[TrackScore]:
        config = replace(
            config,
            frame_ms=32 if setting.backend == "silero" else setting.frame_ms,
            start_window_ms=max(config.start_window_ms, setting.frame_ms),
        )
        out = []
        for track, trace in zip(self.tracks, self.traces(setting), strict=True):
            flags = decisions(trace, setting)
            utterances = segment(flags, trace, config)
            out.append(score_track(track, trace, flags, utterances, config.endpointing_ms))
        return out


@dataclass(frozen=True)
class Row:
    label: str
    group: str
    summary: Summary


def group_rows(label: str, tracks: Sequence[Track], scores: Sequence[TrackScore]) -> list[Row]:
    rows = []
    for group, belongs in GROUPS.items():
        chosen = [s for t, s in zip(tracks, scores, strict=True) if belongs(t)]
        if chosen:
            rows.append(Row(label, group, summarize(chosen)))
    return rows


def loss(tracks: Sequence[Track], scores: Sequence[TrackScore]) -> float:
    """One number to rank settings (lower is better); the tables show the parts."""
    speech = summarize([s for t, s in zip(tracks, scores, strict=True) if not t.noise_only])
    noise = summarize([s for t, s in zip(tracks, scores, strict=True) if t.noise_only])
    return (
        3.0 * speech.missed_speech_s
        + 0.05 * (speech.onset_clip_p95_ms or 0.0)
        + 0.2 * speech.false_speech_s
        + 2.0 * noise.false_speech_s
        + 1.0 * (speech.splits + speech.merges)
        + 2.0 * speech.cuts_in_speech
        + 5.0 * speech.missed_utterances
    )


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


HEADER = (
    f"{'setting':<34} {'group':<10} {'acc':>5} {'span':>5} {'miss s':>6} {'on50':>4} "
    f"{'on95':>4} {'off95':>5} {'lost':>4} {'false s':>7} {'utts':>4} {'drop':>4} "
    f"{'split':>5} {'merge':>5} {'cut':>3} {'ep50':>4} {'ep95':>4}"
)


def format_row(row: Row) -> str:
    s = row.summary
    return (
        f"{row.label:<34} {row.group:<10} {s.frame_accuracy:5.3f} {s.span_accuracy:5.3f} "
        f"{s.missed_speech_s:6.2f} {_fmt(s.onset_clip_p50_ms):>4} {_fmt(s.onset_clip_p95_ms):>4} "
        f"{_fmt(s.offset_clip_p95_ms):>5} {s.missed_utterances:4d} {s.false_speech_s:7.2f} "
        f"{s.kept_utterances:4d} {s.discarded_utterances:4d} {s.splits:5d} {s.merges:5d} "
        f"{s.cuts_in_speech:3d} {_fmt(s.endpoint_delay_p50_ms):>4} "
        f"{_fmt(s.endpoint_delay_p95_ms):>4}"
    )


LEGEND = """\
acc: raw per-frame accuracy of the classifier; span: accuracy of the segmented speech spans
(pre-roll to last voiced frame + hangover); miss s: reference speech not sent to Whisper;
on50/on95: clipped onset of reference utterances, ms (p50/p95); off95: clipped offset p95;
lost: reference utterances never sent; false s: non-speech sent to Whisper (incl. the
endpointing silence); utts/drop: utterances kept / dropped as clicks; split/merge: utterance
boundary errors; cut: max-length cuts inside reference speech; ep50/ep95: endpoint delay,
reference speech end to SpeechEnded, ms."""


def compare(
    evaluator: Evaluator, settings: Sequence[tuple[ClassifierSetting, SegmenterConfig]]
) -> dict[str, Any]:
    print(HEADER)
    result: dict[str, Any] = {}
    for setting, config in settings:
        scores = evaluator.scores(setting, config)
        rows = group_rows(setting.label, evaluator.tracks, scores)
        for row in rows:
            print(format_row(row))
        cpu = evaluator.cpu_ms_per_audio_s(setting)
        print(f"{setting.label:<34} CPU {cpu:.2f} ms per audio second (one core)")
        result[setting.label] = {
            "classifier": dataclasses.asdict(setting),
            "segmenter": dataclasses.asdict(config),
            "cpu_ms_per_audio_s": cpu,
            "loss": loss(evaluator.tracks, scores),
            "groups": {row.group: dataclasses.asdict(row.summary) for row in rows},
            "tracks": {s.track: _track_json(s) for s in scores},
        }
    print(LEGEND)
    return result


def _track_json(score: TrackScore) -> dict[str, Any]:
    return dataclasses.asdict(summarize([score]))


def tune(evaluator: Evaluator, base: SegmenterConfig, top: int) -> dict[str, Any]:
    """Stage 1: classifier grid with the default segmenter; stage 2: segmenter knobs."""
    candidates = (
        [
            ClassifierSetting("webrtc", a, f, g)
            for a in (0, 1, 2, 3)
            for f in (10, 20, 30)
            for g in (-200.0, -60.0, -50.0, -45.0, -40.0)
        ]
        + [
            ClassifierSetting(
                "webrtc", a, f, -60.0, snr_gate_db=snr, noise_window_ms=w, snr_hold_ms=hold
            )
            for a in (2, 3)
            for f in (20, 30)
            for snr in (4.0, 6.0, 9.0, 12.0)
            for w in (1_000, 3_000)
            for hold in (0, 150, 300, 500)
        ]
        + [
            ClassifierSetting("silero", frame_ms=32, energy_gate_dbfs=g, threshold=t)
            for t in (0.3, 0.4, 0.5, 0.6, 0.7)
            for g in (-200.0, -60.0, -50.0)
        ]
    )
    ranked = sorted(
        ((loss(evaluator.tracks, evaluator.scores(c, base)), c) for c in candidates),
        key=lambda pair: pair[0],
    )
    print("stage 1: classifier settings, default segmenter, ranked by loss (all tracks)")
    print(f"{'loss':>7} " + HEADER)
    stage1 = []
    for value, setting in ranked[:top]:
        rows = group_rows(setting.label, evaluator.tracks, evaluator.scores(setting, base))
        for row in rows:
            if row.group in ("clean", "noisy", "noise-only"):
                print(f"{value:7.1f} " + format_row(row))
        stage1.append({"label": setting.label, "loss": value})
    best = {b: next(c for _, c in ranked if c.backend == b) for b in ("webrtc", "silero")}
    variants: list[tuple[str, SegmenterConfig]] = [("default", base)]
    variants += [(f"pre_roll_ms={v}", replace(base, pre_roll_ms=v)) for v in (0, 150, 300, 450)]
    variants += [
        (f"start {w}ms@{r:g}", replace(base, start_window_ms=w, start_ratio=r))
        for w, r in ((30, 1.0), (60, 1.0), (90, 0.6), (150, 0.6), (240, 0.5), (300, 0.4))
    ]
    variants += [(f"min_speech_ms={v}", replace(base, min_speech_ms=v)) for v in (0, 90, 150, 250)]
    variants += [(f"hangover_ms={v}", replace(base, hangover_ms=v)) for v in (0, 150, 300)]
    stage2: dict[str, list[dict[str, Any]]] = {}
    for backend, setting in best.items():
        print(f"\nstage 2: segmenter knobs around the default, {setting.label}")
        print(f"{'loss':>7} " + HEADER)
        stage2[backend] = []
        for name, config in variants:
            scores = evaluator.scores(setting, config)
            value = loss(evaluator.tracks, scores)
            for row in group_rows(name, evaluator.tracks, scores):
                if row.group in ("clean", "noisy", "noise-only"):
                    print(f"{value:7.1f} " + format_row(row))
            stage2[backend].append({"variant": name, "loss": value})
    print(LEGEND)
    return {"stage1": stage1, "stage2": stage2}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vad", description=__doc__)
    parser.add_argument("--audio-dir", type=Path, default=None, help="shared/audio folder")
    parser.add_argument("--tune", action="store_true", help="sweep classifier/segmenter knobs")
    parser.add_argument("--top", type=int, default=12, help="rows of the stage-1 ranking")
    parser.add_argument("--endpointing-ms", type=int, default=500)
    parser.add_argument("--e2e", action="store_true", help="also stream the set through a server")
    parser.add_argument(
        "--e2e-speed", type=float, default=1.5, help="x real time for --e2e (1.5: see vade2e)"
    )
    parser.add_argument(
        "--e2e-tracks",
        default=",".join(DEFAULT_TRACKS),
        help="comma-separated track names for --e2e (default: clean, 20 and 10 dB, noise-only)",
    )
    parser.add_argument("--e2e-vads", default="webrtc,silero", help="VAD backends for --e2e")
    parser.add_argument("--only-e2e", action="store_true", help="skip the VAD-only tables")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    audio_dir = args.audio_dir or default_audio_dir()
    tracks = build(audio_dir)
    print(
        f"evaluation set: {len(tracks)} tracks, {sum(t.duration_s for t in tracks):.0f} s of "
        f"audio, {sum(t.duration_s for t in tracks if t.noise_only):.0f} s noise-only"
    )
    evaluator = Evaluator(tracks)
    base = SegmenterConfig(endpointing_ms=args.endpointing_ms)
    result: dict[str, Any] = {"endpointing_ms": args.endpointing_ms}
    if args.tune:
        result["tune"] = tune(evaluator, base, args.top)
    elif not args.only_e2e:
        result["compare"] = compare(evaluator, [(default_webrtc(), base), (default_silero(), base)])
    if args.e2e:
        from bench.vade2e import run as run_e2e

        result["e2e"] = run_e2e(
            tracks,
            speed=args.e2e_speed,
            vads=args.e2e_vads.split(","),
            names=args.e2e_tracks.split(","),
        )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
