"""Whisper's Mandarin in simplified characters (OpenCC's `t2s`); the ONLY opencc import.

Whisper writes Mandarin in traditional or simplified characters as its training data
happened to: whisper-base answers the AISHELL-1 clip of ../shared/speech-multi in
traditional characters (CER 0.500 against its simplified reference; 0.167 converted). A
simplified-Chinese prompt, the usual workaround, only half works there (廣州市佛地产中间协会分析,
CER 0.250). OpenCC converts by phrases (乾隆 stays, 乾燥 becomes 干燥), nearly always one
character for one, so a result's words are converted as one string and cut back.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import opencc

_converter = opencc.OpenCC("t2s")
_lock = threading.Lock()  # engine workers call from several threads; OpenCC promises nothing


def to_simplified(text: str) -> str:
    with _lock:
        return str(_converter.convert(text))


def pieces_to_simplified(pieces: Sequence[str]) -> list[str]:
    """Each piece (a word with its spacing and punctuation) converted in the context of the
    whole text; piece by piece where a conversion changed the length."""
    whole = to_simplified("".join(pieces))
    if len(whole) != sum(len(p) for p in pieces):
        return [to_simplified(p) for p in pieces]
    out: list[str] = []
    at = 0
    for piece in pieces:
        out.append(whole[at : at + len(piece)])
        at += len(piece)
    return out
