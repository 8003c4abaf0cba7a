"""Client audio to 16 kHz mono float32: raw PCM, G.711 and containers, for one stream.

`decoder_for(options)` gives the stream's `StreamDecoder`. Raw encodings (linear16, and
G.711 mu-law / A-law as telephony bridges send them) are decoded at once; containers go
through `server.container` (PyAV in a worker thread), awaited without blocking the event
loop. Any chunking of the input gives the same output: a sample split across two chunks is
joined, and the resampler keeps its state across chunks.

Errors: `AudioDecodeError` (the bytes cannot be audio in the announced encoding; its message
is for the client). A stream that ends inside a sample is not an error: `finish()` reports
it as a warning next to the last samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import soxr

from server.container import ContainerDecodeError, ContainerDecoder
from server.protocol import SAMPLE_RATE_HZ, StreamOptions

Samples = npt.NDArray[np.float32]
EMPTY: Samples = np.zeros(0, dtype=np.float32)

# Decoded audio a container stream may yield: real codecs stay under about 1.3 s per KiB
# (Opus at its lowest bitrate); beyond this the input is a decompression bomb.
CONTAINER_FREE_S = 60.0
CONTAINER_S_PER_KIB = 2.0


class AudioDecodeError(ValueError):
    """The stream is not decodable in its announced encoding; the message says why."""

    def __init__(self, message: str, samples: Samples = EMPTY) -> None:
        super().__init__(message)
        self.samples = samples
        """Audio decoded in the same call before the failure (often none)."""


@dataclass(frozen=True)
class Tail:
    """What `finish()` returns: the last samples and, if any, a warning for the client."""

    samples: Samples
    warning: str | None = None


class StreamDecoder(Protocol):
    async def feed(self, data: bytes) -> Samples: ...

    async def finish(self) -> Tail: ...

    def close(self) -> None: ...


def _g711_table(kind: str) -> npt.NDArray[np.float32]:
    """The 256 G.711 code words (ITU-T G.711) as float32 samples in [-1, 1]."""
    codes = np.arange(256, dtype=np.int32)
    if kind == "mulaw":
        u = ~codes & 0xFF
        exponent = (u >> 4) & 0x07
        mantissa = u & 0x0F
        magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
        pcm = np.where(u & 0x80, -magnitude, magnitude)
    else:
        a = codes ^ 0x55
        exponent = (a >> 4) & 0x07
        mantissa = a & 0x0F
        magnitude = np.where(
            exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1)
        )
        pcm = np.where(a & 0x80, magnitude, -magnitude)
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


_G711 = {"mulaw": _g711_table("mulaw"), "alaw": _g711_table("alaw")}


class PcmDecoder:
    """linear16 (signed 16-bit little-endian) or G.711 mu-law/A-law, interleaved channels.

    A sample (or a stereo frame) split across two chunks is joined, never dropped; stereo
    is averaged to mono; rates other than 16 kHz go through a streaming soxr resampler.
    """

    def __init__(self, encoding: str, sample_rate_hz: int, channels: int) -> None:
        self._table = _G711.get(encoding)
        self._sample_bytes = 1 if self._table is not None else 2
        self._channels = channels
        self._frame_bytes = self._sample_bytes * channels
        self._carry = b""
        self._resampler: soxr.ResampleStream | None = None
        if sample_rate_hz != SAMPLE_RATE_HZ:
            self._resampler = soxr.ResampleStream(
                sample_rate_hz, SAMPLE_RATE_HZ, 1, dtype="float32", quality="HQ"
            )

    @property
    def leftover_bytes(self) -> int:
        """Bytes of an incomplete sample frame still waiting for their other half."""
        return len(self._carry)

    def decode(self, data: bytes) -> Samples:
        buffer = self._carry + data if self._carry else data
        usable = len(buffer) - len(buffer) % self._frame_bytes
        self._carry = bytes(buffer[usable:])
        if usable == 0:
            return EMPTY
        if self._table is not None:
            pcm = self._table[np.frombuffer(buffer, dtype=np.uint8, count=usable)]
        else:
            pcm = np.frombuffer(buffer, dtype="<i2", count=usable // 2).astype(np.float32)
            pcm *= 1.0 / 32768.0
        if self._channels == 2:
            pcm = pcm.reshape(-1, 2).mean(axis=1, dtype=np.float32)
        return self._resample(pcm, last=False)

    def end(self) -> Tail:
        """End of stream: flush the resampler; an incomplete trailing sample is dropped
        and reported."""
        leftover = len(self._carry)
        self._carry = b""
        warning = None
        if leftover:
            warning = (
                f"the stream ended with {leftover} byte(s) of an incomplete sample; "
                f"this encoding needs {self._frame_bytes} bytes per sample frame"
            )
        return Tail(self._resample(EMPTY, last=True), warning)

    async def feed(self, data: bytes) -> Samples:
        return self.decode(data)

    async def finish(self) -> Tail:
        return self.end()

    def close(self) -> None:
        self._carry = b""

    def _resample(self, pcm: Samples, *, last: bool) -> Samples:
        if self._resampler is None:
            return pcm
        out = self._resampler.resample_chunk(pcm, last=last)
        return np.asarray(out, dtype=np.float32)


class ContainerStream:
    """A containerized stream (WAV, Ogg, WebM, MP3, FLAC, MP4), refused when it inflates
    far beyond what real recordings do (a decompression bomb) before its audio is used."""

    def __init__(self, decoder: ContainerDecoder | None = None) -> None:
        self._decoder = decoder or ContainerDecoder()
        self._kib = 0.0
        self._seconds = 0.0

    async def feed(self, data: bytes) -> Samples:
        self._kib += len(data) / 1024
        try:
            samples = await self._decoder.feed_async(data)
        except ContainerDecodeError as exc:
            raise AudioDecodeError(str(exc), exc.samples) from exc
        return self._guard(samples)

    async def finish(self) -> Tail:
        try:
            return Tail(self._guard(await self._decoder.finish_async()))
        except ContainerDecodeError as exc:
            raise AudioDecodeError(str(exc), exc.samples) from exc

    def close(self) -> None:
        self._decoder.close()

    def _guard(self, samples: Samples) -> Samples:
        self._seconds += len(samples) / SAMPLE_RATE_HZ
        if self._seconds > CONTAINER_FREE_S + CONTAINER_S_PER_KIB * self._kib:
            self._decoder.close()
            raise AudioDecodeError(
                f"the stream decodes to {self._seconds:.0f} s of audio from "
                f"{self._kib:.0f} KiB, more than real recordings do; send linear16 or a "
                "normally encoded container"
            )
        return samples


def decoder_for(options: StreamOptions) -> StreamDecoder:
    """The decoder of a stream opened with `options` (no encoding: a container)."""
    if options.encoding is None:
        return ContainerStream()
    return PcmDecoder(options.encoding, options.sample_rate_hz, options.channels)
