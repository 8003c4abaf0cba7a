"""Decode any file PyAV/FFmpeg can read (wav, mp3, flac, m4a, ogg, video) to 16 kHz mono PCM16.

Errors: `AudioFileError` (missing file, no audio stream, undecodable data).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import av.error

SAMPLE_RATE_HZ = 16_000
BYTES_PER_SAMPLE = 2


class AudioFileError(Exception):
    """The file cannot be read as audio."""


def pcm16_chunks(path: Path, chunk_ms: int = 100) -> Iterator[bytes]:
    """Yield the first audio stream of `path` as 16 kHz mono PCM16, `chunk_ms` per chunk.

    Decoding is lazy (packet by packet), so long files start streaming at once. The last
    chunk may be shorter.
    """
    if chunk_ms <= 0:
        raise ValueError("chunk_ms must be positive")
    chunk_bytes = SAMPLE_RATE_HZ * BYTES_PER_SAMPLE * chunk_ms // 1000
    pending = bytearray()
    for pcm in _decoded_pcm(path):
        pending += pcm
        while len(pending) >= chunk_bytes:
            yield bytes(pending[:chunk_bytes])
            del pending[:chunk_bytes]
    if pending:
        yield bytes(pending)


def _decoded_pcm(path: Path) -> Iterator[bytes]:
    if not path.is_file():
        raise AudioFileError(f"{path}: no such file")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise AudioFileError(f"{path}: not a media file FFmpeg can read ({exc})") from exc
    with container:
        if not container.streams.audio:
            raise AudioFileError(f"{path}: the file has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE_HZ)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    yield _frame_bytes(out)
            for out in resampler.resample(None):
                yield _frame_bytes(out)
        except av.error.FFmpegError as exc:
            raise AudioFileError(f"{path}: cannot decode the audio ({exc})") from exc


def _frame_bytes(frame: av.AudioFrame) -> bytes:
    # Packed s16 mono: one plane; the plane's buffer may be padded past the samples.
    return bytes(frame.planes[0])[: frame.samples * BYTES_PER_SAMPLE]
