"""Incremental decoding of containerized audio (WebM, Ogg, WAV, MP3, FLAC, MP4) to 16 kHz mono.

A client that omits ``encoding`` (a browser's MediaRecorder, a file uploader) sends a
container byte stream cut into arbitrary pieces. :class:`ContainerDecoder` takes the pieces
with ``feed()`` and returns, at once, the audio they completed, as float32 mono samples at
16 kHz, so captions follow the speech live; ``finish()`` returns the rest at end of stream.

How: FFmpeg's demuxers (through PyAV) *pull* bytes from a reader that blocks until data
comes. Each decoder owns one worker thread that runs PyAV over a pipe, in lock-step with
the caller: ``feed()`` puts its bytes into the pipe and returns once the worker has taken
all of them and waits for more (or has stopped). The caller sees no concurrency, the output
does not depend on how the stream was split, and every byte is parsed once, so an hour-long
session costs no more per second than a short one.

The container is recognised from its first bytes before FFmpeg sees them, so random bytes
(or raw PCM sent without ``encoding=linear16``) are refused after a few bytes instead of
after megabytes of format probing, and FFmpeg never guesses a format for noise.

Latency: a WebM/Ogg/MP4 chunk's audio comes out in the same ``feed()`` (the resampler keeps
about 1 ms until ``finish()``); MP3 and PCM WAV trail by at most about 0.1 s; FLAC by about a
second (FFmpeg's FLAC parser reads frames ahead), which suits files rather than live audio.

Exceptions (the whole tree):
    ContainerDecodeError   the bytes are not audio in a supported container, the stream
                           broke, or ``max_buffered_bytes`` passed without decodable audio
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import av
import av.error
import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

Samples = npt.NDArray[np.float32]

SAMPLE_RATE_HZ = 16_000

SUPPORTED_HELP = (
    "could not decode the audio as a container (WAV, Ogg/Opus, WebM/Opus, MP3, FLAC); "
    "send linear16 with encoding=linear16&sample_rate=... or a supported container"
)

_EMPTY: Samples = np.zeros(0, dtype=np.float32)

# Bytes FFmpeg may ask for in one read; also the most a read hands over.
_READ_BUFFER_BYTES = 32 * 1024
# Demuxer errors in a row (with no packet between them) before the stream counts as broken.
_MAX_DEMUX_ERRORS_IN_A_ROW = 8
# Undecodable packets in a row before the stream counts as broken.
_MAX_DECODE_ERRORS_IN_A_ROW = 50
# Bytes needed to tell WebM from Matroska by the EBML DocType.
_EBML_HEAD_BYTES = 64


class ContainerDecodeError(Exception):
    """The stream is not decodable audio in a supported container.

    ``samples`` holds audio decoded in the same call before the failure (often empty), so a
    caller may still use it before closing the stream.
    """

    def __init__(self, message: str, *, samples: Samples = _EMPTY) -> None:
        super().__init__(message)
        self.samples = samples


@dataclass(frozen=True)
class ContainerFormat:
    """A recognised container: the FFmpeg demuxer to use and the name people know it by.

    For plain PCM WAV the header is read here and FFmpeg gets only the samples, through a
    raw PCM demuxer (``demuxer_options`` say rate and channels): FFmpeg's own WAV demuxer
    first reads 64 KiB to look for S/PDIF data, two seconds of 16 kHz mono, before it
    returns any audio. ``skip_bytes`` is the header length; ``data_bytes`` the length of the
    samples when the header states it (a live stream's header may not).
    """

    demuxer: str
    name: str
    demuxer_options: tuple[tuple[str, str], ...] = ()
    skip_bytes: int = 0
    data_bytes: int | None = None


# --------------------------------------------------------------------------- sniffing

_MPEG_RATES_HZ = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_MPEG_KBPS = {
    (3, 3): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (3, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (3, 1): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (2, 3): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (2, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (2, 1): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}


def _mpeg_frame(header: bytes) -> tuple[int, tuple[int, int, int]] | None:
    """Length and (version, layer, rate index) of an MPEG audio frame header, None if invalid."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version = (header[1] >> 3) & 3  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5, 1: reserved
    layer = (header[1] >> 1) & 3  # 3: I, 2: II, 1: III, 0: reserved
    bitrate_index = header[2] >> 4
    rate_index = (header[2] >> 2) & 3
    padding = (header[2] >> 1) & 1
    if version == 1 or layer == 0 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    bitrate_bps = _MPEG_KBPS[(3 if version == 3 else 2, layer)][bitrate_index] * 1000
    rate_hz = _MPEG_RATES_HZ[version][rate_index]
    if layer == 3:
        length = (12 * bitrate_bps // rate_hz + padding) * 4
    elif layer == 1 and version != 3:
        length = 72 * bitrate_bps // rate_hz + padding
    else:
        length = 144 * bitrate_bps // rate_hz + padding
    return length, (version, layer, rate_index)


def detect_container(head: bytes, *, final: bool = False) -> ContainerFormat | None:
    """Recognise the container from the first bytes of a stream.

    Returns None while more bytes are needed to decide (``final`` says no more will come);
    raises ContainerDecodeError for bytes that start no supported container.
    """
    found = _detect(head, final=final)
    if isinstance(found, ContainerFormat):
        return found
    if final and head:
        raise ContainerDecodeError(
            f"the stream ended before its format was clear; {SUPPORTED_HELP}"
        )
    return None


def _detect(head: bytes, *, final: bool) -> ContainerFormat | int:
    """The container, or how many bytes (at least) to wait for before asking again."""
    if len(head) < 12:
        return 12
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return _wav(head, final=final)
    if head[:4] == b"OggS":
        return ContainerFormat("ogg", "ogg")
    if head[:4] == b"fLaC":
        return ContainerFormat("flac", "flac")
    if head[:4] == b"\x1a\x45\xdf\xa3":
        if len(head) < _EBML_HEAD_BYTES and not final:
            return _EBML_HEAD_BYTES
        doc_type = "webm" if b"webm" in head[:_EBML_HEAD_BYTES] else "matroska"
        return ContainerFormat("matroska", doc_type)
    if head[4:8] == b"ftyp":
        return ContainerFormat("mov", "mp4")
    if head[:3] == b"ID3":
        # An ID3v2 tag (MP3 metadata, perhaps with cover art): look at what follows it.
        # FFmpeg skips the tag itself, whatever the format behind it.
        size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7
        size |= head[9] & 0x7F
        end = 10 + size + (10 if head[5] & 0x10 else 0)
        if len(head) < end + 12 and not final:
            return end + 12
        inner = _detect(head[end:], final=final)
        if isinstance(inner, int):
            return end + inner
        demuxer = "wav" if inner.name == "wav" else inner.demuxer
        return ContainerFormat(demuxer, inner.name)
    first = _mpeg_frame(head[:4])
    if first is not None:
        length, kind = first
        if len(head) < length + 4 and not final:
            return length + 4
        second = _mpeg_frame(head[length : length + 4])
        if second is None and len(head) < length + 4:
            return ContainerFormat("mp3", "mp3")  # the whole stream is one frame
        if second is not None and second[1] == kind:
            return ContainerFormat("mp3", "mp3")
    raise ContainerDecodeError(SUPPORTED_HELP)


# (WAVE format tag, bits per sample) -> FFmpeg's raw PCM demuxer
_WAV_RAW_DEMUXERS = {
    (1, 8): "u8",
    (1, 16): "s16le",
    (1, 24): "s24le",
    (1, 32): "s32le",
    (3, 32): "f32le",
    (3, 64): "f64le",
    (6, 8): "alaw",
    (7, 8): "mulaw",
}
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_UNKNOWN_WAV_SIZES = (0, 0xFFFFFFFF)


def _wav(head: bytes, *, final: bool) -> ContainerFormat | int:
    """Plain PCM WAV as a raw PCM stream past its header; anything else to FFmpeg's demuxer."""
    ffmpeg_wav = ContainerFormat("wav", "wav")
    pos = 12
    raw: ContainerFormat | None = None
    while True:
        if len(head) < pos + 8:
            return ffmpeg_wav if final else pos + 8
        chunk_id = head[pos : pos + 4]
        size = int.from_bytes(head[pos + 4 : pos + 8], "little")
        body = pos + 8
        if chunk_id == b"data":
            if raw is None:
                return ffmpeg_wav
            known = head[:4] == b"RIFF" and size not in _UNKNOWN_WAV_SIZES
            return ContainerFormat(
                raw.demuxer,
                "wav",
                raw.demuxer_options,
                skip_bytes=body,
                data_bytes=size if known else None,
            )
        if chunk_id == b"fmt ":
            if size < 16 or size > 1024:
                return ffmpeg_wav
            if len(head) < body + size:
                return ffmpeg_wav if final else body + size
            raw = _wav_raw_format(head[body : body + size])
            if raw is None:
                return ffmpeg_wav
        pos = body + size + (size & 1)


def _wav_raw_format(fmt: bytes) -> ContainerFormat | None:
    """The raw PCM demuxer for a WAV 'fmt ' chunk; None where FFmpeg's WAV demuxer must decode."""
    tag = int.from_bytes(fmt[0:2], "little")
    channels = int.from_bytes(fmt[2:4], "little")
    rate_hz = int.from_bytes(fmt[4:8], "little")
    bits = int.from_bytes(fmt[14:16], "little")
    layout = f"{channels}C"  # what FFmpeg's WAV demuxer reports: channels in unknown order
    if tag == _WAVE_FORMAT_EXTENSIBLE:
        if len(fmt) < 40:
            return None
        mask = int.from_bytes(fmt[20:24], "little")
        tag = int.from_bytes(fmt[24:26], "little")  # the sub-format GUID starts with the tag
        if mask and mask.bit_count() == channels:
            layout = f"0x{mask:x}"
    demuxer = _WAV_RAW_DEMUXERS.get((tag, bits))
    if demuxer is None or not 1 <= channels <= 64 or not 1000 <= rate_hz <= 768_000:
        return None
    options = (("sample_rate", str(rate_hz)), ("ch_layout", layout))
    return ContainerFormat(demuxer, "wav", options)


# --------------------------------------------------------------------------- the pipe


class _Pipe:
    """The hand-off between ``feed()`` (producer) and the FFmpeg worker thread (consumer).

    All fields are guarded by ``cond``. The worker blocks in ``read()`` when it has taken
    every byte; ``feed()`` waits for exactly that state (or for the worker to stop).
    """

    def __init__(self, max_unproductive_bytes: int) -> None:
        self.cond = threading.Condition()
        self.chunks: deque[bytes] = deque()
        self.offset = 0  # into chunks[0]
        self.end_of_input = False
        self.aborted = False
        self.worker_waiting = False
        self.worker_done = False
        self.bytes_read = 0
        self.bytes_read_at_last_audio = 0
        self.max_unproductive_bytes = max_unproductive_bytes
        self.unproductive = False
        self.samples: list[Samples] = []
        self.error: ContainerDecodeError | None = None
        self.idle_waiters: list[Callable[[], None]] = []

    def _idle(self) -> bool:
        return self.worker_done or (
            self.worker_waiting and not self.chunks and not self.end_of_input
        )

    def _wake_waiters(self) -> None:
        waiters, self.idle_waiters = self.idle_waiters, []
        for wake in waiters:
            wake()

    # ----- worker side (called by FFmpeg through PyAV, in the worker thread)

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; blocks until some arrive; b"" means end of stream."""
        with self.cond:
            while not self.chunks and not self.end_of_input and not self.aborted:
                self.worker_waiting = True
                self.cond.notify_all()
                self._wake_waiters()
                self.cond.wait()
            self.worker_waiting = False
            if self.aborted or not self.chunks:
                return b""
            if self.bytes_read - self.bytes_read_at_last_audio >= self.max_unproductive_bytes:
                # Ending the stream (rather than raising through FFmpeg) stops the demuxer
                # cleanly; the worker then reports why.
                self.unproductive = True
                return b""
            chunk = self.chunks[0]
            piece = chunk[self.offset : self.offset + size]
            self.offset += len(piece)
            if self.offset >= len(chunk):
                self.chunks.popleft()
                self.offset = 0
            self.bytes_read += len(piece)
            return piece

    def emit(self, samples: Samples) -> None:
        if not len(samples):
            return
        with self.cond:
            self.samples.append(samples)
            self.bytes_read_at_last_audio = self.bytes_read

    def stop(self, error: ContainerDecodeError | None) -> None:
        with self.cond:
            self.worker_done = True
            self.error = error
            self.cond.notify_all()
            self._wake_waiters()

    # ----- caller side

    def put(self, data: bytes) -> None:
        with self.cond:
            self.chunks.append(data)
            self.worker_waiting = False
            self.cond.notify_all()

    def close_input(self) -> None:
        with self.cond:
            self.end_of_input = True
            self.worker_waiting = False
            self.cond.notify_all()

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.chunks.clear()
            self.cond.notify_all()

    def wait_idle(self, timeout_s: float) -> tuple[Samples, ContainerDecodeError | None]:
        """Wait until the worker took every byte and wants more, or stopped; take its output.

        After ``close_input()`` the worker never waits again, so this waits for it to stop.
        """
        with self.cond:
            idle = self.cond.wait_for(self._idle, timeout=timeout_s)
            samples = _concat(self.samples)
            self.samples = []
            if not idle:
                self.aborted = True
                self.cond.notify_all()
                return samples, ContainerDecodeError(
                    f"decoding the audio stalled for {timeout_s:g} s; the stream was closed"
                )
            return samples, self.error

    async def wait_idle_async(
        self, timeout_s: float
    ) -> tuple[Samples, ContainerDecodeError | None]:
        """`wait_idle` for an event loop: the loop is never blocked while the worker runs."""
        loop = asyncio.get_running_loop()
        woken = loop.create_future()

        def resolve() -> None:
            if not woken.done():
                woken.set_result(None)

        def wake() -> None:
            loop.call_soon_threadsafe(resolve)

        with self.cond:
            ready = self._idle()
            if not ready:
                self.idle_waiters.append(wake)
        if not ready:
            try:
                async with asyncio.timeout(timeout_s):
                    await woken
            except TimeoutError:
                pass  # reported by wait_idle below
        return self.wait_idle(0.0)


def _concat(parts: list[Samples]) -> Samples:
    if not parts:
        return _EMPTY
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts)


# --------------------------------------------------------------------------- the worker


_MIN_RATE_HZ = 8_000
_MAX_RATE_HZ = 192_000
_MAX_CHANNELS = 8


class _Resampler:
    """Frames of any format, layout and rate -> float32 mono 16 kHz; rebuilt on input changes."""

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._key: tuple[str, str, int] | None = None

    def push(self, frame: av.AudioFrame) -> list[Samples]:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if not _MIN_RATE_HZ <= frame.sample_rate <= _MAX_RATE_HZ:
            # A header claiming 1 Hz would turn every byte into seconds of audio.
            raise ContainerDecodeError(
                f"the stream says its sample rate is {frame.sample_rate} Hz; supported rates "
                f"are {_MIN_RATE_HZ} to {_MAX_RATE_HZ} Hz"
            )
        if len(frame.layout.channels) > _MAX_CHANNELS:
            raise ContainerDecodeError(
                f"the stream has {len(frame.layout.channels)} channels; at most "
                f"{_MAX_CHANNELS} are supported"
            )
        out: list[Samples] = []
        if key != self._key:
            out.extend(self.flush())
            self._key = key
            # rematrix_maxval=1 makes the downmix an average (L+R)/2, never louder than its input.
            self._resampler = av.AudioResampler(
                format="flt", layout="mono", rate=SAMPLE_RATE_HZ, options={"rematrix_maxval": "1"}
            )
        assert self._resampler is not None
        out.extend(_mono(f) for f in self._resampler.resample(frame))
        return out

    def flush(self) -> list[Samples]:
        if self._resampler is None:
            return []
        out = [_mono(f) for f in self._resampler.resample(None)]
        self._resampler = None
        self._key = None
        return out


def _mono(frame: av.AudioFrame) -> Samples:
    # A packed mono float frame is one plane; reading it directly skips to_ndarray's vstack.
    # The plane may be padded past the last sample, hence count. The copy frees the frame.
    samples = np.frombuffer(memoryview(frame.planes[0]), dtype=np.float32, count=frame.samples)
    return np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)  # also the copy


def _run_worker(pipe: _Pipe, fmt: ContainerFormat) -> None:
    """Thread body: demux and decode the pipe until it ends; never raises."""
    error: ContainerDecodeError | None = None
    try:
        _decode(pipe, fmt)
    except ContainerDecodeError as exc:
        error = exc
    except Exception:
        logger.exception("container decoder worker failed")
        error = ContainerDecodeError("the audio stream could not be decoded (internal error)")
    if pipe.unproductive and not pipe.aborted:
        error = ContainerDecodeError(
            f"no audio could be decoded from {pipe.max_unproductive_bytes} bytes of the "
            f"{fmt.name} stream; {SUPPORTED_HELP}"
        )
    pipe.stop(error)


def _broken_stream_message(fmt: ContainerFormat, exc: av.error.FFmpegError) -> str:
    if fmt.name == "mp4":
        # Most likely an MP4/M4A file whose index (moov) follows the audio: reading it
        # needs a seek back, which a stream cannot do.
        return (
            "this MP4/M4A cannot be decoded as a stream (its index probably comes after the "
            "audio); send fragmented MP4 as MediaRecorder makes, an MP4 with the index first "
            "(ffmpeg -movflags +faststart), or another supported container"
        )
    return f"the {fmt.name} stream is corrupt ({exc.strerror}); {SUPPORTED_HELP}"


def _decode(pipe: _Pipe, fmt: ContainerFormat) -> None:
    try:
        container = av.open(
            pipe,
            mode="r",
            format=fmt.demuxer,
            buffer_size=_READ_BUFFER_BYTES,
            metadata_errors="ignore",
            # Do not read seconds of audio to learn what the header already says.
            container_options={
                "analyzeduration": "100000",
                "probesize": "32768",
                **dict(fmt.demuxer_options),
            },
        )
    except av.error.FFmpegError as exc:
        if pipe.aborted or pipe.unproductive:
            return
        if isinstance(exc, av.error.EOFError) or pipe.end_of_input:
            # The stream ended inside its header: no audio, and nothing more to say.
            logger.info("the %s stream ended before its first audio packet", fmt.name)
            return
        raise ContainerDecodeError(
            f"the {fmt.name} stream could not be opened ({exc.strerror}); {SUPPORTED_HELP}"
        ) from exc
    with container:
        if not container.streams.audio:
            raise ContainerDecodeError(
                f"the {fmt.name} stream has no audio track; send a stream with audio"
            )
        stream = container.streams.audio[0]
        codec = stream.codec_context
        if codec is None:
            raise ContainerDecodeError(
                f"the {fmt.name} stream's audio codec is not supported; {SUPPORTED_HELP}"
            )
        resampler = _Resampler()
        decode_errors = 0
        demux_errors = 0
        while True:
            try:
                for packet in container.demux(stream):
                    demux_errors = 0
                    if packet.size == 0:
                        continue  # PyAV's end-of-stream marker; the decoder is flushed below
                    try:
                        frames = codec.decode(packet)
                    except av.error.FFmpegError as exc:
                        decode_errors += 1
                        logger.debug("skipped an undecodable %s packet: %s", fmt.name, exc)
                        if decode_errors > _MAX_DECODE_ERRORS_IN_A_ROW:
                            raise ContainerDecodeError(
                                f"the {fmt.name} stream's audio packets cannot be decoded"
                            ) from exc
                        continue
                    decode_errors = 0
                    for frame in frames:
                        for samples in resampler.push(frame):
                            pipe.emit(samples)
                break
            except av.error.FFmpegError as exc:
                if pipe.aborted:
                    return
                if pipe.end_of_input or pipe.unproductive:
                    # A truncated stream: keep what was decodable.
                    logger.info("the %s stream ended inside a packet: %s", fmt.name, exc)
                    break
                demux_errors += 1
                if demux_errors > _MAX_DEMUX_ERRORS_IN_A_ROW:
                    raise ContainerDecodeError(_broken_stream_message(fmt, exc)) from exc
        if pipe.aborted:
            return
        try:
            tail = [s for frame in codec.decode(None) for s in resampler.push(frame)]
        except av.error.FFmpegError as exc:
            logger.debug("flushing the %s decoder failed: %s", fmt.name, exc)
            tail = []
        tail.extend(resampler.flush())
        for samples in tail:
            pipe.emit(samples)


# --------------------------------------------------------------------------- public class


class ContainerDecoder:
    """Decodes a containerized audio byte stream, chunk by chunk, to float32 mono 16 kHz.

    Not thread-safe: call it from one thread (or one task) at a time. ``feed()`` blocks for
    as long as decoding its bytes takes (about a millisecond for 250 ms of Opus).
    """

    def __init__(
        self, *, max_buffered_bytes: int = 8 * 1024 * 1024, stall_timeout_s: float = 30.0
    ) -> None:
        if max_buffered_bytes < 1024:
            raise ValueError("max_buffered_bytes must be at least 1024")
        self._max_buffered_bytes = max_buffered_bytes
        self._stall_timeout_s = stall_timeout_s
        self._head = bytearray()  # bytes held until the container is recognised
        self._format: ContainerFormat | None = None
        self._pipe: _Pipe | None = None
        self._thread: threading.Thread | None = None
        self._error: ContainerDecodeError | None = None
        self._finished = False
        self._data_left: int | None = None  # bytes of samples still expected (WAV)
        self._sniff_at = 0  # header bytes needed before the next recognition attempt
        self._closer: weakref.finalize[[], ContainerDecoder] | None = None

    @property
    def format_name(self) -> str | None:
        """The container recognised from the first bytes ("webm", "ogg", "wav", ...), or None."""
        return self._format.name if self._format else None

    def feed(self, data: bytes) -> Samples:
        """Add bytes of the stream; return the samples they made decodable (maybe none)."""
        if not self._give(data):
            return _EMPTY
        return self._collect()

    async def feed_async(self, data: bytes) -> Samples:
        """`feed` for an event loop: waits for the worker without blocking the loop."""
        if not self._give(data):
            return _EMPTY
        return await self._collect_async()

    def finish(self) -> Samples:
        """End of stream: return every sample not returned yet, and stop the worker."""
        if not self._end():
            return _EMPTY
        samples = self._collect()
        assert self._thread is not None
        self._thread.join(timeout=self._stall_timeout_s)
        return samples

    async def finish_async(self) -> Samples:
        """`finish` for an event loop."""
        if not self._end():
            return _EMPTY
        return await self._collect_async()  # the worker has stopped: nothing left to join

    def close(self) -> None:
        """Abandon the stream (no more output); safe to call at any time, more than once."""
        self._finished = True
        if self._closer is not None:
            self._closer()

    def __enter__(self) -> ContainerDecoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----- internals

    def _give(self, data: bytes) -> bool:
        """Pass bytes on to the worker; False when there is nothing to wait for."""
        self._raise_if_failed()
        if self._finished:
            raise RuntimeError("feed() called after finish() or close()")
        if not data:
            return False
        if self._pipe is None:
            self._head += data
            if len(self._head) < self._sniff_at or not self._start(final=False):
                if len(self._head) > self._max_buffered_bytes:
                    self._fail(
                        ContainerDecodeError(
                            f"{len(self._head)} bytes arrived without a recognisable "
                            f"container header; {SUPPORTED_HELP}"
                        )
                    )
                return False
        else:
            self._put(bytes(data))
        return True

    def _end(self) -> bool:
        """Close the input; False when no stream was ever started (nothing to collect)."""
        self._raise_if_failed()
        if self._finished:
            raise RuntimeError("finish() called twice or after close()")
        if self._pipe is None and not self._start(final=True):
            self._finished = True
            return False  # nothing was ever sent
        self._finished = True
        assert self._pipe is not None
        self._pipe.close_input()
        return True

    def _start(self, *, final: bool) -> bool:
        """Recognise the container and start the worker; False if more bytes are needed."""
        try:
            found = _detect(bytes(self._head), final=final)
            if final and not isinstance(found, ContainerFormat):
                detect_container(bytes(self._head), final=True)  # raises its error
        except ContainerDecodeError as exc:
            self._fail(exc)
        if not isinstance(found, ContainerFormat):
            # Look again only once that many bytes are here: a client sending tiny pieces
            # of a long header must not make each piece re-read the whole header.
            self._sniff_at = max(found, len(self._head) + 1)
            return False
        fmt = found
        self._format = fmt
        pipe = _Pipe(self._max_buffered_bytes)
        thread = threading.Thread(
            target=_run_worker, args=(pipe, fmt), name=f"container-{fmt.name}", daemon=True
        )
        self._pipe, self._thread = pipe, thread
        # The worker holds the pipe, never the decoder, so a dropped decoder is collected
        # and its worker told to stop.
        self._closer = weakref.finalize(self, pipe.abort)
        thread.start()
        self._data_left = fmt.data_bytes
        head, self._head = bytes(self._head[fmt.skip_bytes :]), bytearray()
        self._put(head)
        return True

    def _put(self, data: bytes) -> None:
        """Hand bytes to the worker, less any past the end the header announced."""
        assert self._pipe is not None
        if self._data_left is not None:
            data = data[: self._data_left]
            self._data_left -= len(data)
        if data:
            self._pipe.put(data)

    def _collect(self) -> Samples:
        assert self._pipe is not None
        return self._check(*self._pipe.wait_idle(self._stall_timeout_s))

    async def _collect_async(self) -> Samples:
        assert self._pipe is not None
        return self._check(*await self._pipe.wait_idle_async(self._stall_timeout_s))

    def _check(self, samples: Samples, error: ContainerDecodeError | None) -> Samples:
        if error is not None:
            error.samples = samples
            self._fail(error)
        return samples

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise ContainerDecodeError(str(self._error))

    def _fail(self, error: ContainerDecodeError) -> NoReturn:
        self._error = error
        self._finished = True
        if self._closer is not None:
            self._closer()
        raise error
