"""Pure limits of the connection layer: the control-frame rate limiter and admission.

`RateLimiter` is a token bucket: `rate_per_s` tokens a second up to `burst`, and a client
may run `debt` tokens into the red before it counts as flooding. `admission` decides
whether a new session is served, from the server's state (no I/O, no clock).
"""

from __future__ import annotations

from dataclasses import dataclass

from websockets.frames import CloseCode

from server.protocol import ErrorCode


@dataclass
class RateLimiter:
    rate_per_s: float
    burst: float
    debt: float
    _tokens: float
    _stamp_s: float

    @classmethod
    def per_second(cls, rate_per_s: float, now_s: float) -> RateLimiter:
        """The server's policy: bursts of twice the rate, a debt of one second's worth."""
        return cls(rate_per_s, 2 * rate_per_s, rate_per_s, rate_per_s, now_s)

    def take(self, now_s: float) -> bool:
        """Spend one token; False once the client is more than `debt` in the red."""
        elapsed_s = max(0.0, now_s - self._stamp_s)
        self._tokens = min(self.burst, self._tokens + elapsed_s * self.rate_per_s) - 1
        self._stamp_s = now_s
        return self._tokens >= -self.debt


@dataclass(frozen=True)
class Refusal:
    code: ErrorCode
    message: str
    close_code: CloseCode


def admission(
    *,
    draining: bool,
    sessions: int,
    max_sessions: int,
    estimated_wait_s: float,
    max_wait_s: float,
) -> Refusal | None:
    """Whether a new session is served now (None) or refused, and how."""
    if draining:
        return Refusal(
            "SHUTTING_DOWN", "the server is shutting down; reconnect", CloseCode.GOING_AWAY
        )
    if sessions >= max_sessions:
        return Refusal(
            "SESSION_LIMIT",
            f"the server is at its limit of {max_sessions} sessions; retry later or on "
            "another server",
            CloseCode.TRY_AGAIN_LATER,
        )
    if estimated_wait_s > max_wait_s:
        return Refusal(
            "OVERLOADED",
            f"the server is overloaded (estimated wait {estimated_wait_s:.1f} s); retry later",
            CloseCode.TRY_AGAIN_LATER,
        )
    return None
