"""Worker settings and logging: the Go worker's environment variables, the command-line flags on top,
and the two log formats (readable lines in dev, one JSON object per line in prod).

Only the standard library is imported here, so `--help` and configuration errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

DEFAULT_QUEUES = {"critical": 6, "healthcheck": 5, "default": 3, "low": 1}

# Configuration

class ConfigurationError(Exception):
    """A setting with a bad value; the message names the setting."""


@dataclass
class Settings:
    redis_url: str | None = None
    redis_host: str = "redis"
    redis_port: int = 6379
    redis_password: str = ""
    redis_db: int = 0
    concurrency: int = 128
    queues: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_QUEUES))
    strict_priority: bool = True
    shutdown_timeout: float = 8.0
    mode: str = "dev"
    log_level: str = "info"
    tz: str = "UTC"
    service_name: str = "peekaping:worker"
    result_extensions: bool = False

    def redis_target(self) -> str:
        """Where Redis is, for logs: never includes the password."""
        if self.redis_url:
            return _redact_url(self.redis_url)
        return f"redis://{self.redis_host}:{self.redis_port}/{self.redis_db}"


LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
              "error": logging.ERROR, "dpanic": logging.CRITICAL, "panic": logging.CRITICAL,
              "fatal": logging.CRITICAL}


def _redact_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    creds, _, host = rest.partition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user + ':' if user else ''}***@{host}"


def _read_dotenv(path: str) -> dict[str, str]:
    """The Go worker reads `../../.env` (KEY=VALUE, # comments, quotes stripped) before the environment."""
    values: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line or line.startswith("#") or "=" not in line:
                    continue
                key, _, value = line.partition("=")
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                    value = value[1:-1]
                values[key.strip()] = value
    except OSError:
        pass
    return values


def parse_queues(text: str) -> dict[str, int]:
    queues: dict[str, int] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, prio = item.strip().rpartition(":")
        if not sep or not name.strip():
            raise ConfigurationError(f"--queues: expected name:priority, got {item.strip()!r}")
        try:
            priority = int(prio)
        except ValueError:
            raise ConfigurationError(f"--queues: priority of {name!r} must be an integer, got {prio!r}") from None
        if priority <= 0:
            raise ConfigurationError(f"--queues: priority of {name!r} must be at least 1")
        queues[name.strip()] = priority
    if not queues:
        raise ConfigurationError("--queues: no queue given")
    return queues


def load_settings(env: dict[str, str], args: argparse.Namespace) -> Settings:
    """Environment as the Go worker reads it, then command-line flags on top."""
    merged = _read_dotenv(os.path.join("..", "..", ".env"))
    merged.update({k: v for k, v in env.items() if v != ""})
    s = Settings()

    def integer(name: str, low: int, high: int | None, zero_is_unset: bool = False) -> int | None:
        raw = merged.get(name)
        if raw is None:
            return None
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigurationError(f"{name}: must be an integer, got {raw!r}") from None
        if zero_is_unset and value == 0:
            return None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ConfigurationError(f"{name}: must be {bound}, got {value}")
        return value

    s.redis_host = merged.get("REDIS_HOST", s.redis_host)
    s.redis_port = integer("REDIS_PORT", 1, 65535) or s.redis_port
    s.redis_password = merged.get("REDIS_PASSWORD", "")
    s.redis_db = integer("REDIS_DB", 0, 15) or 0
    s.concurrency = integer("QUEUE_CONCURRENCY", 1, None, zero_is_unset=True) or s.concurrency
    s.mode = merged.get("MODE", s.mode)
    if s.mode not in ("dev", "prod", "test"):
        raise ConfigurationError(f"MODE: must be one of dev, prod, test, got {s.mode!r}")
    s.log_level = merged.get("LOG_LEVEL", s.log_level).lower()
    if s.log_level not in LOG_LEVELS:
        raise ConfigurationError(f"LOG_LEVEL: must be one of {', '.join(LOG_LEVELS)}, got {s.log_level!r}")
    s.tz = merged.get("TZ", s.tz)
    s.service_name = merged.get("SERVICE_NAME", s.service_name)

    if args.concurrency is not None:
        if args.concurrency < 1:
            raise ConfigurationError(f"--concurrency: must be at least 1, got {args.concurrency}")
        s.concurrency = args.concurrency
    if args.redis_url:
        if not args.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError("--redis-url: must start with redis://, rediss:// or unix://")
        s.redis_url = args.redis_url
    if args.queues:
        s.queues = parse_queues(args.queues)
    if args.strict_priority is not None:
        s.strict_priority = args.strict_priority
    if args.shutdown_timeout is not None:
        if args.shutdown_timeout < 0:
            raise ConfigurationError("--shutdown-timeout: must not be negative")
        s.shutdown_timeout = args.shutdown_timeout
    s.result_extensions = bool(getattr(args, "result_extensions", False))
    return s


# ==================================================================================================
# Logging: readable lines in dev, one JSON object per line in prod

class _JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {"level": record.levelname.lower(), "ts": round(record.created, 6), "logger": record.name,
                 "msg": record.getMessage(), "svc": self.service}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _DevFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        extra = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items())
        line = f"{stamp} {record.levelname:<7} {record.getMessage()}" + (f"  {extra}" if extra else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(settings.service_name) if settings.mode == "prod" else _DevFormatter())
    root = logging.getLogger("peekaping")
    root.handlers[:] = [handler]
    root.setLevel(LOG_LEVELS[settings.log_level])
    root.propagate = False


def _fields(**kv: Any) -> dict:
    return {"fields": kv}


class _Throttle:
    """Logs a repeating problem once per interval instead of once per attempt."""

    def __init__(self, every: float = 10.0) -> None:
        self.every, self.last = every, 0.0

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            return True
        return False



def redis_client(settings: Settings) -> Any:
    from asynq_protocol import connect

    options: dict[str, Any] = dict(max_connections=max(16, min(settings.concurrency, 64)), health_check_interval=15,
                                   socket_connect_timeout=5)
    if settings.redis_url:
        if not settings.redis_url.startswith("unix://"):
            options["socket_keepalive"] = True
        return connect(settings.redis_url, **options)
    options["socket_keepalive"] = True
    return connect(host=settings.redis_host, port=settings.redis_port, password=settings.redis_password or None,
                   db=settings.redis_db, **options)



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peekaping-worker",
        description="Peekaping health-check worker speaking the Asynq protocol. "
                    "`peekaping-worker check TYPE CONFIG` runs one check locally.",
        epilog="Environment: REDIS_HOST, REDIS_PORT, REDIS_PASSWORD, REDIS_DB, QUEUE_CONCURRENCY, MODE, "
               "LOG_LEVEL, TZ, SERVICE_NAME. Flags override the environment.")
    parser.add_argument("--version", action="store_true", help="print version and executors, then exit")
    parser.add_argument("--concurrency", type=int, help="checks run at once (env QUEUE_CONCURRENCY, default 128)")
    parser.add_argument("--redis-url", help="redis://[user:pass@]host:port/db, rediss:// (TLS) or unix://path")
    parser.add_argument("--queues", help="name:priority,... (default critical:6,healthcheck:5,default:3,low:1)")
    parser.add_argument("--strict-priority", dest="strict_priority", action="store_true", default=None,
                        help="serve a lower queue only while higher ones are empty (default)")
    parser.add_argument("--no-strict-priority", dest="strict_priority", action="store_false",
                        help="weighted queue selection instead")
    parser.add_argument("--shutdown-timeout", type=float, help="seconds to let checks finish on SIGTERM (default 8)")
    parser.add_argument("--result-extensions", action="store_true",
                        help="add extra fields (phase timings) to ingest payloads; the Go ingester ignores them")
    return parser


