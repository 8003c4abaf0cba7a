"""`python -m bench replay`: the server's own pipeline on every evaluation set, without the clock.

Each item goes through what a live session runs: the pure `Session` (the VAD backend of
`--vads`, the segmenter, speculative finals, context, interims off) and the real
`WhisperEngine`, called at once for each request, whose result is handed back `--latency-s`
of stream time later, as a server at one stream would. Nothing depends on the machine's
speed or load, so a VAD backend or a session setting can be judged on every set in minutes
instead of hours of real time. One thing is drawn at random: a decode that fails Whisper's
thresholds is retried by sampling at higher temperatures, from CTranslate2's generator,
which is seeded once per process (here with 0). So a run is repeated exactly by the same
command, but a set's result can move by a few words with the sets run before it in the
same process (`long` gave 38 and 42 errors, 4 and 8 insertions, after different sets).
`python -m bench accuracy` streams the same sets through a real server at real time; at one
stream its finals hear exactly the requests replayed here (the session's requests do not
depend on when results come back).

A word's worth of WER moves with framing alone: `--shifts-ms 0,7,14,21` runs every item
again without its first few milliseconds (offline too), so the VAD frames and Whisper's
10 ms hop fall elsewhere on the same speech, and reports the mean and the spread of the
difference from offline. A setting should beat that spread before it is called better.

Offline ceiling and scoring as in bench.accuracy (its offline cache is shared).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import ctranslate2
import numpy as np
import numpy.typing as npt

from bench.accuracy import RESULTS_DIR, WordErrors, cache_key, offline_texts, score_words
from bench.evalsets import SET_NAMES, EvalItem, build_set, shifted
from server.app import builtin_model_dir, classifier_factory
from server.asr import WhisperEngine
from server.config import Settings, StreamSettings
from server.protocol import CloseStream, ModelInfo, Results, StreamOptions
from server.session import Action, Cancel, Send, Session, SessionConfig, Transcribe
from server.transcription import AsrRequest
from tests.support.paths import SHARED_DIR

MODEL = ModelInfo("replay", "cpu", "whisper", "replay")
CHUNK_S = 0.1


@dataclass
class _Pending:
    due_s: float
    ticket: int
    request: AsrRequest


def replay(
    engine: WhisperEngine,
    audio: npt.NDArray[np.float32],
    *,
    vad: str,
    config: SessionConfig,
    latency_s: float,
) -> str:
    """The finals' text of `audio` streamed through a session with engine results
    arriving `latency_s` of stream time after each request."""
    settings = Settings(stream=StreamSettings(vad=vad))
    session = Session("replay", StreamOptions(), config, classifier_factory(settings)(), MODEL)
    pending: list[_Pending] = []
    cancelled: set[int] = set()
    finals: list[str] = []

    def handle(actions: Sequence[Action], now_s: float) -> None:
        for action in actions:
            if isinstance(action, Transcribe):
                pending.append(_Pending(now_s + latency_s, action.ticket, action.request))
            elif isinstance(action, Cancel):
                cancelled.add(action.ticket)
            elif isinstance(action, Send) and isinstance(action.message, Results):
                finals.append(action.message.transcript)

    def run_due(now_s: float) -> None:
        while due := [p for p in pending if p.due_s <= now_s]:
            job = due[0]
            pending.remove(job)
            if job.ticket not in cancelled:
                (result,) = engine.transcribe_batch([job.request])
                handle(session.on_result(job.ticket, result), now_s)

    step = round(CHUNK_S * 16000)
    now_s = 0.0
    for start in range(0, len(audio), step):
        now_s = (start + step) / 16000
        handle(session.feed_samples(audio[start : start + step]), now_s)
        run_due(now_s)
    handle(session.control(CloseStream()), now_s)
    run_due(float("inf"))
    return " ".join(finals)


def set_errors(
    engine: WhisperEngine,
    items: Sequence[EvalItem],
    model_dir: Path,
    *,
    vads: Sequence[str],
    config: SessionConfig,
    latency_s: float,
) -> tuple[WordErrors, dict[str, WordErrors]]:
    """Offline and streamed (per VAD backend) errors over `items`."""
    offline = offline_texts(items, model_dir, RESULTS_DIR / "cache")
    off = sum((score_words(i.reference, offline[cache_key(i, model_dir)]) for i in items),
              WordErrors(0, 0, 0, 0))  # fmt: skip
    cells: dict[str, WordErrors] = {}
    for vad in vads:
        total = WordErrors(0, 0, 0, 0)
        for item in items:
            audio = item.samples.astype(np.float32) / 32768.0
            text = replay(engine, audio, vad=vad, config=config, latency_s=latency_s)
            total = total + score_words(item.reference, text)
        cells[vad] = total
    return off, cells


def _cell(runs: Sequence[WordErrors], offline: Sequence[WordErrors]) -> str:
    """One table cell: WER and S/D/I of one run; over several shifts, the mean errors and
    the mean, lowest and highest difference from offline in points."""
    if len(runs) == 1:
        e = runs[0]
        return f"{(e.wer or 0):.4f} {e.substitutions}/{e.deletions}/{e.insertions}".rjust(16)
    words = runs[0].reference_words
    deltas = [100 * (e.errors - o.errors) / words for e, o in zip(runs, offline, strict=True)]
    mean_errors = sum(e.errors for e in runs) / len(runs)
    spread = f"[{min(deltas):+.2f},{max(deltas):+.2f}]"
    return f"{mean_errors:.1f} {sum(deltas) / len(deltas):+.2f} {spread}".rjust(30)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench replay", description=__doc__)
    parser.add_argument("--sets", default=",".join(SET_NAMES), help="evaluation sets")
    parser.add_argument("--vads", default="webrtc", help="VAD backends: webrtc,silero,either")
    parser.add_argument("--model", type=Path, default=None, help="model dir (default tiny.en)")
    parser.add_argument("--latency-s", type=float, default=1.0, help="simulated result delay")
    parser.add_argument("--no-context", action="store_true", help="finals without context")
    parser.add_argument(
        "--shifts-ms",
        default="0",
        help="run every item again without its first N ms (e.g. 0,7,14,21), offline too: "
        "how much of a difference between settings is framing luck",
    )
    parser.add_argument("--cpu-threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    model_dir: Path = args.model or builtin_model_dir()
    ctranslate2.set_random_seed(0)  # before the engine's threads draw their first sample
    engine = WhisperEngine(
        model_dir, name=model_dir.name, device="cpu", cpu_threads=args.cpu_threads, workers=1
    )
    config = StreamSettings().session_config(Settings().limits)
    if args.no_context:
        config = replace(config, context_ms=None)
    vads = [v.strip() for v in args.vads.split(",") if v.strip()]
    shifts = [int(v) for v in args.shifts_ms.split(",") if v.strip()]
    rows: list[dict[str, object]] = []
    width = 16 if len(shifts) == 1 else 30
    head = "offline" if len(shifts) == 1 else "offline errors"
    print(f"{'set':<12} {'items':>5} {head:>8} " + " ".join(f"{v:>{width}}" for v in vads))
    if len(shifts) > 1:
        print(f"(shifts {shifts} ms; each cell: mean errors, mean [min, max] points over offline)")
    for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        items = build_set(name, SHARED_DIR).items
        offline: list[WordErrors] = []
        streamed: dict[str, list[WordErrors]] = {v: [] for v in vads}
        for shift_ms in shifts:
            off, cells = set_errors(
                engine,
                [shifted(i, shift_ms) for i in items],
                model_dir,
                vads=vads,
                config=config,
                latency_s=args.latency_s,
            )
            offline.append(off)
            for vad, errors in cells.items():
                streamed[vad].append(errors)
        off_cell = (
            f"{offline[0].wer or 0:8.4f}"
            if len(shifts) == 1
            else f"{sum(o.errors for o in offline) / len(offline):14.1f}"
        )
        print(
            f"{name:<12} {len(items):>5} {off_cell} "
            + " ".join(_cell(runs, offline) for runs in streamed.values()),
            flush=True,
        )
        rows.append(
            {
                "set": name,
                "shifts_ms": shifts,
                "offline": [o.__dict__ for o in offline],
                **{v: [e.__dict__ for e in runs] for v, runs in streamed.items()},
            }
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": str(model_dir), "rows": rows}, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
