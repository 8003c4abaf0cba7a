"""Test-side helpers: read WAVs, stream PCM over a raw websocket, score transcripts."""

from __future__ import annotations

import asyncio
import json
import wave
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import numpy.typing as npt
import websockets
from whisper_normalizer.english import EnglishTextNormalizer

_NORMALIZER = EnglishTextNormalizer()


def read_wav(path: Path) -> tuple[bytes, int, int]:
    """PCM16 bytes, sample rate and channel count of a WAV file."""
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2, f"{path} is not 16-bit PCM"
        return w.readframes(w.getnframes()), w.getframerate(), w.getnchannels()


def pcm16(samples: npt.NDArray[np.float32]) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def normalize(text: str) -> str:
    return " ".join(_NORMALIZER(text).split())


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    return float(jiwer.wer(refs, hyps))


@dataclass
class Outcome:
    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    @property
    def finals(self) -> list[dict[str, Any]]:
        return [m for m in self.of_type("Results") if m["is_final"]]

    @property
    def interims(self) -> list[dict[str, Any]]:
        return [m for m in self.of_type("Results") if not m["is_final"]]

    @property
    def transcript(self) -> str:
        return " ".join(m["channel"]["alternatives"][0]["transcript"] for m in self.finals).strip()


def chunks(data: bytes, sizes: Iterable[int]) -> list[bytes]:
    """Cut `data` into consecutive pieces of the given sizes (cycled); the last may be short."""
    pieces: list[bytes] = []
    sizes = list(sizes)
    i = k = 0
    while i < len(data):
        size = sizes[k % len(sizes)]
        pieces.append(data[i : i + size])
        i += size
        k += 1
    return pieces


async def stream(
    url: str,
    frames: Sequence[bytes | str],
    *,
    close_stream: bool = True,
    pace_s: float = 0.0,
    subprotocols: Sequence[str] | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 120.0,
    ping_interval_s: float | None = 20.0,
) -> Outcome:
    """Send frames (binary audio or text control), then CloseStream; collect all replies.

    `ping_interval_s` None: no keepalive pings (a server that stops reading while its
    finals are behind answers none, and a client sending faster than real time on a slow
    machine would give up on it)."""
    outcome = Outcome()
    async with asyncio.timeout(timeout_s):
        async with websockets.connect(
            url,
            max_size=None,
            subprotocols=[websockets.Subprotocol(p) for p in subprotocols or ()] or None,
            additional_headers=headers,
            ping_interval=ping_interval_s,
        ) as ws:

            async def sender() -> None:
                for frame in frames:
                    await ws.send(frame)
                    if pace_s:
                        await asyncio.sleep(pace_s)
                if close_stream:
                    await ws.send(json.dumps({"type": "CloseStream"}))

            task = asyncio.create_task(sender())
            try:
                async for raw in ws:
                    assert isinstance(raw, str), "the server only sends text frames"
                    outcome.messages.append(json.loads(raw))
            except websockets.ConnectionClosed:
                pass
            task.cancel()
            outcome.close_code = ws.close_code
            outcome.close_reason = ws.close_reason or ""
    return outcome
