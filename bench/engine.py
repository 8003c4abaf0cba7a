"""`python -m bench.engine`: the Whisper engine's batched path, throughput per batch size.

Feeds `transcribe_batch` with B utterances (the shared speech files, cycled) for each B in
`--batches`, for finals (beam search + word alignment) and interims (greedy), and prints
utterances per second, audio seconds per second and the speed-up over batch 1, measured
side by side in one run. Use it on a GPU (`--device cuda`, float16) to size `--max-batch`,
and on CPU with `--pack-window-s 30` to see what packing a batch into shared windows saves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from server.asr import DecodeOptions, WhisperEngine
from server.transcription import AsrRequest
from tests.support.paths import SHARED_DIR

MAX_CLIP_S = 25.0


@dataclass(frozen=True)
class Row:
    kind: str
    batch: int
    calls: int
    seconds_per_call: float
    utterances_per_s: float
    audio_s_per_s: float
    speedup_vs_batch1: float


def load_clips(audio_dir: Path) -> list[npt.NDArray[np.float32]]:
    clips: list[npt.NDArray[np.float32]] = []
    for path in sorted(audio_dir.glob("*.wav")):
        with wave.open(str(path), "rb") as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        audio = pcm.astype(np.float32) / 32768.0
        step = int(MAX_CLIP_S * 16000)
        clips.extend(audio[i : i + step] for i in range(0, len(audio), step))
    return clips


def measure(
    engine: WhisperEngine, clips: list[npt.NDArray[np.float32]], batch: int, final: bool, reps: int
) -> tuple[float, float]:
    """Median seconds per call and the audio seconds per call."""
    requests = [AsrRequest(clips[i % len(clips)], final=final) for i in range(batch)]
    engine.transcribe_batch(requests)  # warm-up at this shape
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        engine.transcribe_batch(requests)
        times.append(time.perf_counter() - started)
    return statistics.median(times), sum(r.duration_s for r in requests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__)
    parser.add_argument("--model", required=True, help="CTranslate2 Whisper model directory")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compute-type", default="auto")
    parser.add_argument("--cpu-threads", type=int, default=2)
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--pack-window-s", type=float, default=0.0, help="pack each batch into windows (0: off)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    engine = WhisperEngine(
        Path(args.model),
        name=Path(args.model).name,
        device=args.device,
        compute_type=args.compute_type,
        cpu_threads=args.cpu_threads,
        workers=1,
        decode=DecodeOptions(pack_window_s=args.pack_window_s),
    )
    clips = load_clips(SHARED_DIR / "audio")
    rows: list[Row] = []
    for final in (True, False):
        kind = "final" if final else "interim"
        base = None
        for batch in (int(b) for b in args.batches.split(",")):
            seconds, audio_s = measure(engine, clips, batch, final, args.reps)
            per_s = batch / seconds
            base = base or per_s
            rows.append(
                Row(kind, batch, args.reps, seconds, per_s, audio_s / seconds, per_s / base)
            )
            print(
                f"{kind:8s} batch {batch:4d}: {seconds:7.3f} s/call  {per_s:8.1f} utt/s  "
                f"{audio_s / seconds:8.1f} audio-s/s  x{per_s / base:5.1f} vs batch 1",
                flush=True,
            )
    result = {
        "device": engine.device,
        "compute_type": engine.compute_type,
        "pack_window_s": args.pack_window_s,
        "rows": [asdict(r) for r in rows],
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
