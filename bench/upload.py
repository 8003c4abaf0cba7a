"""`python -m bench upload`: do live captions slow down while a long file is transcribed?

One server; N live clients stream ../shared/audio at real time (interim results on, as
`bench capacity` does), first alone, then while a long file (../shared/speech-dev clips
concatenated to `--file-s` seconds) is being transcribed through
`POST /v1/audio/transcriptions?stream=true`, which goes through the scheduler's bulk lane.
Rounds alternate (alone, with the upload, ...) so that drift on a shared machine hits both;
the upload is cancelled when its live round ends (`--finish-upload` waits for it instead).
Prints final latency p50/p95 of the live streams per round, the ratio of the p95s, the
upload's progress (finals received while the live streams ran) and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shlex
import sys
import time
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import numpy.typing as npt

from bench.drivers import ClientResult, PaceSettings, stream_ours
from bench.metrics_calc import final_latencies_s, percentile
from bench.servers import start_ours
from bench.workload import SAMPLE_RATE_HZ, ClientStream, client_streams, load_files, read_wav
from server.app import builtin_model_dir
from tests.support.paths import REPO_ROOT, SHARED_DIR


def long_file(clip_dir: Path, seconds: float, gap_s: float = 0.5) -> tuple[bytes, float]:
    """A WAV of exactly `seconds`: the clips in `clip_dir` (16 kHz mono) in order, repeated."""
    clips = [read_wav(p) for p in sorted(clip_dir.glob("*.wav"))]
    if not clips:
        raise SystemExit(f"no WAV clips in {clip_dir}")
    gap = np.zeros(int(gap_s * SAMPLE_RATE_HZ), dtype=np.int16)
    wanted = int(seconds * SAMPLE_RATE_HZ)
    parts: list[npt.NDArray[np.int16]] = []
    total = 0
    while total < wanted:
        for clip in clips:
            parts += [clip, gap]
            total += len(clip) + len(gap)
    samples = np.concatenate(parts)[:wanted]
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE_HZ)
        wav.writeframes(samples.astype("<i2").tobytes())
    return out.getvalue(), len(samples) / SAMPLE_RATE_HZ


@dataclass
class UploadProgress:
    """What the streamed upload answered, with arrival times (monotonic)."""

    started_s: float = 0.0
    finals_at_s: list[float] = field(default_factory=list)
    done_at_s: float | None = None
    error: str | None = None
    words: int = 0


async def upload(http_url: str, wav: bytes, progress: UploadProgress) -> None:
    """Stream-transcribe `wav` through the OpenAI endpoint, noting when each final comes."""
    form = aiohttp.FormData()
    form.add_field("file", wav, filename="long.wav", content_type="audio/wav")
    form.add_field("model", "whisper-1")
    form.add_field("stream", "true")
    progress.started_s = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(f"{http_url}/v1/audio/transcriptions", data=form) as response,
    ):
        if response.status != 200:
            progress.error = f"HTTP {response.status}: {(await response.text())[:200]}"
            return
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            event = json.loads(line[len("data: ") :])
            if event["type"] == "transcript.text.delta":
                progress.finals_at_s.append(time.monotonic())
            elif event["type"] == "transcript.text.done":
                progress.done_at_s = time.monotonic()
                progress.words = len(event["text"].split())
            else:
                progress.error = str(event)[:200]


@dataclass(frozen=True)
class Round:
    label: str
    latencies_s: list[float]
    live_wall_s: float
    load_avg_1m: tuple[float, float]
    upload_finals_during_live: int | None = None
    errors: tuple[str, ...] = ()

    def p(self, q: float) -> float | None:
        return percentile(self.latencies_s, q)


async def live_round(
    ws_url: str, streams: Sequence[ClientStream], stagger_s: float
) -> tuple[list[ClientResult], float]:
    """Every live stream at real time, staggered; their results and the wall time taken."""
    started = time.monotonic()
    t_base = started + 0.5
    runs = [
        stream_ours(
            ws_url,
            stream,
            PaceSettings(start_wall_s=t_base + i * stagger_s, finish_timeout_s=180.0),
        )
        for i, stream in enumerate(streams)
    ]
    results = list(await asyncio.gather(*runs))
    return results, time.monotonic() - started


async def run(args: argparse.Namespace) -> list[Round]:
    files = load_files(args.audio_dir)
    streams = client_streams(files, args.streams, duration_s=args.duration_s, gap_s=1.0)
    wav, file_s = long_file(args.clips, args.file_s)
    print(
        f"live: {args.streams} streams of {streams[0].duration_s:.0f} s; upload: "
        f"{file_s / 60:.1f} min WAV ({len(wav) / 2**20:.1f} MiB); rounds: {args.rounds}",
        file=sys.stderr,
    )
    log_path = REPO_ROOT / "bench/results/logs/upload.log"
    server = start_ours(args.model or builtin_model_dir(), shlex.split(args.server_args), log_path)
    rounds: list[Round] = []
    try:
        for n in range(args.rounds):
            for with_upload in (False, True):
                label = f"{'with upload' if with_upload else 'live only'} #{n + 1}"
                print(f"running {label} ...", file=sys.stderr)
                progress = UploadProgress()
                task = None
                if with_upload:
                    task = asyncio.create_task(upload(server.http_url, wav, progress))
                    await asyncio.sleep(args.upload_lead_s)  # the bulk lane is busy first
                load_before = os.getloadavg()[0]
                started = time.monotonic()
                results, wall_s = await live_round(server.ws_url, streams, 0.25)
                ended = time.monotonic()
                latencies = [
                    lat for r in results for lat in final_latencies_s(r.captions, r.send_log)
                ]
                during = None
                if task is not None:
                    during = sum(started <= t <= ended for t in progress.finals_at_s)
                    if not args.finish_upload:
                        task.cancel()  # the server stops a file whose client went away
                    try:
                        await asyncio.wait_for(task, args.upload_timeout_s)
                    except asyncio.CancelledError:
                        pass
                    except TimeoutError:
                        progress.error = (
                            f"not done {args.upload_timeout_s:.0f} s after the live run"
                        )
                    if progress.done_at_s is not None:
                        took = progress.done_at_s - progress.started_s
                        print(
                            f"  upload done in {took:.0f} s ({progress.words} words, "
                            f"{len(progress.finals_at_s)} finals)",
                            file=sys.stderr,
                        )
                errors = tuple(e for r in results for e in r.errors)
                if progress.error:
                    errors += (f"upload: {progress.error}",)
                rounds.append(
                    Round(
                        label,
                        latencies,
                        wall_s,
                        (load_before, os.getloadavg()[0]),
                        during,
                        errors,
                    )
                )
    finally:
        server.stop()
    return rounds


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(rounds: Sequence[Round]) -> str:
    lines = [
        f"{'round':<16} {'finals':>6} {'p50 s':>6} {'p95 s':>6} {'max s':>6} "
        f"{'upload finals':>13} {'load1 before/after':>18}",
    ]
    for r in rounds:
        during = "-" if r.upload_finals_during_live is None else str(r.upload_finals_during_live)
        load = f"{r.load_avg_1m[0]:.2f} / {r.load_avg_1m[1]:.2f}"
        lines.append(
            f"{r.label:<16} {len(r.latencies_s):>6} {_s(r.p(50)):>6} {_s(r.p(95)):>6} "
            f"{_s(max(r.latencies_s, default=None)):>6} {during:>13} {load:>18}"
        )
    alone = [r for r in rounds if r.upload_finals_during_live is None]
    loaded = [r for r in rounds if r.upload_finals_during_live is not None]
    for a, b in zip(alone, loaded, strict=True):
        pa, pb = a.p(95), b.p(95)
        if pa and pb:
            lines.append(f"p95 with / without ({b.label[-2:]}): {pb / pa:.2f}")
    ratios = [
        b_p / a_p
        for a, b in zip(alone, loaded, strict=True)
        if (a_p := a.p(95)) and (b_p := b.p(95))
    ]
    if len(ratios) > 1:
        lines.append(f"p95 with / without, median of the pairs: {float(np.median(ratios)):.2f}")
    pooled_a = percentile([x for r in alone for x in r.latencies_s], 95)
    pooled_b = percentile([x for r in loaded for x in r.latencies_s], 95)
    if pooled_a and pooled_b and len(alone) > 1:
        lines.append(
            f"p95 with / without, all rounds pooled: {pooled_a:.2f} s -> {pooled_b:.2f} s, "
            f"{pooled_b / pooled_a:.2f}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench upload", description=__doc__)
    parser.add_argument("--streams", type=int, default=4, help="live real-time streams")
    parser.add_argument(
        "--duration-s",
        type=float,
        default=None,
        help="live audio per stream (whole files; default all of --audio-dir)",
    )
    parser.add_argument("--file-s", type=float, default=600.0, help="length of the upload")
    parser.add_argument("--rounds", type=int, default=1, help="pairs of rounds (alone, loaded)")
    parser.add_argument("--audio-dir", type=Path, default=SHARED_DIR / "audio")
    parser.add_argument("--clips", type=Path, default=SHARED_DIR / "speech-dev")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--server-args", default="", help="extra flags for our server")
    parser.add_argument(
        "--upload-lead-s",
        type=float,
        default=2.0,
        help="the upload starts this long before the live streams",
    )
    parser.add_argument(
        "--finish-upload",
        action="store_true",
        help="let the upload finish after the live streams (default: cancel it)",
    )
    parser.add_argument(
        "--upload-timeout-s",
        type=float,
        default=900.0,
        help="how long to wait for the upload after the live streams",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the rounds here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(f"cpu cores: {os.cpu_count()}, load average at start: {os.getloadavg()}", file=sys.stderr)
    rounds = asyncio.run(run(args))
    print(table(rounds))
    for r in rounds:
        for error in r.errors:
            print(f"  {r.label}: {error}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                [
                    {
                        "label": r.label,
                        "final_latencies_s": r.latencies_s,
                        "p50_s": r.p(50),
                        "p95_s": r.p(95),
                        "live_wall_s": r.live_wall_s,
                        "load_avg_1m": r.load_avg_1m,
                        "upload_finals_during_live": r.upload_finals_during_live,
                        "errors": r.errors,
                    }
                    for r in rounds
                ],
                indent=2,
            )
            + "\n"
        )
    return 0
