"""Background level of a stream: the lowest frame energy over a sliding window (O(1) per frame)."""

from __future__ import annotations

import math
from collections import deque

from vad.base import VadConfigError


class NoiseFloor:
    """Minimum of the frame energies (dBFS) of the last `window_ms`, the current frame included.

    Steady noise (hiss, hum, fans) sits at the floor; speech rises well above it and always
    has quieter frames between syllables, so a window of a few seconds follows a change of
    background within that window while ignoring the speech on top of it.
    """

    def __init__(self, *, frame_ms: int, window_ms: int = 3_000) -> None:
        if frame_ms <= 0 or window_ms < frame_ms:
            raise VadConfigError(
                f"noise floor window_ms ({window_ms}) must be at least one frame ({frame_ms} ms)"
            )
        self._window_frames = math.ceil(window_ms / frame_ms)
        self._index = 0
        # (frame index, energy), energies increasing from left to right
        self._candidates: deque[tuple[int, float]] = deque()

    def update(self, energy_dbfs: float) -> float:
        """Add the next frame's energy; return the floor over the window ending with it."""
        while self._candidates and self._candidates[-1][1] >= energy_dbfs:
            self._candidates.pop()
        self._candidates.append((self._index, energy_dbfs))
        oldest = self._index - self._window_frames + 1
        while self._candidates[0][0] < oldest:
            self._candidates.popleft()
        self._index += 1
        return self._candidates[0][1]
