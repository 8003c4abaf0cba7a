"""Resemblyzer's speaker encoder (GE2E VoiceEncoder) in numpy: audio in, 256-d voice embeddings out.

A port of resemblyzer 0.1.4 (`voice_encoder.py`, `audio.py`, `hparams.py`), numerically the
same within float32 rounding:

* volume: the whole call's audio is raised (never lowered) to -30 dBFS RMS, as
  `resemblyzer.preprocess_wav` does (its long-silence trimming is left out: our VAD has
  already cut the stream into speech);
* features: 40-band power mel spectrogram (not log), 25 ms Hann window, 10 ms hop at 16 kHz,
  centred frames with zero padding, Slaney mel scale and area normalisation (librosa's
  `melspectrogram` defaults);
* windows: 160 frames (1.6 s) placed every `hop_s`, the last one zero-padded when at least
  `min_coverage` of it holds audio (resemblyzer's `compute_partial_slices`); or, with
  `fit_tail=True` (not in resemblyzer; what diarization uses), no padding at all: the last
  window ends where the audio ends, and audio shorter than a window is one shorter window;
* network: 3-layer LSTM (hidden 256) over each window, the last layer's final hidden state
  through linear 256 -> 256, ReLU and L2 normalisation.

All windows of a call run through the LSTM together (one matrix-matrix product per layer and
time step), and each layer's input projection is one product over all time steps.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from server.speakers import SpeakerConfigError, WeightsError
from server.speakers.weights import load_state_dict

Array32 = npt.NDArray[np.float32]

SAMPLE_RATE_HZ = 16_000
N_FFT = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms
FRAME_S = HOP_SAMPLES / SAMPLE_RATE_HZ
N_MELS = 40
PARTIAL_FRAMES = 160  # 1.6 s: the window length the model was trained on
NORM_TARGET_DBFS = -30.0
INT16_MAX = 2**15 - 1
HIDDEN = 256
EMBEDDING = 256
LAYERS = 3


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f_sp = 200.0 / 3.0
    min_log_hz = 1000.0
    logstep = math.log(6.4) / 27.0
    linear = hz / f_sp
    log = min_log_hz / f_sp + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    result: npt.NDArray[np.float64] = np.where(hz >= min_log_hz, log, linear)
    return result


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    f_sp = 200.0 / 3.0
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    linear = f_sp * mel
    log = min_log_hz * np.exp(logstep * (mel - min_log_mel))
    result: npt.NDArray[np.float64] = np.where(mel >= min_log_mel, log, linear)
    return result


@functools.cache
def mel_filterbank(
    sample_rate_hz: int = SAMPLE_RATE_HZ, n_fft: int = N_FFT, n_mels: int = N_MELS
) -> Array32:
    """Triangular Slaney-normalised mel filters, [n_mels, n_fft // 2 + 1] (librosa's default)."""
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate_hz)
    edges_mel = np.array([0.0, _hz_to_mel(np.array([sample_rate_hz / 2.0]))[0]])
    mel_hz = _mel_to_hz(np.linspace(edges_mel[0], edges_mel[1], n_mels + 2))
    widths = np.diff(mel_hz)
    ramps = mel_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]
    filters: Array32 = weights.astype(np.float32)
    filters.setflags(write=False)
    return filters


@functools.cache
def _hann(n: int) -> npt.NDArray[np.float64]:
    """Periodic Hann window (scipy's `get_window("hann", n, fftbins=True)`)."""
    window: npt.NDArray[np.float64] = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    window.setflags(write=False)
    return window


def mel_spectrogram(audio: Array32) -> Array32:
    """Power mel spectrogram [frames, 40] of 16 kHz audio; frame i is centred on sample 160 i."""
    padded = np.pad(np.asarray(audio, dtype=np.float64), N_FFT // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_SAMPLES]
    spectrum = np.fft.rfft(frames * _hann(N_FFT), axis=1).astype(np.complex64)
    power = spectrum.real**2 + spectrum.imag**2
    mel: Array32 = (power @ mel_filterbank().T).astype(np.float32)
    return mel


def normalise_volume(
    audio: Array32, target_dbfs: float = NORM_TARGET_DBFS, *, increase_only: bool = True
) -> Array32:
    """Scale audio to `target_dbfs` RMS (resemblyzer's `normalize_volume`); silence is kept."""
    samples = np.asarray(audio, dtype=np.float32)
    rms = math.sqrt(float(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    if rms <= 0.0:
        return samples
    change_db = target_dbfs - 20.0 * math.log10(rms)
    if change_db < 0 and increase_only:
        return samples
    scaled: Array32 = (samples * np.float32(10.0 ** (change_db / 20.0))).astype(np.float32)
    return scaled


def partial_starts(
    n_samples: int, window_frames: int, hop_frames: int, min_coverage: float
) -> list[int]:
    """First mel frame of each window (resemblyzer's `compute_partial_slices`)."""
    n_frames = math.ceil((n_samples + 1) / HOP_SAMPLES)
    steps = max(1, n_frames - window_frames + hop_frames + 1)
    starts = list(range(0, steps, hop_frames))
    coverage = (n_samples - starts[-1] * HOP_SAMPLES) / (window_frames * HOP_SAMPLES)
    if coverage < min_coverage and len(starts) > 1:
        starts.pop()
    return starts


def fitted_starts(n_frames: int, window_frames: int, hop_frames: int) -> list[int]:
    """Window starts every `hop_frames`, plus one ending exactly at `n_frames` if needed."""
    if n_frames <= window_frames:
        return [0]
    starts = list(range(0, n_frames - window_frames + 1, hop_frames))
    if starts[-1] + window_frames < n_frames:
        starts.append(n_frames - window_frames)
    return starts


class WindowEmbeddings(NamedTuple):
    """Embeddings of a call's windows and each window's (start_s, end_s) in that audio."""

    embeddings: Array32
    spans_s: list[tuple[float, float]]


@dataclass(frozen=True)
class _Layer:
    w_in: Array32
    """[input, 4 * hidden], gates ordered i, f, o, g; the sigmoid gates pre-scaled by 1/2."""
    w_rec: Array32
    bias: Array32


class SpeakerEncoder:
    """The pretrained VoiceEncoder: `embed_windows` and `embed` on 16 kHz float32 mono audio."""

    def __init__(self, state: dict[str, npt.NDArray[Any]]) -> None:
        self._layers = [_layer(state, k) for k in range(LAYERS)]
        self._w_out = _param(state, "linear.weight", (EMBEDDING, HIDDEN)).T.copy()
        self._b_out = _param(state, "linear.bias", (EMBEDDING,))

    @classmethod
    def load(cls, path: Path) -> SpeakerEncoder:
        """Load resemblyzer's `pretrained.pt` (or a checkpoint of the same network)."""
        return cls(load_state_dict(path))

    def embed_windows(
        self,
        audio: Array32,
        window_s: float = PARTIAL_FRAMES * FRAME_S,
        hop_s: float = 0.8,
        min_coverage: float = 0.75,
        *,
        fit_tail: bool = False,
    ) -> WindowEmbeddings:
        """L2-normalised embeddings [n, 256] of windows of `window_s` every `hop_s`.

        Empty audio has no windows. Otherwise, by default resemblyzer's slicing (the last
        window zero-padded; audio shorter than a window is one padded window); with
        `fit_tail`, windows stay inside the audio (see the module docstring).
        """
        window_frames = round(window_s / FRAME_S)
        hop_frames = round(hop_s / FRAME_S)
        if window_frames < 1 or not 1 <= hop_frames <= window_frames:
            raise SpeakerConfigError(
                f"need 0 < hop_s ({hop_s}) <= window_s ({window_s}), both at least 10 ms"
            )
        if not 0.0 < min_coverage <= 1.0:
            raise SpeakerConfigError(f"min_coverage must be in (0, 1], got {min_coverage}")
        samples = np.asarray(audio, dtype=np.float32)
        if samples.ndim != 1:
            raise SpeakerConfigError(f"audio must be 1-D mono, got shape {samples.shape}")
        if samples.size == 0:
            return WindowEmbeddings(np.zeros((0, EMBEDDING), dtype=np.float32), [])
        samples = normalise_volume(samples)
        if fit_tail:
            mel = mel_spectrogram(samples)
            starts = fitted_starts(mel.shape[0], window_frames, hop_frames)
            window_frames = min(window_frames, mel.shape[0])
        else:
            starts = partial_starts(samples.size, window_frames, hop_frames, min_coverage)
            stop_sample = (starts[-1] + window_frames) * HOP_SAMPLES
            if stop_sample > samples.size:
                samples = np.pad(samples, (0, stop_sample - samples.size))
            mel = mel_spectrogram(samples)
        batch = np.stack([mel[s : s + window_frames] for s in starts])
        duration_s = len(audio) / SAMPLE_RATE_HZ
        spans = [
            (round(s * FRAME_S, 6), round(min((s + window_frames) * FRAME_S, duration_s), 6))
            for s in starts
        ]
        return WindowEmbeddings(self.embed_mels(batch), spans)

    def embed(
        self, audio: Array32, window_s: float = PARTIAL_FRAMES * FRAME_S, hop_s: float = 0.8
    ) -> Array32:
        """One embedding for the whole audio: the re-normalised mean of its windows'."""
        windows = self.embed_windows(audio, window_s, hop_s)
        return mean_embedding(windows.embeddings)

    def embed_mels(self, mels: Array32) -> Array32:
        """Embeddings [batch, 256] of mel windows [batch, frames, 40]."""
        if mels.ndim != 3 or mels.shape[2] != N_MELS:
            raise SpeakerConfigError(f"mels must be [batch, frames, {N_MELS}], got {mels.shape}")
        x = np.ascontiguousarray(mels.transpose(1, 0, 2), dtype=np.float32)  # [time, batch, in]
        for layer in self._layers[:-1]:
            x = _run_layer(x, layer, keep_outputs=True)
        last = _run_layer(x, self._layers[-1], keep_outputs=False)[0]
        raw = np.maximum(last @ self._w_out + self._b_out, 0.0)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        out: Array32 = (raw / np.where(norms > 0.0, norms, 1.0)).astype(np.float32)
        return out


def mean_embedding(embeddings: Array32) -> Array32:
    """The L2-normalised mean of row embeddings (zeros when there are none)."""
    if embeddings.shape[0] == 0:
        return np.zeros(EMBEDDING, dtype=np.float32)
    mean = embeddings.mean(axis=0, dtype=np.float64)
    norm = float(np.linalg.norm(mean))
    out: Array32 = (mean / norm if norm > 0 else mean).astype(np.float32)
    return out


def _param(state: dict[str, npt.NDArray[Any]], name: str, shape: tuple[int, ...]) -> Array32:
    value = state.get(name)
    if value is None:
        raise WeightsError(f"the speaker encoder weights have no {name}")
    if value.shape != shape:
        raise WeightsError(f"{name} has shape {value.shape}, expected {shape}")
    return np.ascontiguousarray(value, dtype=np.float32)


def _layer(state: dict[str, npt.NDArray[Any]], k: int) -> _Layer:
    inputs = N_MELS if k == 0 else HIDDEN
    w_ih = _param(state, f"lstm.weight_ih_l{k}", (4 * HIDDEN, inputs))
    w_hh = _param(state, f"lstm.weight_hh_l{k}", (4 * HIDDEN, HIDDEN))
    bias = _param(state, f"lstm.bias_ih_l{k}", (4 * HIDDEN,)) + _param(
        state, f"lstm.bias_hh_l{k}", (4 * HIDDEN,)
    )
    # torch's gate order is i, f, g, o; put the three sigmoid gates first so one tanh
    # over all four serves both: sigmoid(z) = (tanh(z / 2) + 1) / 2.
    h = HIDDEN
    order = np.r_[0 : 2 * h, 3 * h : 4 * h, 2 * h : 3 * h]
    scale = np.ones(4 * h, dtype=np.float32)
    scale[: 3 * h] = 0.5
    return _Layer(
        w_in=np.ascontiguousarray((w_ih[order] * scale[:, None]).T),
        w_rec=np.ascontiguousarray((w_hh[order] * scale[:, None]).T),
        bias=(bias[order] * scale).astype(np.float32),
    )


def _run_layer(x: Array32, layer: _Layer, *, keep_outputs: bool) -> Array32:
    """One LSTM layer over [time, batch, in]; all outputs [time, batch, hidden] or the last."""
    steps, batch, _ = x.shape
    h3 = 3 * HIDDEN
    projected = (x.reshape(steps * batch, -1) @ layer.w_in + layer.bias).reshape(steps, batch, -1)
    hidden = np.zeros((batch, HIDDEN), dtype=np.float32)
    cell = np.zeros((batch, HIDDEN), dtype=np.float32)
    outputs = np.empty((steps if keep_outputs else 1, batch, HIDDEN), dtype=np.float32)
    gates = np.empty((batch, 4 * HIDDEN), dtype=np.float32)
    for t in range(steps):
        np.matmul(hidden, layer.w_rec, out=gates)
        gates += projected[t]
        np.tanh(gates, out=gates)
        sig = gates[:, :h3]
        sig *= 0.5
        sig += 0.5
        cell *= gates[:, HIDDEN : 2 * HIDDEN]
        cell += gates[:, :HIDDEN] * gates[:, h3:]
        np.tanh(cell, out=hidden)
        hidden *= gates[:, 2 * HIDDEN : h3]
        if keep_outputs:
            outputs[t] = hidden
    if not keep_outputs:
        outputs[0] = hidden
    return outputs
