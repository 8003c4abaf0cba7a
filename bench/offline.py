"""The offline ceiling: faster-whisper's own transcription of each whole file, same model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.workload import AudioFile

logger = logging.getLogger(__name__)


def offline_transcripts(
    files: Sequence[AudioFile], model_dir: Path, cpu_threads: int = 2
) -> dict[str, str]:
    """File name -> text of `WhisperModel.transcribe` (default options, beam_size=5)."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=cpu_threads)
    texts: dict[str, str] = {}
    for f in files:
        audio = f.samples.astype(np.float32) / 32768.0
        segments, _info = model.transcribe(audio, beam_size=5)
        texts[f.name] = " ".join(s.text.strip() for s in segments)
        logger.debug("offline %s: %s", f.name, texts[f.name])
    return texts
