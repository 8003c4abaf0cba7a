"""The Silero VAD classifier: faster-whisper's bundled Silero ONNX model run by onnxruntime."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vad.base import SAMPLE_RATE_HZ, BackendUnavailableError, VadConfigError, check_frame
from vad.framing import frame_dbfs

SILERO_FRAME_MS = 32  # the model takes 512-sample windows at 16 kHz
_WINDOW_SAMPLES = 512
_CONTEXT_SAMPLES = 64  # the model also sees the last 64 samples of the previous window
_STATE_SHAPE = (1, 1, 128)


def bundled_model_path() -> Path:
    """Path of the Silero ONNX model that faster-whisper ships in its assets."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or spec.origin is None:
        raise BackendUnavailableError(
            "the silero VAD uses faster-whisper's bundled model, but faster-whisper is not "
            "installed; install streamscribe's dependencies or use --vad webrtc"
        )
    assets = Path(spec.origin).parent / "assets"
    models = sorted(assets.glob("silero_vad*.onnx"))
    if not models:
        raise BackendUnavailableError(
            f"no silero_vad*.onnx in {assets}; reinstall faster-whisper or use --vad webrtc"
        )
    return models[-1]


@functools.lru_cache(maxsize=4)
def _session(model_path: Path) -> Any:
    """One shared single-threaded onnxruntime session per model file (run() is thread-safe)."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            "the silero VAD needs onnxruntime (a faster-whisper dependency); "
            "`pip install onnxruntime` or use --vad webrtc"
        ) from exc
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    try:
        return onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise BackendUnavailableError(
            f"cannot load the silero model {model_path}: {exc}; reinstall faster-whisper"
        ) from exc


class SileroClassifier:
    """Silero VAD on 32 ms (512-sample) frames, with the recurrent state carried across calls.

    A frame is speech when the model's probability reaches `threshold`; once in speech it
    stays speech until the probability drops below `neg_threshold` (hysteresis, as in
    Silero's own segmenter). Frames quieter than `energy_gate_dbfs` are never speech.
    One instance per stream: it holds that stream's state.

    The default threshold 0.3 (Silero's own is 0.5), from `python -m bench.vad`: it misses
    0.5 s of speech at 10 dB SNR against 2.0 s at 0.4, sends nothing on the noise-only
    tracks, and keeps the endpoint delay p50 at 591 ms (0.25: 625 ms, past the 600 ms target;
    0.2 sent 0.9 s of noise-only audio). Through the whole pipeline (`python -m bench replay`)
    a lower threshold lowered WER on every evaluation set, e.g. quiet speech 0.067 (0.25)
    against webrtc's 0.098. Whispered speech still scores low (0.2-0.6) and loses its onsets:
    see vad/either.py.
    """

    def __init__(
        self,
        *,
        threshold: float = 0.3,
        neg_threshold: float | None = None,
        energy_gate_dbfs: float = -60.0,
        model_path: Path | None = None,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise VadConfigError(f"silero threshold must be in (0, 1), got {threshold}")
        low = max(threshold - 0.15, 0.01) if neg_threshold is None else neg_threshold
        if not 0.0 < low <= threshold:
            raise VadConfigError(
                f"silero neg_threshold must be in (0, threshold={threshold}], got {low}"
            )
        self._session = _session(model_path or bundled_model_path())
        self.threshold = threshold
        self.neg_threshold = low
        self.energy_gate_dbfs = energy_gate_dbfs
        self._h = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(_CONTEXT_SAMPLES, dtype=np.float32)
        self._speaking = False
        self.last_probability = 0.0

    @property
    def frame_ms(self) -> int:
        return SILERO_FRAME_MS

    def probability(self, frame: npt.NDArray[np.float32]) -> float:
        """Run the model on one 512-sample frame and advance its state."""
        check_frame(frame, _WINDOW_SAMPLES)
        window = np.concatenate((self._context, frame.astype(np.float32, copy=False)))
        probs, self._h, self._c = self._session.run(
            None, {"input": window[np.newaxis, :], "h": self._h, "c": self._c}
        )
        self._context = window[-_CONTEXT_SAMPLES:].copy()
        self.last_probability = float(np.asarray(probs).reshape(-1)[0])
        return self.last_probability

    def is_speech(self, frame: npt.NDArray[np.float32]) -> bool:
        probability = self.probability(frame)
        cut = self.neg_threshold if self._speaking else self.threshold
        self._speaking = probability >= cut
        return self._speaking and frame_dbfs(frame) >= self.energy_gate_dbfs


assert SAMPLE_RATE_HZ * SILERO_FRAME_MS // 1000 == _WINDOW_SAMPLES
