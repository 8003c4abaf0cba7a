"""Tests for server.container: incremental container decoding matches a one-shot decode."""

from __future__ import annotations

import base64
import gc
import http.server
import io
import itertools
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.container import (
    SAMPLE_RATE_HZ,
    ContainerDecodeError,
    ContainerDecoder,
    detect_container,
)

Samples = npt.NDArray[np.float32]

SOURCE_RATE_HZ = 44_100
RIGHT_GAIN = 0.6  # the right channel is quieter, so the mono mix is (1 + 0.6) / 2 = 0.8 x


# --------------------------------------------------------------------------- test inputs


class _Sink:
    """A write-only, non-seekable file: records each write, as a live recorder hands out data."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.writes.append(bytes(data))
        return len(data)


@dataclass(frozen=True)
class Encoded:
    kind: str
    writes: list[bytes]  # the muxer's writes: for WebM/Ogg, one per ~250 ms like MediaRecorder

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


# kind -> (muxer, encoder, encoder rate, muxer options)
_SPECS: dict[str, tuple[str, str, int, dict[str, str]]] = {
    "webm": ("webm", "libopus", 48_000, {"cluster_time_limit": "250"}),
    "ogg": ("ogg", "libopus", 48_000, {"page_duration": "250000"}),
    "mp3": ("mp3", "libmp3lame", 44_100, {}),
    "flac": ("flac", "flac", 44_100, {}),
    "wav": ("wav", "pcm_s16le", 44_100, {}),
    "mp4": ("mp4", "aac", 44_100, {"movflags": "frag_keyframe+empty_moov+default_base_moof"}),
}


def _decode_file(path: Path, *, rate_hz: int, layout: str) -> npt.NDArray[np.float32]:
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate_hz)
        frames = [o for f in container.decode(audio=0) for o in resampler.resample(f)]
        frames += resampler.resample(None)
    planes: npt.NDArray[np.float32] = np.concatenate([f.to_ndarray() for f in frames], axis=1)
    return planes


def _stereo_source(audio_dir: Path) -> npt.NDArray[np.float32]:
    """jfk_inaugural.wav as 44.1 kHz stereo float, right channel at RIGHT_GAIN."""
    mono = _decode_file(audio_dir / "jfk_inaugural.wav", rate_hz=SOURCE_RATE_HZ, layout="mono")
    stereo: npt.NDArray[np.float32] = np.concatenate([mono, mono * RIGHT_GAIN])
    return stereo


def _encode(stereo: npt.NDArray[np.float32], kind: str) -> Encoded:
    muxer, codec, rate_hz, options = _SPECS[kind]
    return Encoded(kind, _encode_writes(stereo, muxer, codec, rate_hz, options))


def _encode_with(stereo: npt.NDArray[np.float32], muxer: str, codec: str, rate_hz: int) -> bytes:
    return b"".join(_encode_writes(stereo, muxer, codec, rate_hz, {}))


def _encode_writes(
    stereo: npt.NDArray[np.float32],
    muxer: str,
    codec: str,
    rate_hz: int,
    options: dict[str, str],
) -> list[bytes]:
    sink = _Sink()
    with av.open(sink, "w", format=muxer, options=options) as out:
        stream = out.add_stream(codec, rate=rate_hz, layout="stereo")
        assert isinstance(stream, av.AudioStream)
        fmt = stream.codec_context.format
        resampler = av.AudioResampler(format=fmt, layout="stereo", rate=rate_hz)
        for start in range(0, stereo.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(stereo[:, start : start + 1024]),
                format="fltp",
                layout="stereo",
            )
            frame.sample_rate = SOURCE_RATE_HZ
            for converted in resampler.resample(frame):
                out.mux(stream.encode(converted))
        for converted in resampler.resample(None):
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    return sink.writes


def one_shot(data: bytes) -> Samples:
    """Decode a whole file at once with plain PyAV: the reference for incremental decoding."""
    with av.open(io.BytesIO(data), "r") as container:
        resampler = av.AudioResampler(
            format="flt", layout="mono", rate=SAMPLE_RATE_HZ, options={"rematrix_maxval": "1"}
        )
        frames = [o for f in container.decode(audio=0) for o in resampler.resample(f)]
        frames += resampler.resample(None)
    if not frames:
        return np.zeros(0, dtype=np.float32)
    samples: Samples = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    return samples


@pytest.fixture(scope="module")
def source_16k(audio_dir: Path) -> Samples:
    mono = _decode_file(audio_dir / "jfk_inaugural.wav", rate_hz=SAMPLE_RATE_HZ, layout="mono")
    samples: Samples = mono[0]
    return samples


@pytest.fixture(scope="module")
def stereo(audio_dir: Path) -> npt.NDArray[np.float32]:
    return _stereo_source(audio_dir)


@pytest.fixture(scope="module")
def encoded(stereo: npt.NDArray[np.float32]) -> dict[str, Encoded]:
    return {kind: _encode(stereo, kind) for kind in _SPECS}


@pytest.fixture(scope="module")
def short_webm(stereo: npt.NDArray[np.float32]) -> Encoded:
    """About 1.2 s of speech as WebM/Opus: small enough to feed byte by byte."""
    return _encode(stereo[:, 44_100 : 44_100 + 53_000], "webm")


@pytest.fixture(scope="module")
def references(encoded: dict[str, Encoded]) -> dict[str, Samples]:
    return {kind: one_shot(enc.data) for kind, enc in encoded.items()}


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def decode_in_chunks(chunks: Iterable[bytes], **kwargs: int) -> tuple[list[Samples], Samples]:
    """Feed every chunk; return the per-feed outputs and finish()'s output."""
    decoder = ContainerDecoder(**kwargs)
    outputs = [decoder.feed(chunk) for chunk in chunks]
    return outputs, decoder.finish()


def joined(outputs: list[Samples], tail: Samples) -> Samples:
    samples: Samples = np.concatenate([*outputs, tail])
    return samples


def best_correlation(a: Samples, b: Samples, max_lag: int) -> float:
    """Pearson correlation of a and b at the lag (up to max_lag samples) that aligns them best."""
    n = min(len(a), len(b))
    x, y = a[:n].astype(np.float64), b[:n].astype(np.float64)
    size = 2 * n
    cross = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(y, size)), size)
    candidates = np.concatenate([cross[: max_lag + 1], cross[size - max_lag :]])
    index = int(np.argmax(candidates))
    lag = index if index <= max_lag else index - len(candidates)
    if lag >= 0:
        x, y = x[lag:], y[: n - lag]
    else:
        x, y = x[: n + lag], y[-lag:]
    return float(np.corrcoef(x, y)[0, 1])


def container_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("container-")]


# --------------------------------------------------------------------------- equality


@pytest.mark.parametrize("kind", list(_SPECS))
@pytest.mark.parametrize("chunk_size", [997, 4096, None], ids=["997", "4096", "whole"])
def test_chunked_decode_equals_one_shot(
    kind: str,
    chunk_size: int | None,
    encoded: dict[str, Encoded],
    references: dict[str, Samples],
) -> None:
    data = encoded[kind].data
    outputs, tail = decode_in_chunks([data] if chunk_size is None else chunks_of(data, chunk_size))
    got = joined(outputs, tail)
    ref = references[kind]
    assert got.dtype == np.float32 and got.ndim == 1
    # The demuxer sees the same bytes whatever the split, so the output is bit-identical.
    np.testing.assert_array_equal(got, ref)


def test_one_byte_chunks_equal_one_shot(short_webm: Encoded) -> None:
    data = short_webm.data
    outputs, tail = decode_in_chunks(chunks_of(data, 1))
    got = joined(outputs, tail)
    np.testing.assert_array_equal(got, one_shot(data))
    assert abs(len(got) - 53_000 * SAMPLE_RATE_HZ // SOURCE_RATE_HZ) < 0.005 * SAMPLE_RATE_HZ


@pytest.mark.parametrize("kind", list(_SPECS))
def test_output_is_the_source_downmixed_and_resampled(
    kind: str, references: dict[str, Samples], source_16k: Samples, encoded: dict[str, Encoded]
) -> None:
    """Independent of PyAV's one-shot path: compare with the original 16 kHz recording."""
    outputs, tail = decode_in_chunks(chunks_of(encoded[kind].data, 4096))
    got = joined(outputs, tail)
    # Length within a few ms (lossy codecs add encoder delay/padding; MP3 about 50 ms).
    assert abs(len(got) - len(source_16k)) <= 0.06 * SAMPLE_RATE_HZ
    corr = best_correlation(got, source_16k, max_lag=800)
    assert corr > (0.999 if kind in ("wav", "flac") else 0.95)
    # Mono is the average of the channels: (1 + RIGHT_GAIN) / 2 of the source's level.
    ratio = float(np.sqrt(np.mean(got**2) / np.mean(source_16k**2)))
    # (A sum scaled by 1/sqrt(2), FFmpeg's default for float output, would give 1.13.)
    assert ratio == pytest.approx((1 + RIGHT_GAIN) / 2, rel=0.1)


def test_plain_16k_mono_wav_file(audio_dir: Path, source_16k: Samples) -> None:
    data = (audio_dir / "jfk_inaugural.wav").read_bytes()
    decoder = ContainerDecoder()
    outputs = [decoder.feed(chunk) for chunk in chunks_of(data, 3000)]
    got = joined(outputs, decoder.finish())
    assert decoder.format_name == "wav"
    np.testing.assert_allclose(got, source_16k, atol=1e-6)


def make_wav(
    samples: bytes,
    *,
    tag: int,
    channels: int,
    rate_hz: int,
    bits: int,
    mask: int | None = None,
    data_size: int | None = None,
    before_data: bytes = b"",
    after_data: bytes = b"",
) -> bytes:
    """A WAV file; ``mask`` makes it WAVE_FORMAT_EXTENSIBLE with that channel mask."""
    block_align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate_hz, rate_hz * block_align, block_align, bits)
    if mask is not None:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt = struct.pack(
            "<HHIIHH", 0xFFFE, channels, rate_hz, rate_hz * block_align, block_align, bits
        )
        fmt += struct.pack("<HHI", 22, bits, mask) + struct.pack("<H", tag) + guid_tail
    size = len(samples) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + before_data
    body += b"data" + struct.pack("<I", size) + samples + after_data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _pcm(source: Samples, fmt: str, channels: int) -> bytes:
    signal = np.repeat(source[:, None] * 0.9, channels, axis=1)
    signal[:, 1:] *= RIGHT_GAIN
    if fmt == "u8":
        return (signal * 127 + 128).astype(np.uint8).tobytes()
    if fmt == "s16":
        return (signal * 32767).astype("<i2").tobytes()
    if fmt == "s24":
        wide = (signal * 8_388_607).astype("<i4").reshape(-1, 1).view(np.uint8)
        return wide[:, :3].tobytes()
    if fmt == "s32":
        return (signal * 2_147_483_000).astype("<i4").tobytes()
    if fmt == "f32":
        return signal.astype("<f4").tobytes()
    if fmt == "f64":
        return signal.astype("<f8").tobytes()
    if fmt == "mulaw":  # any byte is a valid mu-law code
        return ((signal * 127).astype(np.int8).view(np.uint8)).tobytes()
    raise AssertionError(fmt)


# (sample format, WAVE tag, bits, channels, rate, extensible channel mask, raw demuxer)
_WAV_VARIANTS = [
    ("s16", 1, 16, 1, 16_000, None, "s16le"),
    ("u8", 1, 8, 1, 8_000, None, "u8"),
    ("s24", 1, 24, 2, 48_000, None, "s24le"),
    ("s32", 1, 32, 2, 44_100, 0x3, "s32le"),
    ("f32", 3, 32, 2, 44_100, 0x3, "f32le"),
    ("f64", 3, 64, 1, 22_050, None, "f64le"),
    ("mulaw", 7, 8, 1, 8_000, None, "mulaw"),
]


@pytest.mark.parametrize(
    ("sample_fmt", "tag", "bits", "channels", "rate_hz", "mask", "demuxer"),
    _WAV_VARIANTS,
    ids=[v[0] for v in _WAV_VARIANTS],
)
def test_pcm_wav_variants_equal_ffmpegs_wav_demuxer(
    source_16k: Samples,
    sample_fmt: str,
    tag: int,
    bits: int,
    channels: int,
    rate_hz: int,
    mask: int | None,
    demuxer: str,
) -> None:
    """Plain PCM WAV goes through our header parser and a raw demuxer: same samples."""
    # The 16 kHz source is relabelled at rate_hz: the test is about bytes, not pitch.
    pcm = _pcm(source_16k[:40_000], sample_fmt, channels)
    wav = make_wav(pcm, tag=tag, channels=channels, rate_hz=rate_hz, bits=bits, mask=mask)
    fmt = detect_container(wav[:4096])
    assert fmt is not None and fmt.demuxer == demuxer
    outputs, tail = decode_in_chunks(chunks_of(wav, 1500))
    np.testing.assert_array_equal(joined(outputs, tail), one_shot(wav))


def test_wav_chunks_around_the_data_are_not_decoded_as_samples(source_16k: Samples) -> None:
    pcm = _pcm(source_16k, "s16", 1)
    junk = b"LIST" + struct.pack("<I", 2000) + b"\x7f" * 2000
    wav = make_wav(
        pcm, tag=1, channels=1, rate_hz=16_000, bits=16, before_data=junk, after_data=junk
    )
    outputs, tail = decode_in_chunks(chunks_of(wav, 4096))
    got = joined(outputs, tail)
    assert len(got) == len(source_16k)
    np.testing.assert_array_equal(got, one_shot(wav))


@pytest.mark.parametrize("data_size", [0, 0xFFFFFFFF])
def test_streaming_wav_header_without_a_length(source_16k: Samples, data_size: int) -> None:
    pcm = _pcm(source_16k, "s16", 1)
    wav = make_wav(pcm, tag=1, channels=1, rate_hz=16_000, bits=16, data_size=data_size)
    outputs, tail = decode_in_chunks(chunks_of(wav, 4096))
    assert len(joined(outputs, tail)) == len(source_16k)


def test_non_pcm_wav_is_left_to_ffmpeg(stereo: npt.NDArray[np.float32]) -> None:
    """MS ADPCM in WAV: our parser steps aside and FFmpeg's WAV demuxer decodes it."""
    data = _encode_with(stereo[:, :88_200], "wav", "adpcm_ms", 44_100)
    fmt = detect_container(data[:4096])
    assert fmt is not None and fmt.demuxer == "wav"
    outputs, tail = decode_in_chunks(chunks_of(data, 997))
    got = joined(outputs, tail)
    assert abs(len(got) - 32_000) < 0.05 * SAMPLE_RATE_HZ  # ADPCM pads its last block
    np.testing.assert_array_equal(got, one_shot(data))


def test_live_wav_stream_starts_within_a_tenth_of_a_second(audio_dir: Path) -> None:
    """A 16 kHz mono WAV streamed in 10 ms pieces: audio comes out after about 0.1 s."""
    data = (audio_dir / "jfk_inaugural.wav").read_bytes()
    decoder = ContainerDecoder()
    for fed in range(320, len(data), 320):
        if len(decoder.feed(data[fed - 320 : fed])):
            break
    assert fed / 32_000 < 0.15
    decoder.close()


# --------------------------------------------------------------------------- incremental output


@pytest.mark.parametrize("kind", ["webm", "ogg"])
def test_recorder_chunks_come_out_as_they_arrive(
    kind: str, encoded: dict[str, Encoded], references: dict[str, Samples]
) -> None:
    """Each ~250 ms recorder chunk yields its audio at once, not at finish()."""
    writes = encoded[kind].writes
    decoder = ContainerDecoder()
    fed = b""
    total = 0
    produced_before_finish = 0
    for index, write in enumerate(writes):
        fed += write
        total += len(decoder.feed(write))
        # Everything a one-shot decoder gets from the same prefix came out already, less the
        # resampler's few samples of delay that only finish() flushes.
        if len(fed) > 1000 and index < 16:  # the first 4 s; one_shot of every prefix is slow
            assert total >= len(one_shot(fed)) - 32, f"after {len(fed)} bytes"
        produced_before_finish = total
    tail = decoder.finish()
    assert len(tail) <= 32
    assert produced_before_finish == len(references[kind]) - len(tail)
    assert decoder.format_name == kind


def _vint(data: bytes, pos: int) -> tuple[int, int]:
    """An EBML variable-length integer at pos: (its length in bytes, its value without marker)."""
    length = 9 - data[pos].bit_length()
    value = int.from_bytes(data[pos : pos + length], "big") & ((1 << (7 * length)) - 1)
    return length, value


_CLUSTER_ID = bytes.fromhex("1f43b675")
_SEGMENT_ID = bytes.fromhex("18538067")
_UNKNOWN_SIZE = bytes.fromhex("01ffffffffffffff")


def live_webm(data: bytes) -> list[bytes]:
    """Rewrite a WebM as Chrome's MediaRecorder writes it: Segment and Clusters of unknown
    size. Returns the header, then one piece per cluster."""
    id_len, _ = _vint(data, 0)
    size_len, size = _vint(data, id_len)
    pos = id_len + size_len + size  # past the EBML header
    assert data[pos : pos + 4] == _SEGMENT_ID
    size_len, _ = _vint(data, pos + 4)
    pieces = [data[:pos] + _SEGMENT_ID + _UNKNOWN_SIZE]
    pos += 4 + size_len
    while pos < len(data):
        id_len, _ = _vint(data, pos)
        size_len, size = _vint(data, pos + id_len)
        element_id = data[pos : pos + id_len]
        body = data[pos + id_len + size_len : pos + id_len + size_len + size]
        if element_id == _CLUSTER_ID:
            pieces.append(_CLUSTER_ID + _UNKNOWN_SIZE + body)
        else:
            pieces[-1] += data[pos : pos + id_len + size_len + size]
        pos += id_len + size_len + size
    return pieces


def test_live_webm_with_unknown_sizes_comes_out_cluster_by_cluster(
    stereo: npt.NDArray[np.float32],
) -> None:
    """Each unknown-size cluster's audio comes out when the cluster arrives, not when the
    next cluster's ID shows where it ended."""
    pieces = live_webm(_encode(stereo[:, : 44_100 * 4], "webm").data)
    assert len(pieces) > 10
    decoder = ContainerDecoder()
    fed = b""
    total = 0
    for piece in pieces:
        fed += piece
        total += len(decoder.feed(piece))
        if len(fed) > 1000:
            assert total >= len(one_shot(fed)) - 32
    got = total + len(decoder.finish())
    assert got == len(one_shot(fed))
    assert abs(got - 4 * SAMPLE_RATE_HZ) < 0.01 * SAMPLE_RATE_HZ


@pytest.mark.parametrize("kind", ["webm", "ogg", "mp3", "wav", "mp4"])
def test_latency_is_bounded(kind: str, encoded: dict[str, Encoded]) -> None:
    """Fed at a steady byte rate, the output trails the input by well under a second."""
    data = encoded[kind].data
    seconds_per_byte = 11.0 / len(data)
    decoder = ContainerDecoder()
    produced = 0
    lags_s = []
    for offset in range(0, len(data), 1000):
        produced += len(decoder.feed(data[offset : offset + 1000]))
        if offset > len(data) // 10:
            lags_s.append((offset + 1000) * seconds_per_byte - produced / SAMPLE_RATE_HZ)
    decoder.finish()
    # Container overhead makes bytes and seconds not quite proportional: allow 0.4 s.
    assert max(lags_s) < 0.4


def test_format_names(encoded: dict[str, Encoded]) -> None:
    for kind, enc in encoded.items():
        decoder = ContainerDecoder()
        assert decoder.format_name is None
        decoder.feed(enc.data[:4096])
        assert decoder.format_name == kind
        decoder.close()


# --------------------------------------------------------------------------- bad input


def test_random_bytes_are_refused_at_once() -> None:
    garbage = np.random.default_rng(7).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    decoder = ContainerDecoder()
    with pytest.raises(ContainerDecodeError, match=r"encoding=linear16"):
        decoder.feed(garbage[:65536])
    # The error is sticky; nothing more is accepted.
    with pytest.raises(ContainerDecodeError):
        decoder.feed(b"more")


def test_random_bytes_byte_by_byte_are_refused_within_a_few_bytes() -> None:
    garbage = np.random.default_rng(8).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    decoder = ContainerDecoder()
    with pytest.raises(ContainerDecodeError):
        for n, byte in enumerate(chunks_of(garbage, 1)):
            decoder.feed(byte)
            assert n < 64, "garbage was not refused within 64 bytes"


def test_raw_pcm_without_encoding_is_refused_with_advice(audio_dir: Path) -> None:
    pcm = (audio_dir / "jfk_inaugural.wav").read_bytes()[44:]
    with pytest.raises(ContainerDecodeError, match=r"encoding=linear16&sample_rate"):
        ContainerDecoder().feed(pcm[:32000])


_HEADER_WRITES = {"webm": 1, "ogg": 2, "mp3": 3}


@pytest.mark.parametrize("kind", ["webm", "ogg", "mp3"])
def test_garbage_after_a_valid_header_is_refused_within_the_byte_bound(
    kind: str, encoded: dict[str, Encoded]
) -> None:
    header = b"".join(encoded[kind].writes[: _HEADER_WRITES[kind]])
    garbage = np.random.default_rng(9).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes()
    bound = 256 * 1024
    decoder = ContainerDecoder(max_buffered_bytes=bound)
    fed = 0
    with pytest.raises(ContainerDecodeError):
        decoder.feed(header)
        for chunk in chunks_of(garbage, 16384):
            decoder.feed(chunk)
            fed += len(chunk)
    assert fed <= bound + 2 * 16384


def test_audio_decoded_before_an_error_comes_with_the_error(
    encoded: dict[str, Encoded], references: dict[str, Samples]
) -> None:
    garbage = np.random.default_rng(10).integers(0, 256, 400_000, dtype=np.uint8).tobytes()
    decoder = ContainerDecoder(max_buffered_bytes=256 * 1024)
    with pytest.raises(ContainerDecodeError) as caught:
        decoder.feed(encoded["webm"].data + garbage)
    np.testing.assert_array_equal(caught.value.samples, references["webm"])


def id3_tag(padding_bytes: int) -> bytes:
    """An ID3v2.4 tag of one text frame and padding (as cover art would take room)."""
    text = b"\x03Ask not"
    frame = b"TIT2" + len(text).to_bytes(4, "big") + b"\x00\x00" + text
    size = len(frame) + padding_bytes
    syncsafe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
    return b"ID3\x04\x00\x00" + syncsafe + frame + bytes(padding_bytes)


def test_mp3_behind_a_large_id3_tag_fed_in_small_pieces(
    encoded: dict[str, Encoded], references: dict[str, Samples]
) -> None:
    data = id3_tag(300_000) + encoded["mp3"].data
    decoder = ContainerDecoder()
    outputs = [decoder.feed(piece) for piece in chunks_of(data[:310_000], 50)]
    outputs += [decoder.feed(piece) for piece in chunks_of(data[310_000:], 4096)]
    assert decoder.format_name == "mp3"
    np.testing.assert_array_equal(joined(outputs, decoder.finish()), references["mp3"])


def test_an_endless_id3_tag_is_refused_at_the_byte_bound() -> None:
    # An ID3v2 header announcing a 200 MB tag: the sniffer would wait for its end.
    header = b"ID3\x04\x00\x00" + bytes([0x60, 0x00, 0x00, 0x00])
    decoder = ContainerDecoder(max_buffered_bytes=100_000)
    fed = 0
    with pytest.raises(ContainerDecodeError, match="recognisable"):
        decoder.feed(header)
        for _ in range(100):
            decoder.feed(bytes(10_000))
            fed += 10_000
    assert fed <= 110_000


def test_truncated_file_yields_what_was_decodable(
    encoded: dict[str, Encoded], references: dict[str, Samples]
) -> None:
    data = encoded["webm"].data
    cut = data[: int(len(data) * 0.6) + 123]  # somewhere inside a cluster
    outputs, tail = decode_in_chunks(chunks_of(cut, 4096))
    got = joined(outputs, tail)
    ref = references["webm"]
    assert 0.55 * len(ref) < len(got) < 0.65 * len(ref)
    # The same samples as the whole file's decode, up to the resampler's flushed tail.
    np.testing.assert_array_equal(got[: len(got) - 32], ref[: len(got) - 32])


@pytest.mark.parametrize("kind", ["ogg", "mp3", "flac", "wav", "mp4"])
def test_truncated_files_of_every_kind_end_cleanly(
    kind: str, encoded: dict[str, Encoded], references: dict[str, Samples]
) -> None:
    data = encoded[kind].data
    outputs, tail = decode_in_chunks(chunks_of(data[: len(data) // 2 + 7], 4096))
    got = joined(outputs, tail)
    ref = references[kind]
    assert 0.3 * len(ref) < len(got) <= 0.6 * len(ref)
    assert best_correlation(got[:16000], ref[:16000], max_lag=0) > 0.999


def test_mp4_with_its_index_at_the_end_is_refused_with_advice(
    stereo: npt.NDArray[np.float32],
) -> None:
    """A plain (not fragmented) MP4 written to a seekable file puts moov after the audio."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=SOURCE_RATE_HZ, layout="stereo")
        assert isinstance(stream, av.AudioStream)
        for start in range(0, 132_300, 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(stereo[:, start : start + 1024]),
                format="fltp",
                layout="stereo",
            )
            frame.sample_rate = SOURCE_RATE_HZ
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    data = buffer.getvalue()
    assert data.find(b"moov") > data.find(b"mdat")
    decoder = ContainerDecoder()
    with pytest.raises(ContainerDecodeError, match=r"faststart"):
        for chunk in chunks_of(data, 4096):
            decoder.feed(chunk)
        decoder.finish()


def test_header_only_stream_yields_nothing(encoded: dict[str, Encoded]) -> None:
    header = encoded["webm"].writes[0]
    outputs, tail = decode_in_chunks([header])
    assert len(joined(outputs, tail)) == 0


def test_empty_stream_yields_nothing() -> None:
    decoder = ContainerDecoder()
    assert len(decoder.feed(b"")) == 0
    assert len(decoder.finish()) == 0
    assert decoder.format_name is None


def test_stream_too_short_to_recognise_is_refused_at_finish() -> None:
    decoder = ContainerDecoder()
    assert len(decoder.feed(b"RIF")) == 0
    with pytest.raises(ContainerDecodeError, match="ended before its format"):
        decoder.finish()


def test_file_cut_inside_its_header_yields_nothing(encoded: dict[str, Encoded]) -> None:
    decoder = ContainerDecoder()
    decoder.feed(encoded["wav"].data[:30])
    assert len(decoder.finish()) == 0
    assert decoder.format_name == "wav"


def test_a_broken_header_is_refused() -> None:
    fmt_chunk = struct.pack("<HHIIHH", 0x1234, 0, 16000, 32000, 2, 16)  # no channels
    wav = b"RIFF" + struct.pack("<I", 36) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt_chunk
    decoder = ContainerDecoder()
    with pytest.raises(ContainerDecodeError, match="not supported"):
        decoder.feed(wav + b"data" + struct.pack("<I", 3200) + bytes(3200))
        decoder.finish()


def test_feed_after_finish_is_a_programming_error(short_webm: Encoded) -> None:
    decoder = ContainerDecoder()
    decoder.feed(short_webm.data)
    decoder.finish()
    with pytest.raises(RuntimeError):
        decoder.feed(b"x")


# --------------------------------------------------------------------------- detection


def test_detect_container_needs_only_a_few_bytes(encoded: dict[str, Encoded]) -> None:
    assert detect_container(encoded["ogg"].data[:11]) is None
    ogg = detect_container(encoded["ogg"].data[:12])
    assert ogg is not None and ogg.name == "ogg"
    webm = detect_container(encoded["webm"].data[:64])
    assert webm is not None and (webm.demuxer, webm.name) == ("matroska", "webm")
    mp3 = detect_container(encoded["mp3"].data[:4096])
    assert mp3 is not None and mp3.name == "mp3"
    # A WAV is read up to its data chunk: 44 bytes for a plain one.
    wav = make_wav(bytes(320), tag=1, channels=1, rate_hz=16_000, bits=16)
    assert detect_container(wav[:43]) is None
    fmt = detect_container(wav[:44])
    assert fmt is not None and (fmt.demuxer, fmt.skip_bytes, fmt.data_bytes) == ("s16le", 44, 320)


def test_detect_container_refuses_almost_mp3() -> None:
    # A valid MPEG frame header not followed by a second frame is not MP3.
    header = bytes([0xFF, 0xFB, 0x90, 0x64]) + bytes(2000)
    with pytest.raises(ContainerDecodeError):
        detect_container(header)


# --------------------------------------------------------------------------- threads


def test_worker_threads_end(short_webm: Encoded) -> None:
    before = set(container_threads())
    finished = ContainerDecoder()
    finished.feed(short_webm.data)
    finished.finish()
    closed = ContainerDecoder()
    closed.feed(short_webm.data[:3000])
    closed.close()
    dropped = ContainerDecoder()
    dropped.feed(short_webm.data[:3000])
    del dropped
    gc.collect()
    for thread in set(container_threads()) - before:
        thread.join(timeout=10)
        assert not thread.is_alive()


def test_many_decoders_interleaved_stay_independent(
    encoded: dict[str, Encoded], references: dict[str, Samples]
) -> None:
    kinds = ["webm", "ogg", "mp3", "flac"]
    decoders = {kind: ContainerDecoder() for kind in kinds}
    outputs: dict[str, list[Samples]] = {kind: [] for kind in kinds}
    streams = {kind: list(chunks_of(encoded[kind].data, 5000)) for kind in kinds}
    for index in range(max(len(s) for s in streams.values())):
        for kind in kinds:
            if index < len(streams[kind]):
                outputs[kind].append(decoders[kind].feed(streams[kind][index]))
    for kind in kinds:
        np.testing.assert_array_equal(
            joined(outputs[kind], decoders[kind].finish()), references[kind]
        )


# --------------------------------------------------------------------------- property


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(cuts=st.lists(st.integers(min_value=0, max_value=1 << 30), max_size=40))
def test_any_chunk_boundaries_give_the_same_samples(short_webm: Encoded, cuts: list[int]) -> None:
    data = short_webm.data
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    outputs, tail = decode_in_chunks(chunks)
    np.testing.assert_array_equal(joined(outputs, tail), _short_reference(data))


_REFERENCE_CACHE: dict[bytes, Samples] = {}


def _short_reference(data: bytes) -> Samples:
    if data not in _REFERENCE_CACHE:
        _REFERENCE_CACHE[data] = one_shot(data)
    return _REFERENCE_CACHE[data]


# --------------------------------------------------------------------------- a real browser

_RECORDER_PAGE = b"""<!doctype html><html><body><script>
window.record = async (mime, ms) => {
  const stream = await navigator.mediaDevices.getUserMedia({audio: true});
  const recorder = new MediaRecorder(stream, {mimeType: mime});
  const blobs = [];
  recorder.ondataavailable = (event) => blobs.push(event.data);
  const stopped = new Promise((resolve) => { recorder.onstop = resolve; });
  recorder.start(250);
  await new Promise((resolve) => setTimeout(resolve, ms));
  recorder.stop();
  await stopped;
  const out = [];
  for (const blob of blobs) {
    const bytes = new Uint8Array(await blob.arrayBuffer());
    let text = "";
    for (const b of bytes) text += String.fromCharCode(b);
    out.push(btoa(text));
  }
  return out;
};
</script></body></html>"""

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def recorder_chunks(
    audio_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[bytes]]:
    """What Chromium's MediaRecorder hands a page: 250 ms chunks of WebM/Opus and MP4."""
    if not CHROMIUM.exists():
        pytest.skip("needs Debian chromium at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(_RECORDER_PAGE)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    wav = audio_dir / "jfk_inaugural.wav"
    chunks: dict[str, list[bytes]] = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM),
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--use-fake-ui-for-media-stream",
                    "--use-fake-device-for-media-stream",
                    f"--use-file-for-fake-audio-capture={wav}",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                ],
            )
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            for kind, mime in (("webm", "audio/webm;codecs=opus"), ("mp4", "audio/mp4")):
                if page.evaluate("m => MediaRecorder.isTypeSupported(m)", mime):
                    encoded = page.evaluate("([m, ms]) => record(m, ms)", [mime, 3000])
                    chunks[kind] = [base64.b64decode(c) for c in encoded]
            browser.close()
    finally:
        server.shutdown()
    return chunks


@pytest.mark.browser
@pytest.mark.parametrize("kind", ["webm", "mp4"])
def test_chromium_media_recorder_stream(recorder_chunks: dict[str, list[bytes]], kind: str) -> None:
    if kind not in recorder_chunks:
        pytest.skip(f"this Chromium cannot record {kind}")
    chunks = recorder_chunks[kind]
    decoder = ContainerDecoder()
    outputs = [decoder.feed(chunk) for chunk in chunks]
    got = joined(outputs, decoder.finish())
    assert decoder.format_name == kind
    # Audio comes out chunk by chunk: after the first two, every chunk of some size yields
    # audio (Chromium may end with an empty or tiny chunk).
    sizable = [out for chunk, out in zip(chunks, outputs, strict=True) if len(chunk) > 1000]
    assert all(len(out) for out in sizable[2:])
    assert 1.5 < len(got) / SAMPLE_RATE_HZ < 3.5  # 3 s asked; a loaded machine records less
    assert float(np.sqrt(np.mean(got**2))) > 0.01  # the recorded speech, not silence
    np.testing.assert_array_equal(got, one_shot(b"".join(chunks)))
