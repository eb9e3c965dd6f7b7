"""Check executors: one module per monitor type, each exposing `async def check(monitor, proxy, budget)`.

`check` returns a `Result` (or None when there is nothing to report, as `push` does for a fresh beat)
and must finish within `budget` seconds. A config the executor cannot decode raises `ConfigError`;
the caller turns that into the DOWN result Go reports. What the executors share beyond these types
(Go JSON decoding and error texts, dialing, TLS, HTTP/1.1, GJSON, OAuth, timing) is in `_kit`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

VERSION = "0.1.0"  # the worker's version, also sent in User-Agent headers

DOWN, UP, PENDING, MAINTENANCE = 0, 1, 2, 3


@dataclass(slots=True)
class Monitor:
    """The monitor fields of a health-check payload that executors may read."""
    id: str = ""
    name: str = ""
    type: str = ""
    interval: int = 0
    timeout: int = 0
    max_retries: int = 0
    retry_interval: int = 0
    resend_interval: int = 0
    config: str = ""
    last_heartbeat: dict | None = None


@dataclass(slots=True)
class Result:
    status: int
    message: str
    start_ns: int
    end_ns: int
    tls_info: dict | None = None
    timings: dict[str, float] = field(default_factory=dict)  # phase -> milliseconds (extension)

    @property
    def ping_ms(self) -> int:
        return max(0, (self.end_ns - self.start_ns) // 1_000_000)


def instant(status: int, message: str) -> Result:
    """A result decided without touching the target: start and end are the same clock read."""
    now = time.time_ns()
    return Result(status, message, now, now)


class ConfigError(Exception):
    """The monitor config cannot be decoded; str(exc) is the full message for the DOWN result."""
