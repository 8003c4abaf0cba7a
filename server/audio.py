"""Raw linear16 decoding: any frame split, stereo downmix, streaming resampling to 16 kHz mono."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

from server.protocol import SAMPLE_RATE_HZ

Samples = npt.NDArray[np.float32]
EMPTY: Samples = np.zeros(0, dtype=np.float32)


class Linear16Decoder:
    """Signed 16-bit little-endian PCM in, float32 16 kHz mono out, chunk by chunk.

    A sample (or a stereo frame) split across two chunks is joined, never dropped; the
    resampler keeps its state across chunks so the output does not depend on chunking.
    """

    def __init__(self, sample_rate_hz: int, channels: int) -> None:
        self._channels = channels
        self._frame_bytes = 2 * channels
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

    def feed(self, data: bytes) -> Samples:
        buffer = self._carry + data if self._carry else data
        usable = len(buffer) - len(buffer) % self._frame_bytes
        self._carry = bytes(buffer[usable:])
        if usable == 0:
            return EMPTY
        pcm = np.frombuffer(buffer, dtype="<i2", count=usable // 2).astype(np.float32)
        pcm *= 1.0 / 32768.0
        if self._channels == 2:
            pcm = pcm.reshape(-1, 2).mean(axis=1, dtype=np.float32)
        return self._resample(pcm, last=False)

    def finish(self) -> Samples:
        """End of stream: flush the resampler; an incomplete trailing sample is discarded."""
        self._carry = b""
        return self._resample(EMPTY, last=True)

    def _resample(self, pcm: Samples, *, last: bool) -> Samples:
        if self._resampler is None:
            return pcm
        out = self._resampler.resample_chunk(pcm, last=last)
        return np.asarray(out, dtype=np.float32)
