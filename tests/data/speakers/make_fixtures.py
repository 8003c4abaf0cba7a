"""Make the speaker test fixtures with the ORIGINAL implementations (torch + resemblyzer).

Not part of the test run. In a throwaway venv outside the repo:

    python3 -m venv /tmp/rz-venv
    /tmp/rz-venv/bin/pip install torch==2.13.0 librosa webrtcvad-wheels
    /tmp/rz-venv/bin/pip install --no-deps Resemblyzer-0.1.4-py3-none-any.whl
    /tmp/rz-venv/bin/python tests/data/speakers/make_fixtures.py

Writes, beside this file:
* resemblyzer_embeddings.npz: for each clip, `<clip>/partials` (resemblyzer's
  `embed_utterance(return_partials=True, rate=1.25)`, i.e. 1.6 s windows every 0.8 s) and
  `<clip>/utterance` (their normalised mean), after resemblyzer's `normalize_volume(-30 dBFS,
  increase_only=True)`; float32.
* tiny_zip.pt / tiny_legacy.pt: a small state dict saved by torch in the zip and the legacy
  formats (float32, a transposed view, int64, float16).
"""

from __future__ import annotations

import collections
import wave
from pathlib import Path

import numpy as np
import torch
from resemblyzer import VoiceEncoder
from resemblyzer.audio import normalize_volume

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[3] / "shared"
CLIPS = (
    "speech-dev/arctic_aew_a0001.wav",
    "speech-dev/speechbrain_spk2_snt1.wav",
    "speech-dev/vctk_p240_rainbow.wav",
    "speech-dev/pocketsphinx_cards_001.wav",
)


def read(path: Path) -> np.ndarray:
    with wave.open(str(path)) as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def main() -> None:
    torch.set_num_threads(1)
    encoder = VoiceEncoder("cpu", verbose=False)
    arrays: dict[str, np.ndarray] = {}
    for clip in CLIPS:
        wav = normalize_volume(read(SHARED / clip), -30, increase_only=True)
        embed, partials, _ = encoder.embed_utterance(wav, return_partials=True, rate=1.25)
        name = Path(clip).stem
        arrays[f"{name}/partials"] = partials.astype(np.float32)
        arrays[f"{name}/utterance"] = embed.astype(np.float32)
    np.savez_compressed(HERE / "resemblyzer_embeddings.npz", **arrays)

    grid = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    state = collections.OrderedDict(
        w=grid,
        t=grid.clone().t(),
        i=torch.tensor([3, -4], dtype=torch.int64),
        h=torch.tensor([0.5, -1.25], dtype=torch.float16),
    )
    checkpoint = {"model_state": state, "step": 7}
    torch.save(checkpoint, HERE / "tiny_zip.pt")
    torch.save(checkpoint, HERE / "tiny_legacy.pt", _use_new_zipfile_serialization=False)


if __name__ == "__main__":
    main()
