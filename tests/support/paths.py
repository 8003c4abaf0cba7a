"""Where the checkout and the shared data (audio, speech sets; $STREAMSCRIBE_SHARED) are."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DIR = Path(os.environ.get("STREAMSCRIBE_SHARED", REPO_ROOT.parent / "shared"))
AUDIO_DIR = SHARED_DIR / "audio"


def reference_texts() -> dict[str, str]:
    """File name -> reference transcript, from the shared audio's refs.tsv."""
    refs: dict[str, str] = {}
    for line in (AUDIO_DIR / "refs.tsv").read_text(encoding="utf-8").splitlines():
        if line.strip():
            name, text = line.split("\t", 1)
            refs[name] = text
    return refs
