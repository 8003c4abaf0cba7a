"""Benchmark clients: stream one `ClientStream` at real-time pace and record what comes back.

`stream_ours` speaks our protocol (PCM16 frames, `Results`, `CloseStream`; server.protocol);
`stream_peer` speaks WhisperLive's protocol (JSON options, float32 frames, segment lists,
`END_OF_AUDIO`). Both send chunks on a wall-clock schedule (no drift under load) and log
when each chunk's last sample went out, so latencies can be measured from the send side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from bench.metrics_calc import Caption, SendLog, Span
from bench.peer_segments import PeerTranscript, parse_segments
from bench.workload import SAMPLE_RATE_HZ, ClientStream
from server.protocol import Error, MessageError, Results, from_json

logger = logging.getLogger(__name__)

REFUSAL_CODES = frozenset({"OVERLOADED", "SESSION_LIMIT"})
CLOSE_TRY_AGAIN_LATER = 1013


@dataclass(frozen=True)
class PaceSettings:
    """How a client sends: chunk size, pace and when it starts."""

    chunk_ms: int = 100
    start_wall_s: float = 0.0  # time.monotonic() at which the client connects
    open_timeout_s: float = 60.0
    finish_timeout_s: float = 120.0  # after the last chunk, how long to wait for the flush
    speed: float = 1.0  # stream seconds sent per wall second (1.0 = real time)


@dataclass
class ClientResult:
    """What one client saw: captions with arrival times, and when it sent what."""

    client: int
    send_log: SendLog = field(default_factory=SendLog)
    captions: list[Caption] = field(default_factory=list)
    refused: bool = False
    close_code: int | None = None
    errors: list[str] = field(default_factory=list)
    interim_updates: int = 0
    pending_text: str = ""  # peer: in-progress text never completed

    @property
    def audio_sent_s(self) -> float:
        return self.send_log.sent_stream_s


async def _sleep_until(wall_s: float) -> None:
    delay_s = wall_s - time.monotonic()
    if delay_s > 0:
        await asyncio.sleep(delay_s)


async def _send_paced(
    ws: ClientConnection,
    pcm: np.ndarray,
    pace: PaceSettings,
    send_log: SendLog,
    stop: asyncio.Event,
    as_float32: bool,
) -> None:
    """Send `pcm` (int16) in chunks on the wall clock; stop early when `stop` is set."""
    chunk_len = SAMPLE_RATE_HZ * pace.chunk_ms // 1000
    chunk_wall_s = pace.chunk_ms / 1000 / pace.speed
    t0 = time.monotonic()
    for k, offset in enumerate(range(0, len(pcm), chunk_len)):
        await _sleep_until(t0 + (k + 1) * chunk_wall_s)  # a chunk is sent once it has "happened"
        if stop.is_set():
            return
        chunk = pcm[offset : offset + chunk_len]
        payload = (
            (chunk.astype(np.float32) / 32768.0).astype("<f4").tobytes()
            if as_float32
            else chunk.astype("<i2").tobytes()
        )
        try:
            await ws.send(payload)
        except ConnectionClosed:
            return
        send_log.record((offset + len(chunk)) / SAMPLE_RATE_HZ, time.monotonic())


def _ours_url(base_ws_url: str) -> str:
    query = "encoding=linear16&sample_rate=16000&channels=1&interim_results=true"
    return f"{base_ws_url.rstrip('/')}/v1/listen?{query}"


def _ours_caption(message: Results, arrival_wall_s: float) -> Caption:
    return Caption(
        arrival_wall_s=arrival_wall_s,
        start_stream_s=message.start_s,
        end_stream_s=message.start_s + message.duration_s,
        text=message.transcript,
        is_final=message.is_final,
        words=tuple(Span(w.start_s, w.end_s) for w in message.words),
    )


async def _receive_ours(ws: ClientConnection, result: ClientResult, stop: asyncio.Event) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for raw in ws:
            arrival = time.monotonic()
            if not isinstance(raw, str):
                continue
            try:
                message = from_json(raw)
            except MessageError as exc:
                result.errors.append(str(exc))
                continue
            if isinstance(message, Results):
                caption = _ours_caption(message, arrival)
                if not caption.is_final and caption.text.strip():
                    result.interim_updates += 1
                result.captions.append(caption)
            elif isinstance(message, Error):
                result.errors.append(f"{message.code}: {message.message}")
                if message.code in REFUSAL_CODES:
                    result.refused = True
                    stop.set()


async def stream_ours(base_ws_url: str, stream: ClientStream, pace: PaceSettings) -> ClientResult:
    """Stream to our server with interim results on; CloseStream at the end, then wait for 1000."""
    result = ClientResult(client=stream.index)
    await _sleep_until(pace.start_wall_s)
    try:
        async with connect(
            _ours_url(base_ws_url),
            max_size=None,
            open_timeout=pace.open_timeout_s,
            ping_interval=None,
            close_timeout=5,
        ) as ws:
            stop = asyncio.Event()
            receiver = asyncio.create_task(_receive_ours(ws, result, stop))
            sender = asyncio.create_task(
                _send_paced(ws, stream.samples, pace, result.send_log, stop, as_float32=False)
            )
            # A close by the server (refusal, error) ends the receiver; stop sending then.
            await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
            if receiver.done():
                stop.set()
            await sender
            if not receiver.done():
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(json.dumps({"type": "CloseStream"}))
                try:
                    await asyncio.wait_for(receiver, pace.finish_timeout_s)
                except TimeoutError:
                    result.errors.append("timeout: no close after CloseStream")
            result.close_code = ws.close_code
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        result.errors.append(f"connect: {exc}")
        if isinstance(exc, InvalidStatus) and exc.response.status_code == 503:
            result.refused = True
    if result.close_code == CLOSE_TRY_AGAIN_LATER:
        result.refused = True
    return result


@dataclass(frozen=True)
class PeerOptions:
    """What the peer client announces, and how long it waits for segments after the audio."""

    model_dir: Path
    drain_quiet_s: float = 6.0
    drain_max_s: float = 30.0

    def first_message(self) -> str:
        return json.dumps(
            {
                "uid": str(uuid.uuid4()),
                "language": "en",
                "task": "transcribe",
                "model": str(self.model_dir),
                "use_vad": True,
                "send_last_n_segments": 10,
                "no_speech_thresh": 0.45,
                "clip_audio": False,
                "same_output_threshold": 10,
            }
        )


async def _peer_handshake(ws: ClientConnection, options: PeerOptions) -> str:
    """Send the options and return the answer: SERVER_READY, WAIT or an error text."""
    await ws.send(options.first_message())
    while True:
        raw = await ws.recv()
        if not isinstance(raw, str):
            continue
        message = json.loads(raw)
        if message.get("message") == "SERVER_READY":
            return "SERVER_READY"
        if message.get("status") == "WAIT":
            return "WAIT"
        if message.get("status") == "ERROR":
            return f"ERROR: {message.get('message', '')}"


async def _receive_peer(
    ws: ClientConnection, transcript: PeerTranscript, heard: asyncio.Event
) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for raw in ws:
            arrival = time.monotonic()
            if not isinstance(raw, str):
                continue
            message = json.loads(raw)
            segments = parse_segments(message)
            if segments is not None:
                transcript.observe(arrival, segments)
                heard.set()
            elif message.get("message") == "DISCONNECT":
                return


async def _wait_quiet(
    heard: asyncio.Event, receiver: asyncio.Task[None], opts: PeerOptions
) -> None:
    """Return once no message came for `drain_quiet_s`, or after `drain_max_s`."""
    deadline = time.monotonic() + opts.drain_max_s
    while not receiver.done() and time.monotonic() < deadline:
        heard.clear()
        try:
            quiet_s = min(opts.drain_quiet_s, deadline - time.monotonic())
            await asyncio.wait_for(heard.wait(), quiet_s)
        except TimeoutError:
            return


async def stream_peer(
    ws_url: str, stream: ClientStream, pace: PaceSettings, options: PeerOptions
) -> ClientResult:
    """Stream to WhisperLive; after the audio, wait for quiet, send END_OF_AUDIO, close."""
    result = ClientResult(client=stream.index)
    transcript = PeerTranscript()
    await _sleep_until(pace.start_wall_s)
    try:
        async with connect(
            ws_url,
            max_size=None,
            open_timeout=pace.open_timeout_s,
            ping_interval=None,
            close_timeout=5,
        ) as ws:
            answer = await asyncio.wait_for(_peer_handshake(ws, options), pace.open_timeout_s)
            if answer != "SERVER_READY":
                result.refused = answer == "WAIT"
                result.errors.append(answer)
            else:
                heard = asyncio.Event()
                stop = asyncio.Event()
                receiver = asyncio.create_task(_receive_peer(ws, transcript, heard))
                await _send_paced(ws, stream.samples, pace, result.send_log, stop, as_float32=True)
                await _wait_quiet(heard, receiver, options)
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(b"END_OF_AUDIO")
                try:
                    await asyncio.wait_for(receiver, 10.0)
                except TimeoutError:
                    receiver.cancel()
            result.close_code = ws.close_code
    except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as exc:
        result.errors.append(f"peer: {exc!r}")
    result.captions = [*transcript.interims, *transcript.finals]
    result.interim_updates = len(transcript.interims)
    result.pending_text = transcript.pending_text
    return result


async def warm_up_peer(ws_url: str, options: PeerOptions, timeout_s: float = 120.0) -> None:
    """Open and close one peer session so its model is loaded before the measured run."""
    async with connect(ws_url, max_size=None, open_timeout=timeout_s, ping_interval=None) as ws:
        answer = await asyncio.wait_for(_peer_handshake(ws, options), timeout_s)
        if answer != "SERVER_READY":
            raise RuntimeError(f"peer warm-up was refused: {answer}")
        silence = np.zeros(SAMPLE_RATE_HZ, dtype="<f4").tobytes()
        await ws.send(silence)
        await ws.send(b"END_OF_AUDIO")
