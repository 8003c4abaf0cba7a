"""Run by tests/test_floors.py inside a venv holding streamscribe at its dependency floors.

`python floor_probe.py SPEECH_WAV MODEL_DIR` imports every module of the package, streams
WAV containers through the PyAV path, resamples linear16 through soxr, runs both VADs,
transcribes the speech with the engine and through a live server session, renders /metrics,
and prints what it measured as one
JSON object for the test to check.
Only the package and its runtime dependencies may be imported here: nothing from tests/.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import pkgutil
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

PACKAGES = ("server", "vad", "cache", "clients")
SOURCE_RATE_HZ = 44_100
TONE_HZ = 440.0
TONE_S = 1.5
LEFT_PEAK = 0.5
RIGHT_PEAK = 0.3  # the mono mix is their average: 0.4
CHUNK_BYTES = 1_000

Samples = npt.NDArray[np.float32]


def import_all() -> list[str]:
    """Import every module of the runtime packages; returns their names."""
    names: list[str] = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        names.append(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            importlib.import_module(info.name)
            names.append(info.name)
    return names


def stereo_tone_pcm() -> bytes:
    """TONE_S of a TONE_HZ sine at SOURCE_RATE_HZ, 16-bit stereo, the right channel quieter."""
    t = np.arange(int(SOURCE_RATE_HZ * TONE_S)) / SOURCE_RATE_HZ
    tone = np.sin(2 * math.pi * TONE_HZ * t)
    stereo = np.stack([tone * LEFT_PEAK, tone * RIGHT_PEAK], axis=1)
    return (stereo * 32767).astype("<i2").tobytes()


def wav_bytes(pcm: bytes, rate_hz: int, channels: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(rate_hz)
        writer.writeframes(pcm)
    return out.getvalue()


def stream_container(data: bytes) -> tuple[str | None, Samples]:
    """Feed `data` to a ContainerDecoder in CHUNK_BYTES pieces, as a client would send it."""
    from server.container import ContainerDecoder

    parts: list[Samples] = []
    with ContainerDecoder() as decoder:
        for start in range(0, len(data), CHUNK_BYTES):
            parts.append(decoder.feed(data[start : start + CHUNK_BYTES]))
        parts.append(decoder.finish())
        return decoder.format_name, np.concatenate(parts)


def stream_linear16(pcm: bytes) -> Samples:
    from server.audio import PcmDecoder

    decoder = PcmDecoder("linear16", sample_rate_hz=SOURCE_RATE_HZ, channels=2)
    parts = [decoder.decode(pcm[i : i + CHUNK_BYTES]) for i in range(0, len(pcm), CHUNK_BYTES)]
    parts.append(decoder.end().samples)
    return np.concatenate(parts)


def describe_tone(samples: Samples) -> dict[str, float]:
    """Length, steady-state peak and dominant frequency of a decoded tone."""
    steady = samples[len(samples) // 4 : 3 * len(samples) // 4]
    spectrum = np.abs(np.fft.rfft(steady))
    frequencies_hz = np.fft.rfftfreq(len(steady), d=1 / 16_000)
    return {
        "samples": float(len(samples)),
        "peak": float(np.max(np.abs(steady))),
        "frequency_hz": float(frequencies_hz[int(np.argmax(spectrum))]),
    }


def speech_fraction(samples: Samples, classifier: Any) -> float:
    """Share of the classifier's frames it calls speech."""
    frame = classifier.frame_ms * 16
    frames = [samples[i : i + frame] for i in range(0, len(samples) - frame + 1, frame)]
    return sum(bool(classifier.is_speech(f)) for f in frames) / max(1, len(frames))


def vad_fractions(speech: Samples) -> dict[str, float]:
    from vad.silero import SileroClassifier
    from vad.webrtc import WebRtcClassifier

    silence = np.zeros(16_000, dtype=np.float32)
    return {
        "silero_speech": speech_fraction(speech, SileroClassifier()),
        "silero_silence": speech_fraction(silence, SileroClassifier()),
        "webrtc_speech": speech_fraction(speech, WebRtcClassifier()),
        "webrtc_silence": speech_fraction(silence, WebRtcClassifier()),
    }


def transcribe(speech: Samples, model_dir: Path) -> str:
    """The engine (faster-whisper on CTranslate2) on one utterance, on the CPU."""
    from server.asr import WhisperEngine
    from server.transcription import AsrRequest

    engine = WhisperEngine(model_dir, name=model_dir.name, device="cpu", workers=1)
    (result,) = engine.transcribe_batch([AsrRequest(audio=speech)])
    return result.text


def live_session(speech: Samples, model_dir: Path) -> str:
    """A real server (uvicorn, h11, websockets at their floors) and one client session:
    the transcript of `speech` streamed as linear16, then CloseStream."""
    import asyncio
    import signal
    import subprocess

    from websockets.asyncio.client import connect

    from server.app import LISTENING_PREFIX, READY_LINE
    from server.protocol import Results, from_json

    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0",
         "--model", str(model_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = ""
        for line in proc.stdout:
            if line.startswith(LISTENING_PREFIX):
                url = line.strip().rsplit(" ", 1)[1].replace("http", "ws", 1)
            if line.strip() == READY_LINE:
                break
        pcm = (np.clip(speech, -1, 1) * 32767).astype("<i2").tobytes()

        async def session() -> str:
            texts: list[str] = []
            query = "/v1/listen?encoding=linear16&sample_rate=16000"
            async with connect(url + query) as ws:
                for start in range(0, len(pcm), 6400):
                    await ws.send(pcm[start : start + 6400])
                await ws.send(json.dumps({"type": "CloseStream"}))
                async for raw in ws:
                    message = from_json(str(raw))
                    if isinstance(message, Results) and message.is_final:
                        texts.append(message.transcript)
            return " ".join(texts)

        return asyncio.run(session())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def metrics_text() -> str:
    from server.metrics import Metrics

    return Metrics().render().decode()


def main(speech_wav: Path, model_dir: Path) -> dict[str, Any]:
    pcm = stereo_tone_pcm()
    container_format, tone = stream_container(wav_bytes(pcm, SOURCE_RATE_HZ, channels=2))
    speech_format, speech = stream_container(speech_wav.read_bytes())
    return {
        "modules": import_all(),
        "container_format": container_format,
        "container_tone": describe_tone(tone),
        "linear16_tone": describe_tone(stream_linear16(pcm)),
        "speech_format": speech_format,
        "speech_s": len(speech) / 16_000,
        "vad": vad_fractions(speech),
        "transcript": transcribe(speech, model_dir),
        "live_transcript": live_session(speech, model_dir),
        "metrics": metrics_text(),
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))))
