"""End-to-end part of `python -m bench.vad --e2e`: the evaluation set through a real server.

For each VAD backend a server is started (`python -m server --vad NAME`, the built-in
tiny.en), every chosen track is streamed as linear16 at `speed` x real time with the shared
client loop (clients.stream), and the finals are scored: WER against the track's reference
text; invented words = words of finals on the noise-only tracks, plus words of finals on
speech tracks whose timings lie entirely outside every placed speech file. The same audio
is transcribed offline by faster-whisper (same model, beam 5, no VAD) for comparison.

Errors: bench.servers.ServerStartError (the server did not start; see its log file) and
`E2eError` (a stream did not end with a clean close, twice) propagate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from bench.metrics_calc import corpus_wer, normalise
from bench.servers import start_ours
from bench.vadset import SAMPLE_RATE_HZ, SEED, Track
from server.app import builtin_model_dir
from server.protocol import ModelInfo, Results, Word, from_json

logger = logging.getLogger(__name__)


class E2eError(Exception):
    """A stream through the server did not end with CloseStream's clean close."""


CHUNK_S = 0.1
DEFAULT_TRACKS = (
    "clean",
    "white_20db",
    "white_10db",
    "pink_20db",
    "pink_10db",
    "tones_20db",
    "tones_10db",
    "noise_white",
    "noise_pink",
    "noise_tones",
    "noise_clicks",
    "noise_silence",
)


OFFLINE_MODEL = ModelInfo(name="faster-whisper", version="offline", arch="whisper", uuid="")
"""What the offline pass's results say produced them."""


@dataclass(frozen=True)
class TrackResult:
    track: str
    transcript: str
    wer: float | None  # None on noise-only tracks
    invented_words: int
    finals: int
    error: str | None = None  # the stream failed; no numbers


def _pcm16(samples: npt.NDArray[np.float32]) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


async def _paced(samples: npt.NDArray[np.float32], speed: float) -> AsyncIterator[bytes]:
    """100 ms chunks at `speed` x real time (sleeping only to pace the sending)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    step = int(CHUNK_S * SAMPLE_RATE_HZ)
    for pos in range(0, len(samples), step):
        due = started + pos / SAMPLE_RATE_HZ / speed
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield _pcm16(samples[pos : pos + step])


def _outside_speech(track: Track, start_s: float, end_s: float, margin_s: float = 0.3) -> bool:
    for placed in track.files:
        lo = placed.start / SAMPLE_RATE_HZ - margin_s
        hi = placed.end / SAMPLE_RATE_HZ + margin_s
        if start_s < hi and end_s > lo:
            return False
    return True


def score(track: Track, finals: Sequence[Results]) -> TrackResult:
    ordered = sorted((r for r in finals if r.transcript.strip()), key=lambda r: r.start_s)
    text = " ".join(r.transcript.strip() for r in ordered)
    if track.noise_only:
        invented = len(normalise(text).split())
        return TrackResult(track.name, text, None, invented, len(ordered))
    invented = sum(
        len(normalise(w.punctuated_word).split())
        for r in ordered
        for w in r.words
        if _outside_speech(track, w.start_s, w.end_s)
    )
    wer = corpus_wer([track.text], [text]).wer
    return TrackResult(track.name, text, wer, invented, len(ordered))


async def _stream_track(url: str, track: Track, speed: float) -> list[Results]:
    """Stream one track (linear16 frames, then CloseStream) and collect finals.

    Unlike clients.stream this sends no keepalive pings: when the server falls behind it
    stops reading (backpressure) and the stream should just slow down, which the quality
    numbers here do not mind.
    """
    finals: list[Results] = []
    query = f"encoding=linear16&sample_rate={SAMPLE_RATE_HZ}&channels=1"
    async with connect(
        f"{url}/v1/listen?{query}", ping_interval=None, max_size=None, open_timeout=30
    ) as ws:

        async def send() -> None:
            async for chunk in _paced(track.samples, speed):
                await ws.send(chunk)
            await ws.send(json.dumps({"type": "CloseStream"}))

        sender = asyncio.create_task(send())
        try:
            async for raw in ws:
                if isinstance(raw, str):
                    message = from_json(raw)
                    if isinstance(message, Results) and message.is_final:
                        finals.append(message)
        finally:
            sender.cancel()
        if ws.close_code != 1000:
            raise E2eError(
                f"{track.name}: the server closed with {ws.close_code} {ws.close_reason!r}"
            )
    return finals


def through_server(
    tracks: Sequence[Track], vad: str, speed: float, model_dir: Path, log_dir: Path
) -> list[TrackResult]:
    """Stream each track through a fresh-enough server; a stream that drops (the server was
    killed or restarted underneath us) is retried once on a new server."""
    log = log_dir / f"vad-e2e-{vad}.log"
    server = start_ours(model_dir, ["--vad", vad], log)
    try:
        results = []
        for track in tracks:
            began = time.monotonic()
            try:
                finals = asyncio.run(_stream_track(server.ws_url, track, speed))
            except (E2eError, WebSocketException, OSError) as exc:
                logger.warning("%s %s: %s; retrying on a new server", vad, track.name, exc)
                server.stop()
                server = start_ours(model_dir, ["--vad", vad], log.with_suffix(".retry.log"))
                try:
                    finals = asyncio.run(_stream_track(server.ws_url, track, speed))
                except (E2eError, WebSocketException, OSError) as again:
                    logger.error("%s %s failed twice: %s", vad, track.name, again)
                    results.append(TrackResult(track.name, "", None, 0, 0, error=str(again)))
                    continue
            results.append(score(track, finals))
            logger.info("%s %s: %.1f s", vad, track.name, time.monotonic() - began)
        return results
    finally:
        server.stop()


def offline(tracks: Sequence[Track], model_dir: Path, cache: Path | None) -> list[TrackResult]:
    """faster-whisper's own transcription of each whole track (beam 5, no VAD filter).

    Results are kept in `cache` (JSON keyed by track, model and the set's seed): the set is
    deterministic, and the offline pass is the slowest part of the run.
    """
    stored: dict[str, Any] = {}
    if cache is not None and cache.is_file():
        stored = json.loads(cache.read_text(encoding="utf-8"))
    model: Any = None
    results = []
    for track in tracks:
        key = f"{track.name}|{model_dir}|{SEED}"
        if key not in stored:
            if model is None:
                from faster_whisper import WhisperModel

                model = WhisperModel(
                    str(model_dir), device="cpu", compute_type="int8", cpu_threads=2
                )
            segments, _info = model.transcribe(track.samples, beam_size=5, word_timestamps=True)
            stored[key] = [
                {
                    "start": s.start,
                    "end": s.end,
                    "text": s.text,
                    "words": [[w.word.strip(), w.start, w.end] for w in (s.words or [])],
                }
                for s in segments
            ]
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(stored), encoding="utf-8")
        finals = [
            Results(
                request_id=key,
                model=OFFLINE_MODEL,
                start_s=seg["start"],
                duration_s=seg["end"] - seg["start"],
                is_final=True,
                speech_final=True,
                from_finalize=False,
                transcript=seg["text"],
                confidence=0.0,
                words=tuple(
                    Word(word=w, start_s=a, end_s=b, confidence=0.0, punctuated_word=w)
                    for w, a, b in seg["words"]
                ),
            )
            for seg in stored[key]
        ]
        results.append(score(track, finals))
    return results


def run(
    tracks: Sequence[Track],
    *,
    speed: float = 1.5,
    vads: Sequence[str] = ("webrtc", "silero"),
    names: Sequence[str] = DEFAULT_TRACKS,
    model_dir: Path | None = None,
    log_dir: Path = Path("bench/results/logs"),
    offline_cache: Path | None = Path("bench/results/vad-offline.json"),
) -> dict[str, Any]:
    """Stream the chosen tracks through a server per VAD; compare with offline; print a table."""
    chosen = [t for t in tracks if t.name in names]
    model = model_dir or builtin_model_dir()
    columns: dict[str, list[TrackResult]] = {"offline": offline(chosen, model, offline_cache)}
    for vad in vads:
        columns[f"server {vad}"] = through_server(chosen, vad, speed, model, log_dir)
    print(f"\nend to end ({speed:g}x real time): WER % / invented words per track")
    print(f"{'track':<14}" + "".join(f"{name:>20}" for name in columns))
    for i, track in enumerate(chosen):
        cells = []
        for results in columns.values():
            r = results[i]
            wer = "-" if r.wer is None else f"{100 * r.wer:.1f}"
            cells.append("failed" if r.error else f"{wer:>12} {r.invented_words:>6}")
        print(f"{track.name:<14}" + "".join(f"{c:>20}" for c in cells))
    groups = {"clean": (None,), "20 dB": (20,), "10 dB": (10,), "5 dB": (5,)}
    for label, snrs in groups.items():
        picked = [i for i, t in enumerate(chosen) if not t.noise_only and t.snr_db in snrs]
        if not picked:
            continue
        cells = []
        for results in columns.values():
            wers = [results[i].wer for i in picked if results[i].wer is not None]
            mean = sum(w for w in wers if w is not None) / len(wers) if wers else None
            cells.append("-" if mean is None else f"{100 * mean:.1f}")
        print(f"{'WER ' + label:<14}" + "".join(f"{c:>20}" for c in cells))
    totals = {
        name: sum(r.invented_words for r, t in zip(rs, chosen, strict=True) if t.noise_only)
        for name, rs in columns.items()
    }
    print(f"{'invented, noise-only':<14}" + "".join(f"{totals[n]:>20}" for n in columns))
    return {
        "speed": speed,
        "columns": {name: [r.__dict__ for r in results] for name, results in columns.items()},
        "invented_noise_only": totals,
    }
