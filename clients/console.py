"""Live captions on a terminal: the interim line rewritten in place, finals printed as lines."""

from __future__ import annotations

import shutil
from typing import TextIO

CLEAR_LINE = "\r\x1b[2K"


class LiveConsole:
    """Writes captions to `out`; interims only when `show_interim` (meant for terminals).

    An interim is cut to its last `width - 1` characters so it stays on one line and the
    next `\\r` can erase it.
    """

    def __init__(self, out: TextIO, show_interim: bool, width: int | None = None) -> None:
        self._out = out
        self._show_interim = show_interim
        self._width = width if width is not None else shutil.get_terminal_size().columns
        self._interim_shown = False

    def interim(self, text: str) -> None:
        if not self._show_interim:
            return
        text = " ".join(text.split())
        limit = max(self._width - 1, 1)
        if len(text) > limit:
            text = "\u2026" + text[-(limit - 1) :]
        self._out.write(CLEAR_LINE + text)
        self._out.flush()
        self._interim_shown = True

    def final(self, text: str) -> None:
        self.clear_interim()
        text = text.strip()
        if text:
            self._out.write(text + "\n")
            self._out.flush()

    def clear_interim(self) -> None:
        if self._interim_shown:
            self._out.write(CLEAR_LINE)
            self._out.flush()
            self._interim_shown = False
