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
    """File name -> text of `WhisperModel.transcribe` (default options, beam_size=5).

    Same precision as the server picks by default: float16 on CUDA when present, else int8.
    """
    import ctranslate2
    from faster_whisper import WhisperModel

    on_gpu = ctranslate2.get_cuda_device_count() > 0
    model = WhisperModel(
        str(model_dir),
        device="cuda" if on_gpu else "cpu",
        compute_type="float16" if on_gpu else "int8",
        cpu_threads=cpu_threads,
    )
    texts: dict[str, str] = {}
    for f in files:
        audio = f.samples.astype(np.float32) / 32768.0
        segments, _info = model.transcribe(audio, beam_size=5)
        texts[f.name] = " ".join(s.text.strip() for s in segments)
        logger.debug("offline %s: %s", f.name, texts[f.name])
    return texts
