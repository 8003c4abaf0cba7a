"""Stream decoders: linear16 and G.711 chunk-invariance, containers off the event loop, bombs."""

from __future__ import annotations

import asyncio
import io
import time
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server import container
from server.audio import AudioDecodeError, ContainerStream, PcmDecoder, decoder_for
from server.protocol import StreamOptions
from tests.support.paths import AUDIO_DIR
from tests.wsclient import chunks


def jfk_pcm() -> np.ndarray:
    with wave.open(str(Path(AUDIO_DIR) / "jfk_inaugural.wav")) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.int16)


def mulaw_encode(pcm: np.ndarray) -> bytes:
    """G.711 mu-law by the textbook formula (independent of the decoder's table)."""
    x = np.clip(pcm.astype(np.int32), -32635, 32635)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.abs(x) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=8))
def test_pcm_output_does_not_depend_on_chunking(sizes: list[int]) -> None:
    data = jfk_pcm()[:40000].tobytes() + b"\x01"  # and half a sample at the end
    whole = PcmDecoder("linear16", 44100, 2)
    expected = np.concatenate([whole.decode(data), whole.end().samples])
    cut = PcmDecoder("linear16", 44100, 2)
    parts = [cut.decode(piece) for piece in chunks(data, sizes)]
    tail = cut.end()
    assert np.array_equal(np.concatenate([*parts, tail.samples]), expected)
    assert tail.warning is not None and "1 byte(s)" in tail.warning


def test_mulaw_8khz_decodes_close_to_the_source() -> None:
    import soxr

    pcm16k = jfk_pcm()[: 16000 * 3]
    pcm8k = soxr.resample(pcm16k.astype(np.float32) / 32768, 16000, 8000)
    codes = mulaw_encode((pcm8k * 32768).astype(np.int16))
    decoder = decoder_for(StreamOptions(encoding="mulaw", sample_rate_hz=8000))
    assert isinstance(decoder, PcmDecoder)
    out = np.concatenate([decoder.decode(codes), decoder.end().samples])
    assert abs(len(out) - len(pcm16k)) < 50
    reference = soxr.resample(pcm8k, 8000, 16000)[: len(out)]
    error = out[: len(reference)] - reference
    snr_db = 10 * np.log10(np.mean(reference**2) / np.mean(error**2))
    assert snr_db > 25, "mu-law keeps about 38 dB of SNR on speech"


def _flac_bomb() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="flac") as out:
        stream = out.add_stream("flac", rate=16000, layout="mono")
        silence = np.zeros((1, 16000 * 300), dtype=np.int16)  # 5 minutes: a few KiB as FLAC
        frame = av.AudioFrame.from_ndarray(silence, format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


async def test_a_container_that_inflates_far_beyond_its_size_is_refused() -> None:
    data = _flac_bomb()
    assert len(data) < 200 * 1024
    stream = ContainerStream()
    with pytest.raises(AudioDecodeError, match="more than real recordings do"):
        for piece in chunks(data, [16384]):
            await stream.feed(piece)
        await stream.finish()
    stream.close()


class _SlowPipe(container._Pipe):
    """The real hand-off to the decoder's worker, whose every read takes 0.3 s: a stalled
    codec or an overloaded machine."""

    def read(self, size: int) -> bytes:
        time.sleep(0.3)
        return super().read(size)


async def test_container_decoding_never_blocks_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(container, "_Pipe", _SlowPipe)
    wav = io.BytesIO()
    with wave.open(wav, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(jfk_pcm()[:16000].tobytes())
    stream = ContainerStream()
    ticks: list[float] = []

    async def heartbeat() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    beat = asyncio.create_task(heartbeat())
    started = time.monotonic()
    samples = await stream.feed(wav.getvalue())
    samples = np.concatenate([samples, (await stream.finish()).samples])
    elapsed_s = time.monotonic() - started
    beat.cancel()
    assert len(samples) == 16000
    assert elapsed_s > 0.3, "the worker really was slow"
    gaps = np.diff(ticks)
    assert gaps.max() < 0.15, f"the loop stalled for {gaps.max():.2f} s while decoding"
