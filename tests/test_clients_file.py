"""`python -m clients.file` against a real server: mp3/flac/m4a/webm-video in, SRT/VTT/JSON out."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import wave
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from clients.audio_file import pcm16_chunks
from clients.cli import Interrupts
from clients.file import paced
from tests.support.paths import REPO_ROOT
from tests.support.process import free_port
from tests.support.server import ServerProcess
from tests.test_diarize import conversation

JFK_PHRASE = "what your country can do for you"
JFK_DURATION_S = 11.0


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]+", " ", text.lower()).split())


def run_client(*args: str, timeout_s: float = 240.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clients.file", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def read_pcm(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as source:
        samples = np.frombuffer(source.readframes(source.getnframes()), dtype=np.int16)
        return samples, source.getframerate()


def encode(
    wav: Path,
    out: Path,
    codec: str,
    rate_hz: int,
    layout: str,
    with_video: bool = False,
) -> Path:
    """Re-encode a mono 16-bit WAV with PyAV (optionally muxed with a small video track)."""
    samples, source_rate = read_pcm(wav)
    with av.open(str(out), "w") as container:
        audio = container.add_stream(codec, rate=rate_hz, layout=layout)
        assert isinstance(audio, av.AudioStream)
        video = None
        if with_video:
            video = container.add_stream("libvpx", rate=10)
            assert isinstance(video, av.VideoStream)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        resampler = av.AudioResampler(format=audio.format, layout=layout, rate=rate_hz)
        step = source_rate // 10
        for index, start in enumerate(range(0, len(samples), step)):
            block = samples[start : start + step].reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(block, format="s16", layout="mono")
            frame.sample_rate = source_rate
            frame.pts = start
            frame.time_base = Fraction(1, source_rate)
            for converted in resampler.resample(frame):
                container.mux(audio.encode(converted))
            if video is not None:
                picture = np.full((48, 64, 3), (index * 7) % 255, dtype=np.uint8)
                vframe = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(
                    format="yuv420p"
                )
                vframe.pts = index
                container.mux(video.encode(vframe))
        for converted in resampler.resample(None):
            container.mux(audio.encode(converted))
        container.mux(audio.encode(None))
        if video is not None:
            container.mux(video.encode(None))
    return out


@dataclass(frozen=True)
class ParsedCue:
    start_s: float
    end_s: float
    text: str


CUE_RE = re.compile(
    r"(\d\d):(\d\d):(\d\d)[,.](\d{3}) --> (\d\d):(\d\d):(\d\d)[,.](\d{3})\n((?:.+\n)+)"
)


def parse_cues(document: str) -> list[ParsedCue]:
    cues = []
    for match in CUE_RE.finditer(document):
        g = [int(x) for x in match.groups()[:8]]
        start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
        end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
        cues.append(ParsedCue(start, end, " ".join(match.group(9).split())))
    return cues


def check_jfk_cues(cues: list[ParsedCue], audio_s: float = JFK_DURATION_S) -> None:
    """Cue timings follow the speech: ordered, non-overlapping, at the right places."""
    assert cues, "no cues"
    for cue in cues:
        assert 0.0 <= cue.start_s < cue.end_s <= audio_s + 0.5, cue
    for before, after in itertools.pairwise(cues):
        assert before.end_s <= after.start_s + 0.001, (before, after)
    text = normalise(" ".join(cue.text for cue in cues))
    assert JFK_PHRASE in text
    # JFK says "And so my fellow Americans" in the first 3 s and ends "...for your country"
    # after 9.5 s.
    first = next(c for c in cues if "fellow" in c.text.lower())
    assert first.start_s < 2.0, first
    last = next(c for c in reversed(cues) if "your country" in c.text.lower())
    assert last.end_s > 9.0, last


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost and its key (PEM), for wss:// tests."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.mark.integration
def test_mp3_stereo_44k_to_srt(server: ServerProcess, audio_dir: Path, media_dir: Path) -> None:
    mp3 = encode(audio_dir / "jfk_inaugural.wav", media_dir / "jfk.mp3", "mp3", 44100, "stereo")
    out = media_dir / "jfk.srt"
    done = run_client(str(mp3), "--url", server.ws_url, "--speed", "0", "--format", "srt",
                      "--output", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    srt = out.read_text(encoding="utf-8")
    assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> ", srt)
    numbers = [int(n) for n in re.findall(r"^(\d+)\n\d\d:", srt, flags=re.MULTILINE)]
    assert numbers == list(range(1, len(numbers) + 1))
    check_jfk_cues(parse_cues(srt))
    assert JFK_PHRASE in normalise(done.stdout), "live captions also go to the terminal"


@pytest.mark.integration
def test_flac_48k_to_vtt_on_stdout(server: ServerProcess, audio_dir: Path, media_dir: Path) -> None:
    flac = encode(audio_dir / "jfk_inaugural.wav", media_dir / "jfk.flac", "flac", 48000, "mono")
    done = run_client(str(flac), "--url", server.ws_url, "--speed", "0", "--format", "vtt")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("WEBVTT\n\n")
    check_jfk_cues(parse_cues(done.stdout))


@pytest.mark.integration
def test_webm_video_to_text(server: ServerProcess, audio_dir: Path, media_dir: Path) -> None:
    webm = encode(
        audio_dir / "jfk_inaugural.wav",
        media_dir / "jfk.webm",
        "libopus",
        48000,
        "stereo",
        with_video=True,
    )
    with av.open(str(webm)) as probe:
        assert probe.streams.video and probe.streams.audio
    done = run_client(str(webm), "--url", server.ws_url, "--speed", "0")
    assert done.returncode == 0, done.stderr
    assert JFK_PHRASE in normalise(done.stdout)
    assert "done: sent 11." in done.stderr


@pytest.mark.integration
def test_m4a_to_json_lines(server: ServerProcess, audio_dir: Path, media_dir: Path) -> None:
    m4a = encode(audio_dir / "jfk_inaugural.wav", media_dir / "jfk.m4a", "aac", 22050, "mono")
    done = run_client(
        str(m4a), "--url", server.ws_url, "--speed", "0", "--format", "json", "--interim"
    )
    assert done.returncode == 0, done.stderr
    messages = [json.loads(line) for line in done.stdout.splitlines()]
    assert messages[-1]["type"] == "Metadata"
    assert abs(messages[-1]["duration"] - JFK_DURATION_S) < 0.3
    finals = [m for m in messages if m["type"] == "Results" and m["is_final"]]
    text = " ".join(f["channel"]["alternatives"][0]["transcript"] for f in finals)
    assert JFK_PHRASE in normalise(text)
    assert all(f["channel"]["alternatives"][0]["words"] for f in finals)


@pytest.mark.integration
def test_ctrl_c_finishes_the_stream_cleanly(server: ServerProcess, audio_dir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "clients.file", str(audio_dir / "librivox_sonnet001.wav"),
         "--url", server.ws_url, "--speed", "1"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    first_caption = proc.stdout.readline()
    assert first_caption.strip(), "the client printed a caption line before Ctrl-C"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "finishing the stream" in stderr
    sent_s = float(re.search(r"done: sent ([\d.]+) s", stderr).group(1))  # type: ignore[union-attr]
    assert sent_s < 45.0, "audio stopped at Ctrl-C, long before the end of the 51 s file"
    assert "Traceback" not in stderr


@pytest.mark.integration
def test_refusals_are_explained(
    server: ServerProcess, server_factory: Callable[..., ServerProcess], audio_dir: Path
) -> None:
    wav = str(audio_dir / "timit_LDC93S1.wav")
    bad_language = run_client(wav, "--url", server.ws_url, "--language", "xx")
    assert bad_language.returncode == 1
    assert "HTTP 400: language:" in bad_language.stderr

    keyed = server_factory("--api-key", "file-client-key")
    no_key = run_client(wav, "--url", keyed.ws_url, "--speed", "0")
    assert no_key.returncode == 1
    assert "HTTP 401" in no_key.stderr and "--token" in no_key.stderr
    with_key = run_client(wav, "--url", keyed.ws_url, "--speed", "0", "--token", "file-client-key")
    assert with_key.returncode == 0, with_key.stderr
    assert "greasy wash water" in normalise(with_key.stdout)
    for done in (bad_language, no_key, with_key):
        assert "Traceback" not in done.stderr


@pytest.mark.integration
def test_full_server_error_message_is_shown(
    server_factory: Callable[..., ServerProcess], audio_dir: Path
) -> None:
    full = server_factory("--max-sessions", "1")
    first = subprocess.Popen(
        [sys.executable, "-m", "clients.file", str(audio_dir / "librivox_sonnet001.wav"),
         "--url", full.ws_url, "--speed", "1"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert first.stdout is not None
    try:
        assert first.stdout.readline().strip(), "the first session is streaming"
        refused = run_client(
            str(audio_dir / "timit_LDC93S1.wav"), "--url", full.ws_url, "--speed", "0"
        )
        assert refused.returncode == 1
        assert "code 1013" in refused.stderr and "SESSION_LIMIT" in refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    assert first.returncode == 0


@pytest.mark.integration
def test_wss_with_the_servers_certificate(
    server_factory: Callable[..., ServerProcess], audio_dir: Path, tmp_path: Path
) -> None:
    cert, key = self_signed_cert(tmp_path)
    tls = server_factory("--tls-cert", str(cert), "--tls-key", str(key))
    wav = str(audio_dir / "timit_LDC93S1.wav")
    url = f"wss://127.0.0.1:{tls.port}"
    untrusted = run_client(wav, "--url", url, "--speed", "0")
    assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    trusted = subprocess.run(
        [sys.executable, "-m", "clients.file", wav, "--url", url, "--speed", "0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=240, check=False,
        env={**os.environ, "SSL_CERT_FILE": str(cert)},
    )  # fmt: skip
    assert trusted.returncode == 0, trusted.stderr
    assert "greasy wash water" in normalise(trusted.stdout)


def write_wav(path: Path, pcm: bytes) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(pcm)
    return path


@pytest.mark.integration
def test_diarize_labels_two_speakers_in_srt(
    server_factory: Callable[..., ServerProcess], speaker_weights: Path, tmp_path: Path
) -> None:
    """LJ Speech's reader, Kennedy, the reader again: every cue names its speaker, Kennedy's
    cues one speaker and the reader's cues another."""
    server = server_factory("--speaker-model", str(speaker_weights))
    pcm, turns = conversation()
    wav = write_wav(tmp_path / "conversation.wav", pcm)
    out = tmp_path / "conversation.srt"
    done = run_client(str(wav), "--url", server.ws_url, "--speed", "0", "--diarize",
                      "--format", "srt", "--output", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    srt = out.read_text(encoding="utf-8")
    cues = parse_cues(srt)
    assert cues and all(re.match(r"\[Speaker \d+\] \S", cue.text) for cue in cues), srt
    heard: dict[str, list[str]] = {"lj": [], "jfk": []}
    for cue in cues:
        middle_s = (cue.start_s + cue.end_s) / 2
        nearest = min(turns, key=lambda turn: max(turn[0] - middle_s, middle_s - turn[1], 0))
        heard[nearest[2]].append(cue.text.split("]")[0] + "]")
    (reader,) = set(heard["lj"])
    (kennedy,) = set(heard["jfk"])
    assert reader != kennedy, srt
    said = normalise(" ".join(c.text.split("] ", 1)[1] for c in cues))
    assert said.count(JFK_PHRASE) == 1, "each turn written once (no final repeats the last)"
    captions = [line for line in done.stdout.splitlines() if line.strip()]
    assert captions and all(line.startswith(("[Speaker 0] ", "[Speaker 1] ")) for line in captions)


def test_unreadable_input_and_unreachable_server(tmp_path: Path, audio_dir: Path) -> None:
    not_media = tmp_path / "notes.mp3"
    not_media.write_text("this is not audio\n", encoding="utf-8")
    done = run_client(str(not_media))
    assert done.returncode == 1 and "not a media file" in done.stderr
    missing = run_client(str(tmp_path / "missing.wav"))
    assert missing.returncode == 1 and "no such file" in missing.stderr

    unreachable = run_client(
        str(audio_dir / "timit_LDC93S1.wav"), "--url", f"ws://127.0.0.1:{free_port()}"
    )
    assert unreachable.returncode == 1 and "cannot reach the server" in unreachable.stderr
    for result in (done, missing, unreachable):
        assert "Traceback" not in result.stderr


def test_decoding_matches_the_wav_and_resamples(audio_dir: Path, media_dir: Path) -> None:
    wav = audio_dir / "jfk_inaugural.wav"
    samples, _ = read_pcm(wav)
    chunks = list(pcm16_chunks(wav, chunk_ms=100))
    assert all(len(c) == 3200 for c in chunks[:-1])
    assert b"".join(chunks) == samples.tobytes()

    flac = encode(wav, media_dir / "jfk-48k.flac", "flac", 48000, "mono")
    decoded = np.frombuffer(b"".join(pcm16_chunks(flac)), dtype=np.int16)
    assert abs(len(decoded) - len(samples)) < 160
    n = min(len(decoded), len(samples))
    correlation = np.corrcoef(decoded[:n].astype(float), samples[:n].astype(float))[0, 1]
    assert correlation > 0.99


async def test_paced_sends_at_real_time_multiples() -> None:
    chunk = b"\x00" * 3200  # 100 ms at 16 kHz
    loop = asyncio.get_running_loop()

    async def times(speed: float) -> list[float]:
        started = loop.time()
        stamps = []
        async for _ in paced(iter([chunk] * 6), speed, 32_000, Interrupts()):
            stamps.append(loop.time() - started)
        return stamps

    at_4x = await times(4.0)
    for index, stamp in enumerate(at_4x):
        assert stamp >= (index + 1) * 0.1 / 4 - 0.002
    as_fast = await times(0.0)
    assert len(as_fast) == 6 and as_fast[-1] < at_4x[-1]

    stop_early = Interrupts()
    stop_early.stop.set()
    assert [c async for c in paced(iter([chunk] * 6), 1.0, 32_000, stop_early)] == []
