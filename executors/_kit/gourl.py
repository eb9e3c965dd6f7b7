"""Go's net/url for the connection strings of the database executors (postgres, sqlserver, redis).

`parse` is url.Parse: the URL's parts, or `URLError` with Go's reason (`invalid port ":x" after host`,
`invalid URL escape "%zz"`, `net/url: invalid userinfo`, ...); `URLError.message` is the whole
`parse "<URL>": <reason>` text with the URL's password replaced (`redact`, as URL.Redacted shows
it), since that text ends up in a monitor's message. `URL.hostname_port` is URL.Hostname/Port,
`query_values` url.ParseQuery, `unescape` url.PathUnescape/QueryUnescape.

The HTTP client has its own URL (executors/_kit/http1.py: request targets, IDNA, a parse cache).
"""

from __future__ import annotations

from dataclasses import dataclass

from executors._kit.gotext import go_quote_bytes

MASK = "xxxxx"  # what URL.Redacted shows for a password
_USERINFO_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:~!$&'()*+,;=%@")
_HOST_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!$&'()*+,;=:[]<>\"")
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(slots=True)
class URL:
    """Go's url.URL, the parts a connection string uses."""
    scheme: str = ""  # lower case
    host: str = ""  # host[:port] as written (brackets kept), unescaped
    user: str | None = None  # None: no user info
    password: str | None = None  # None: no ':' in the user info
    path: str = ""  # unescaped
    query: str = ""  # raw (RawQuery)

    def hostname_port(self) -> tuple[str, str]:
        """url.URL.Hostname() and Port()."""
        return split_host_port(self.host)


class URLError(ValueError):
    """url.Parse's *url.Error. str() is Go's reason; `text` is the URL Go quotes (the part before `#`,
    or all of it when the fragment is at fault) and `part` where the fault is (host, user, password,
    path, fragment; "" for the rest)."""

    def __init__(self, text: str, reason: str, part: str = "") -> None:
        super().__init__(reason)
        self.text, self.reason, self.part = text, reason, part

    def message(self, mask: str = MASK, reason: str | None = None) -> str:
        """`parse "<URL, password replaced by mask>": <reason>` (another reason may be given)."""
        return f"parse {go_quote_bytes(redact(self.text, mask))}: {self.reason if reason is None else reason}"


def parse(raw: str, errors: str = "replace") -> URL:
    """Go's url.Parse; URLError on failure. `errors` says how escaped bytes that are not UTF-8 are
    decoded: "replace" (U+FFFD) or "surrogateescape" (kept, as Go keeps them)."""
    before, _, fragment = raw.partition("#")
    url = URL()
    rest = before
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in rest):
        raise URLError(before, "net/url: invalid control character in URL")
    for i, c in enumerate(rest):  # getScheme
        if c.isascii() and c.isalpha():
            continue
        if c.isascii() and c.isdigit() or c in "+-.":
            if i == 0:
                break
            continue
        if c == ":":
            if i == 0:
                raise URLError(before, "missing protocol scheme")
            url.scheme, rest = rest[:i].lower(), rest[i + 1:]
        break
    if rest.endswith("?") and rest.count("?") == 1:
        rest = rest[:-1]
    else:
        rest, _, url.query = rest.partition("?")
    opaque = not rest.startswith("/") and bool(url.scheme)  # a rootless path: no host, no path
    if not rest.startswith("/") and not url.scheme and ":" in rest.partition("/")[0]:
        raise URLError(before, "first path segment in URL cannot contain colon")
    if not opaque and rest.startswith("//") and (url.scheme or not rest.startswith("///")):
        authority, slash, tail = rest[2:].partition("/")
        rest = slash + tail
        userinfo, at, hostport = authority.rpartition("@")
        url.host = _part(before, "host", _check_host(before, hostport), errors, host=True)
        if at:
            if not _USERINFO_OK.issuperset(userinfo):
                raise URLError(before, "net/url: invalid userinfo")
            name, colon, password = userinfo.partition(":")
            url.user = _part(before, "user", name, errors)
            url.password = _part(before, "password", password, errors) if colon else None
    if not opaque:
        url.path = _part(before, "path", rest, errors)
    _part(raw, "fragment", fragment, errors)  # Go quotes the whole string here, fragment included
    return url


def _part(text: str, part: str, value: str, errors: str, host: bool = False) -> str:
    try:
        return unescape(value, host=host, errors=errors)
    except ValueError as exc:
        raise URLError(text, str(exc), part) from None


def _check_host(text: str, hostport: str) -> str:
    """parseHost's port checks."""
    if hostport.startswith("["):
        end = hostport.rfind("]")
        if end < 0:
            raise URLError(text, "missing ']' in host", "host")
        colon_port = hostport[end + 1:]
    else:
        colon = hostport.rfind(":")
        colon_port = hostport[colon:] if colon >= 0 else ""
    if not _valid_optional_port(colon_port):
        raise URLError(text, f"invalid port {go_quote_bytes(colon_port)} after host", "host")
    return hostport


def _valid_optional_port(text: str) -> bool:
    return text == "" or text[0] == ":" and all("0" <= c <= "9" for c in text[1:])


def unescape(text: str, host: bool = False, plus: bool = False, errors: str = "replace") -> str:
    """Go's url unescape: %XX escapes (UTF-8), `+` as a space in a query component (`plus`), the host
    characters Go refuses (`host`); ValueError with Go's text."""
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == "%":
            if i + 2 >= len(text) or text[i + 1] not in _HEX or text[i + 2] not in _HEX:
                raise ValueError(f"invalid URL escape {go_quote_bytes(text[i:i + 3])}")
            if host and int(text[i + 1], 16) < 8 and text[i:i + 3] != "%25":
                raise ValueError(f"invalid URL escape {go_quote_bytes(text[i:i + 3])}")
            out.append(int(text[i + 1:i + 3], 16))
            i += 3
            continue
        if host and c.isascii() and c not in _HOST_OK:
            raise ValueError(f"invalid character {go_quote_bytes(c)} in host name")
        out += b" " if plus and c == "+" else c.encode("utf-8", "surrogatepass")
        i += 1
    return out.decode("utf-8", errors)


def split_host_port(hostport: str) -> tuple[str, str]:
    """url.URL's Hostname() and Port() of a host[:port]."""
    host, port = hostport, ""
    colon = hostport.rfind(":")
    if colon >= 0 and _valid_optional_port(hostport[colon:]):
        host, port = hostport[:colon], hostport[colon + 1:]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def query_values(query: str) -> dict[str, str]:
    """url.ParseQuery's first value per key (pairs with `;` or a bad escape are skipped, as Go does)."""
    values: dict[str, str] = {}
    for pair in query.split("&"):
        if not pair or ";" in pair:
            continue
        key, _, value = pair.partition("=")
        try:
            key, value = unescape(key, plus=True), unescape(value, plus=True)
        except ValueError:
            continue
        values.setdefault(key, value)
    return values


def redact(raw: str, mask: str = MASK) -> str:
    """The URL with the password of its user info replaced by `mask`, as URL.Redacted shows it. The
    user info runs from `//` to the last `@` of the authority (which ends at the first `/`, `?` or `#`)."""
    head, sep, rest = raw.partition("//")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, _ = rest[:end].rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return raw
    return f"{head}//{userinfo.partition(':')[0]}:{mask}@{rest[len(userinfo) + 1:]}"
