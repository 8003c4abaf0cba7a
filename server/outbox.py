"""Outbox: what one session still has to send, and the policy for a client that reads slowly.

Rules:
- finals, metadata, errors and the close are never dropped; interims are (at most
  `max_interims` wait at a time: a newer caption makes an older one pointless);
- a client that leaves more than `max_finals` finals unread is too slow to serve: `push`
  says `overflow`, the caller closes the session (its memory must not grow without bound).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

Close = TypeVar("Close")
Verdict = Literal["queued", "dropped", "overflow"]


@dataclass(frozen=True)
class Outgoing(Generic[Close]):
    """A text frame to send, or (text None) the close that ends the session."""

    text: str | None
    final: bool
    close: Close | None = None


@dataclass
class Outbox(Generic[Close]):
    max_interims: int = 4
    max_finals: int = 256
    _items: deque[Outgoing[Close]] = field(default_factory=deque)
    _interims: int = 0
    _finals: int = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, text: str, *, interim: bool) -> Verdict:
        """Queue a text frame; `interim` ones may be dropped (see the rules)."""
        if interim:
            if self._interims >= self.max_interims:
                return "dropped"
            self._interims += 1
        else:
            if self._finals >= self.max_finals:
                return "overflow"
            self._finals += 1
        self._items.append(Outgoing(text, not interim))
        return "queued"

    def push_unbounded(self, text: str) -> None:
        """Queue a frame that must go out even past the limit (Metadata before a close)."""
        self._items.append(Outgoing(text, True))
        self._finals += 1

    def push_close(self, close: Close) -> None:
        self._items.append(Outgoing(None, True, close))

    def pop(self) -> Outgoing[Close] | None:
        if not self._items:
            return None
        item = self._items.popleft()
        if item.text is not None:
            if item.final:
                self._finals -= 1
            else:
                self._interims -= 1
        return item

    def clear(self) -> None:
        self._items.clear()
        self._interims = self._finals = 0
