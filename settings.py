"""Worker settings and logging: the Go worker's environment variables, the command-line flags on top,
and the two log formats (readable lines in dev, one JSON object per line in prod).

Only the standard library is imported here, so `--help` and configuration errors answer at once.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

DEFAULT_QUEUES = {"critical": 6, "healthcheck": 5, "default": 3, "low": 1}
# A site's queue is `healthcheck-<site>`; names stay plain so queue keys and ACL patterns need no quoting.
SITE_QUEUE_PREFIX = "healthcheck-"
SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")

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
    site: str = ""  # --site: serve healthcheck-<site>; results carry it with --result-extensions
    worker_id: str = ""  # --worker-id: the `worker` field of results (host:pid when empty)
    metrics_addr: str = ""  # --metrics-addr / METRICS_ADDR: host:port of /metrics, /ready, /live (off when empty)

    def redis_target(self) -> str:
        """Where Redis is, for logs: never includes the password."""
        if self.redis_url:
            return _redact_url(self.redis_url)
        auth = ":***@" if self.redis_password else ""
        return f"redis://{auth}{_host_text(self.redis_host)}:{self.redis_port}/{self.redis_db}"


LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
              "error": logging.ERROR, "dpanic": logging.CRITICAL, "panic": logging.CRITICAL,
              "fatal": logging.CRITICAL}


# ==================================================================================================
# Redis URLs: parsed here so that a bad one is one line (exit 2) and the logged form is built from the
# parts, with every secret replaced by ***. Error texts never quote the URL: it may hold a password.

_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_SECRET_OPTION = re.compile(r"pass|secret|token", re.IGNORECASE)


@dataclass
class RedisUrl:
    scheme: str
    username: str = ""
    password: str = ""
    host: str = ""
    port: int | None = None
    path: str = ""  # `/<db>` for redis:// and rediss://, the socket path for unix://
    query: list[tuple[str, str]] = field(default_factory=list)

    def redacted(self) -> str:
        auth = ""
        if self.username or self.password:
            auth = quote(self.username, safe="") + (":***" if self.password else "") + "@"
        host = _host_text(self.host) + (f":{self.port}" if self.port is not None else "")
        options = "&".join(f"{quote(k, safe='')}=" + ("***" if _SECRET_OPTION.search(k) else quote(v, safe="/"))
                           for k, v in self.query)
        return f"{self.scheme}://{auth}{host}{quote(self.path, safe='/')}" + (f"?{options}" if options else "")


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _unencoded(char: str) -> ConfigurationError:
    return ConfigurationError(
        f"--redis-url: the user name or password contains an unencoded {char!r}; write it as %{ord(char):02X} "
        f"(percent-encode / ? # @ % and spaces in credentials)")


def parse_redis_url(url: str) -> RedisUrl:
    """Split a Redis URL the way redis-py reads a well-formed one; ConfigurationError for anything else."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", url)
    scheme = match.group(1).lower() if match else ""
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError("--redis-url: must start with redis://, rediss:// or unix://")
    rest = url[match.end():]
    if any(c.isspace() or not c.isprintable() for c in rest):
        raise ConfigurationError("--redis-url: contains a space or control character; percent-encode it "
                                 "(a space is %20)")
    if "#" in rest:  # a fragment means nothing in a Redis URL: it is an unencoded '#' in a password
        raise _unencoded("#")
    head, _, query_text = rest.partition("?")
    if "=" not in query_text.partition("@")[0] and "@" in query_text:  # `?` in the credentials
        raise _unencoded("?")
    authority, slash, path = head.partition("/")
    path = slash + path
    if "@" in path and scheme != "unix":
        raise _unencoded("/")
    parsed = RedisUrl(scheme)
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        if "@" in userinfo:
            raise _unencoded("@")
        user, _, password = userinfo.partition(":")
        parsed.username, parsed.password = unquote(user), unquote(password)
    parsed.host, parsed.port = _host_port(authority)
    if scheme == "unix":
        if parsed.host or parsed.port is not None:
            raise ConfigurationError("--redis-url: a unix:// URL has the socket path right after //, "
                                     "e.g. unix:///run/redis/redis.sock?db=0")
        if path in ("", "/"):
            raise ConfigurationError("--redis-url: a unix:// URL needs the socket path, e.g. unix:///run/redis.sock")
        parsed.path = unquote(path)
    elif path not in ("", "/"):
        if not re.fullmatch(r"/[0-9]+", path):
            raise ConfigurationError("--redis-url: the path must be the database number, e.g. /0 (a password "
                                     "with / ? # @ must be percent-encoded)")
        parsed.path = path
    for item in query_text.split("&") if query_text else ():
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise ConfigurationError("--redis-url: every query option must be written name=value")
        parsed.query.append((unquote(key.replace("+", " ")), unquote(value.replace("+", " "))))
    for key, value in parsed.query:
        if key == "db" and not re.fullmatch(r"[0-9]+", value):
            raise ConfigurationError("--redis-url: db must be a database number")
    return parsed


def _host_port(authority: str) -> tuple[str, int | None]:
    port_text = None
    if authority.startswith("["):
        host, bracket, after = authority[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ConfigurationError("--redis-url: the host is not a valid host name or IP address")
        port_text = after[1:] if after else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigurationError("--redis-url: the host is not a valid IPv6 address") from None
    else:
        host, colon, port_text = authority.partition(":")
        if not colon:
            port_text = None
        if host and not _HOST_NAME.fullmatch(host):
            raise ConfigurationError("--redis-url: the host is not a valid host name or IP address (a password "
                                     "with / ? # @ must be percent-encoded)")
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ConfigurationError("--redis-url: the port must be a number between 1 and 65535 (a password "
                                     "with / ? # @ must be percent-encoded)")
        port = int(port_text)
    return host, port


def _redact_url(url: str) -> str:
    """The URL as logs may show it: secrets replaced, rebuilt from the parsed parts."""
    try:
        return parse_redis_url(url).redacted()
    except ConfigurationError:
        return "<invalid Redis URL>"


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

    s.redis_host = merged.get("REDIS_HOST", s.redis_host).strip()
    if not _HOST_NAME.fullmatch(s.redis_host) and not _is_ipv6(s.redis_host):
        # The value is not quoted back: a URL pasted here may carry a password.
        raise ConfigurationError("REDIS_HOST: must be a host name or IP address, without scheme, port, "
                                 "user or password (use REDIS_PORT, REDIS_PASSWORD, or --redis-url)")
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
    ping_mode = env.get("PEEKAPING_PING_MODE", "").strip().lower()  # read again by executors.ping
    if ping_mode not in ("", "auto", "datagram", "raw", "command"):
        raise ConfigurationError(f"PEEKAPING_PING_MODE: must be one of auto, datagram, raw, command, "
                                 f"got {env['PEEKAPING_PING_MODE']!r}")
    s.tz = merged.get("TZ", s.tz)
    s.service_name = merged.get("SERVICE_NAME", s.service_name)

    if args.concurrency is not None:
        if args.concurrency < 1:
            raise ConfigurationError(f"--concurrency: must be at least 1, got {args.concurrency}")
        s.concurrency = args.concurrency
    if args.redis_url:
        parse_redis_url(args.redis_url)
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
    site = getattr(args, "site", None)
    if site is not None:
        if not SITE_NAME.fullmatch(site):
            raise ConfigurationError(f"--site: must be 1-63 letters, digits, '-', '_' or '.', starting with a letter "
                                     f"or digit, got {site!r}")
        s.site = site
        s.queues = {SITE_QUEUE_PREFIX + site: 5, **(parse_queues(args.queues) if args.queues else {})}
    worker_id = getattr(args, "worker_id", None)
    if worker_id is not None:
        if not worker_id.strip() or len(worker_id) > 128 or not worker_id.isprintable():
            raise ConfigurationError("--worker-id: must be 1-128 printable characters")
        s.worker_id = worker_id
    metrics_addr = getattr(args, "metrics_addr", None) or merged.get("METRICS_ADDR", "")
    if metrics_addr:
        from metrics import listen_address  # the standard library only until the endpoint starts
        try:
            listen_address(metrics_addr)
        except ValueError as exc:
            raise ConfigurationError(f"--metrics-addr: {exc}") from None
        s.metrics_addr = metrics_addr.strip()
    return s


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
        return True
    except ValueError:
        return False


# ==================================================================================================
# Logging: readable lines in dev, one JSON object per line in prod

# zap's level names (Go's logger): Python's WARNING is zap's "warn"; CRITICAL is used only for "fatal".
_ZAP_LEVELS = ((logging.CRITICAL, "fatal"), (logging.ERROR, "error"), (logging.WARNING, "warn"),
               (logging.INFO, "info"))


def zap_level(levelno: int) -> str:
    return next((name for threshold, name in _ZAP_LEVELS if levelno >= threshold), "debug")


class _JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {"level": zap_level(record.levelno), "ts": round(record.created, 6), "logger": record.name,
                 "msg": record.getMessage(), "svc": self.service}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def format_queues(queues: dict[str, int]) -> str:
    """`critical:6,healthcheck:5`: the --queues syntax, highest priority first."""
    return ",".join(f"{q}:{p}" for q, p in sorted(queues.items(), key=lambda item: -item[1]))


def _dev_value(value: Any) -> str:
    """A field value as logfmt shows it: name:value lists for mappings, quotes only where needed."""
    if isinstance(value, dict):
        text = ",".join(f"{k}:{v}" for k, v in value.items())
    elif isinstance(value, (list, tuple, set, frozenset)):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    if text == "" or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class _DevFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        extra = " ".join(f"{k}={_dev_value(v)}" for k, v in getattr(record, "fields", {}).items())
        level = zap_level(record.levelno).upper()
        line = f"{stamp} {level:<5} {record.getMessage()}" + (f"  {extra}" if extra else "")
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
    """The worker's Redis client; ConfigurationError for URL options redis-py would reject later."""
    _defer_package_metadata()
    from asynq_protocol import connect

    options: dict[str, Any] = dict(max_connections=max(16, min(settings.concurrency, 64)), health_check_interval=15,
                                   socket_connect_timeout=5, **_driver_info())
    if settings.redis_url:
        if not settings.redis_url.startswith("unix://"):
            options["socket_keepalive"] = True
        _check_url_options(settings.redis_url)
        return connect(settings.redis_url, **options)
    options["socket_keepalive"] = True
    return connect(host=settings.redis_host, port=settings.redis_port, password=settings.redis_password or None,
                   db=settings.redis_db, **options)



def _defer_package_metadata() -> None:
    """Make `importlib.metadata` load on first use instead of at `import redis`.

    redis-py imports it (and with it email, zipfile, csv, tempfile, pathlib: 1.3-2.5 MB of an idle
    worker's RSS) only to read its own version for CLIENT SETINFO, which `_driver_info` passes instead.
    Anything that does use the module gets it whole on its first attribute access (LazyLoader).
    """
    name = "importlib.metadata"
    if name in sys.modules:
        return
    try:
        import importlib
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return
        spec.loader = importlib.util.LazyLoader(spec.loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        importlib.metadata = module  # type: ignore[attr-defined]  # `from importlib import metadata`
    except Exception:  # an importer LazyLoader cannot wrap: load it the ordinary way, later
        sys.modules.pop(name, None)


def _driver_info() -> dict[str, Any]:
    """redis-py's CLIENT SETINFO name and version, given so that redis-py need not read its package metadata
    (redis >= 7; older versions read it at import time anyway)."""
    try:
        import redis
        from redis.driver_info import DriverInfo
    except ImportError:
        return {}
    version = getattr(redis, "__version__", None)
    return {"driver_info": DriverInfo(name="redis-py", lib_version=version)} if isinstance(version, str) else {}


def _check_url_options(url: str) -> None:
    """Query options redis-py cannot use: a bad value fails in redis-py's URL parser, an unknown name only
    when the first connection is made (a TypeError on every retry), so both are checked here."""
    import inspect

    from redis.asyncio.connection import parse_url

    try:
        kwargs = parse_url(url)
    except ValueError as exc:  # redis-py's texts name the option, never its value
        raise ConfigurationError(f"--redis-url: {exc}") from None
    connection_class = kwargs.pop("connection_class", None)
    if connection_class is None:
        from redis.asyncio.connection import Connection as connection_class
    accepted = {"db", "username", "password", "host", "port", "path", "max_connections", "timeout"}
    for cls in connection_class.__mro__:
        if "__init__" in vars(cls):
            accepted.update(inspect.signature(cls.__init__).parameters)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigurationError(f"--redis-url: unknown query option {unknown[0]!r}")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, sized as argparse sizes it but without `import shutil` (and with it bz2 and
    lzma, ~0.4 MB): argparse makes one on every add_argument, so the worker would load them at start."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            try:
                width = int(os.environ.get("COLUMNS", "0"))
            except ValueError:
                width = 0
            if width <= 0:
                try:
                    width = os.get_terminal_size(sys.__stdout__.fileno()).columns
                except (AttributeError, ValueError, OSError):
                    width = 0
            width = (width or 80) - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peekaping-worker", formatter_class=_HelpFormatter,
        description="Peekaping health-check worker speaking the Asynq protocol. "
                    "`peekaping-worker check TYPE CONFIG` runs one check locally.",
        epilog="Environment: REDIS_HOST, REDIS_PORT, REDIS_PASSWORD, REDIS_DB, QUEUE_CONCURRENCY, MODE, "
               "LOG_LEVEL, TZ, SERVICE_NAME, METRICS_ADDR. Flags override the environment.")
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
                        help="add extra fields (phase timings, site, worker) to ingest payloads; the Go ingester "
                             "ignores them")
    parser.add_argument("--site", help="serve this site's queue, healthcheck-<site> (priority 5), instead of the "
                                           "default queues; --queues adds others. See `peekaping-worker route`")
    parser.add_argument("--worker-id", help="the `worker` field of results with --result-extensions (default host:pid)")
    parser.add_argument("--metrics-addr", help="serve /metrics (Prometheus), /ready and /live on host:port, e.g. "
                                               "127.0.0.1:9780 (env METRICS_ADDR; default off)")
    parser.add_argument("--acl-rule", action="store_true",
                        help="print the minimal Redis ACL SETUSER line for a worker serving --queues, then exit")
    return parser


