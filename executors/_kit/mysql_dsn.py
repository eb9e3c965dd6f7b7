"""The DSN options of the mysql executor: go-sql-driver/mysql's parseDSNParams and normalize over the
raw query of a `mysql://` URL, with Go's texts for the first bad option.

Options Go would send to the server as `SET key=value` are checked here but not sent (see
executors/mysql.py).
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass, field

from executors._kit import gourl
from executors._kit.gotext import go_parse_duration
from executors._kit.http1 import go_quote

_BOOLS = {"1": True, "true": True, "TRUE": True, "True": True, "0": False, "false": False, "FALSE": False,
          "False": False}
_BOOL_OPTIONS = {"allowCleartextPasswords": "allow_cleartext", "allowFallbackToPlaintext": "fallback_to_plaintext",
                 "allowNativePasswords": "allow_native", "allowOldPasswords": "allow_old",
                 "multiStatements": "multi_statements", "interpolateParams": "interpolate",
                 # checked as Go checks them; no effect on a health check
                 "allowAllFiles": "", "checkConnLiveness": "", "clientFoundRows": "", "columnsWithAlias": "",
                 "compress": "", "parseTime": "", "rejectReadOnly": ""}
_UNESCAPED_OPTIONS = {"tls": "invalid value for TLS config name: ", "loc": "",
                      "serverPubKey": "invalid value for server pub key name: ",
                      "connectionAttributes": "invalid connectionAttributes value: "}
_UNSAFE_COLLATIONS = {"big5_chinese_ci", "sjis_japanese_ci", "gbk_chinese_ci", "big5_bin", "gb2312_bin", "gbk_bin",
                      "sjis_bin", "cp932_japanese_ci", "cp932_bin", "gb18030_chinese_ci", "gb18030_bin",
                      "gb18030_unicode_520_ci"}


@dataclass(slots=True)
class Options:
    tls: str = ""  # "", "true", "skip-verify", "preferred"
    fallback_to_plaintext: bool = False
    dial_timeout: float = 0.0  # seconds; 0: none beyond the check's budget
    read_timeout: float = 0.0
    charsets: list[str] = field(default_factory=list)
    collation: str = ""
    allow_cleartext: bool = False
    allow_native: bool = True
    allow_old: bool = False
    multi_statements: bool = False
    interpolate: bool = False


def parse_options(raw_query: str) -> Options:
    """The options of the URL's raw query as Go's driver reads them (parseDSNParams, then normalize);
    ValueError with Go's text for the first bad one."""
    o = Options()
    tls_name = pub_key = ""
    for item in raw_query.split("&"):
        key, found, value = item.partition("=")
        if not found:
            continue
        if key in _BOOL_OPTIONS:
            if value not in _BOOLS:
                raise ValueError(f"invalid bool value: {value}")
            if _BOOL_OPTIONS[key]:
                setattr(o, _BOOL_OPTIONS[key], _BOOLS[value])
        elif key == "tls" and (value in _BOOLS or value.lower() in ("skip-verify", "preferred")):
            tls_name = {True: "true", False: "false"}.get(_BOOLS.get(value), value.lower())
        elif key in _UNESCAPED_OPTIONS:
            text = _query_unescape(value, _UNESCAPED_OPTIONS[key])
            if key == "tls":
                tls_name = text
            elif key == "loc":
                _check_location(text)
            elif key == "serverPubKey":
                pub_key = text
        elif key == "charset":
            o.charsets = value.split(",")
        elif key == "collation":
            o.collation = value
        elif key in ("timeout", "readTimeout", "writeTimeout"):
            seconds = max(go_parse_duration(value), 0) / 1e9  # Go: zero or less is no timeout
            o.dial_timeout = seconds if key == "timeout" else o.dial_timeout
            o.read_timeout = seconds if key == "readTimeout" else o.read_timeout
        elif key == "timeTruncate":
            try:
                go_parse_duration(value)
            except ValueError as exc:
                raise ValueError(f"invalid timeTruncate value: {value}, error: {exc}") from None
        elif key == "maxAllowedPacket":
            if not re.fullmatch(r"[+-]?[0-9]+", value):
                raise ValueError(f"strconv.Atoi: parsing {go_quote(value)}: invalid syntax")
            if not -(1 << 63) <= int(value) < 1 << 63:
                raise ValueError(f"strconv.Atoi: parsing {go_quote(value)}: value out of range")
        elif key == "strict":
            raise ValueError("strict mode has been removed. "
                             "See https://github.com/go-sql-driver/mysql/wiki/strict-mode")  # Go panics here
        else:  # Go sends these to the server as `SET key=value`; here they are only checked
            _query_unescape(value)
    if o.interpolate and o.collation in _UNSAFE_COLLATIONS:
        raise ValueError("invalid DSN: interpolateParams can not be used with unsafe collations")
    if tls_name not in ("", "false", "true", "skip-verify", "preferred"):
        raise ValueError(f"invalid value / unknown config name: {tls_name}")
    o.tls = "" if tls_name == "false" else tls_name
    o.fallback_to_plaintext = o.fallback_to_plaintext or tls_name == "preferred"
    if pub_key:  # no key can be registered with this worker (Go: RegisterServerPubKey)
        raise ValueError(f"invalid value / unknown server pub key name: {pub_key}")
    return o


def _query_unescape(value: str, prefix: str = "") -> str:
    """Go's url.QueryUnescape ('+' is a space); ValueError(prefix + Go's text) on a bad escape."""
    try:
        return gourl.unescape(value, plus=True)
    except ValueError as exc:
        raise ValueError(f"{prefix}{exc}") from None


def _check_location(name: str) -> None:
    if name in ("", "UTC", "Local"):
        return
    if ".." in name or name[0] in "/\\":
        raise ValueError("time: invalid location name")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name}") from None
