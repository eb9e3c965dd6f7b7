"""Go's wording where the executors report addresses, OS errors, lookups, times, quoted strings and
header names."""

from __future__ import annotations

import os
import re
import socket
import time
from datetime import datetime, timezone

# --------------------------------------------------------------------------------------------------
# Go's net package

_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def is_domain_name(name: str) -> bool:
    """Go's net.isDomainName: ASCII letters, digits, `_` and `-`, labels of 1-63 characters that do not
    start or end with `-`, at most 253 characters (254 with the final dot), not all digits."""
    if name == ".":
        return True
    if not name or len(name) > 254 or len(name) == 254 and name[-1] != "." or not name.isascii():
        return False
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    for label in labels:
        if not 0 < len(label) <= 63 or label[0] == "-" or label[-1] == "-" or not _LABEL_CHARS.issuperset(label):
            return False
    return not name.replace(".", "").isdigit()


# --------------------------------------------------------------------------------------------------
# Go time.Time JSON form: RFC 3339 with up to nine fraction digits, trailing zeros dropped.

_RFC3339 = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$")


def join_host_port(host: str, port: int) -> str:
    """Go's net.JoinHostPort: IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def os_error_text(exc: OSError) -> str:
    """An OS error as Go's syscall.Errno prints it: `connection refused`, lower case."""
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def resolver_suffix() -> str:
    """Go names the DNS server in lookup errors (` on 127.0.0.11:53`); so do we, when we know it."""
    try:
        with open("/etc/resolv.conf") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    return f" on {join_host_port(parts[1], 53)}"
    except OSError:
        pass
    return ""


def parse_rfc3339(text: str) -> float:
    """Unix seconds of an RFC 3339 time with 0-9 fraction digits and any offset."""
    m = _RFC3339.match(text)
    if not m:
        raise ValueError(f'parsing time "{text}" as RFC 3339: cannot parse')
    whole = text[:19]  # date and time of day: tasks scheduled in the same second share it
    base = _bases.get(whole)
    if base is None:
        year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
        base = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc).timestamp()
        if len(_bases) >= 64:
            _bases.clear()
        _bases[whole] = base
    frac = int((m.group(7) or "0").ljust(9, "0")) / 1e9
    zone = m.group(8)
    offset = 0 if zone in ("Z", "z") else (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60) * (1 if zone[0] == "+" else -1)
    return base + frac - offset


_bases: dict[str, float] = {}  # `YYYY-MM-DDTHH:MM:SS` -> its unix seconds as UTC
_last_second: tuple[int, str] = (-1 << 70, "")  # the last second formatted, and its text


def format_rfc3339(unix_ns: int) -> str:
    """Go's time.Time MarshalJSON form for a UTC instant: `2025-06-01T12:00:00.1301234Z`."""
    global _last_second
    seconds, frac = divmod(unix_ns, 1_000_000_000)
    last = _last_second  # (seconds, text): a result's start and end, and results close in time, share it
    if last[0] == seconds:
        text = last[1]
    else:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _last_second = (seconds, text)
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def go_duration(ns: int) -> str:
    """Go's time.Duration.String(): `850ns`, `12.5µs`, `1.5ms`, `2.5s`, `1m30s`, `1h0m0s`."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_fraction(ns, 3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_fraction(ns, 6)}ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    text = f"{hours}h" if hours else ""
    if hours or minutes:
        text += f"{minutes}m"
    return f"{sign}{text}{_fraction(rest, 9)}s"


def _fraction(value: int, digits: int) -> str:
    whole, part = divmod(value, 10 ** digits)
    tail = f"{part:0{digits}d}".rstrip("0")
    return f"{whole}.{tail}" if tail else str(whole)


_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
                   "m": 60_000_000_000, "h": 3_600_000_000_000}
_DURATION_NUMBER = re.compile(r"([0-9]*)(\.([0-9]*))?")
_DURATION_UNIT = re.compile(r"[^.0-9]*")


def go_parse_duration(text: str) -> int:
    """Go's time.ParseDuration, in nanoseconds; ValueError with Go's text."""
    invalid = ValueError(f"time: invalid duration {go_quote_bytes(text)}")
    rest = text[1:] if text[:1] in ("-", "+") else text
    if rest == "0":
        return 0
    if not rest:
        raise invalid
    total = 0
    while rest:
        if not (rest[0] == "." or "0" <= rest[0] <= "9"):
            raise invalid
        number = _DURATION_NUMBER.match(rest)
        whole, fraction = number.group(1), number.group(3) or ""
        if not whole and not fraction:
            raise invalid
        rest = rest[number.end():]
        unit = _DURATION_UNIT.match(rest).group()
        if not unit:
            raise ValueError(f"time: missing unit in duration {go_quote_bytes(text)}")
        if unit not in _DURATION_UNITS:
            raise ValueError(f"time: unknown unit {go_quote_bytes(unit)} in duration {go_quote_bytes(text)}")
        rest = rest[len(unit):]
        scale = _DURATION_UNITS[unit]
        total += int(whole or 0) * scale + int(fraction or 0) * scale // 10 ** len(fraction)
        if total > 1 << 63:
            raise invalid
    return -total if text[:1] == "-" else total


# --------------------------------------------------------------------------------------------------
# strconv.Quote / fmt's %q, and textproto's header names

_QUOTE_ESCAPES = {'"': '\\"', "\\": "\\\\", "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n",
                  "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def go_quote_bytes(raw: bytes | str, limit: int | None = None) -> str:
    """Go's %q (%.<limit>q: the first `limit` characters) of a Go string, i.e. of bytes: invalid UTF-8
    as \\xNN, non-printable characters escaped. A str stands for its UTF-8 bytes, with surrogateescape
    code points (U+DC80-U+DCFF) for the bytes that were not UTF-8."""
    text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
    out = []
    for ch in text[:limit]:
        o = ord(ch)
        if ch in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[ch])
        elif 0xDC80 <= o <= 0xDCFF or o < 0x20 or o == 0x7F:
            out.append(f"\\x{o & 0xFF:02x}")
        elif o > 0x7F and not ch.isprintable():
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


def canonical_key(name: str) -> str:
    """textproto.CanonicalMIMEHeaderKey: `x-custom-header` -> `X-Custom-Header`; invalid names unchanged."""
    if not _TOKEN.match(name):
        return name
    out, upper = [], True
    for ch in name:
        out.append(ch.upper() if upper else ch.lower())
        upper = ch == "-"
    return "".join(out)


def literal_address(host: str, port: int) -> list | None:
    """getaddrinfo's answer for an IP literal, computed without the resolver thread pool."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        address = (host, port) if family == socket.AF_INET else (host, port, 0, 0)
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address)]
    return None
