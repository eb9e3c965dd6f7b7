"""gRPC target syntax for the grpc-keyword executor: grpc-go's name resolution schemes (dns, ipv4/ipv6,
unix, passthrough) and host:port, with grpc-go's default port."""

from __future__ import annotations

import re
from dataclasses import dataclass

from executors._kit.gotext import join_host_port


@dataclass
class Target:
    host: str
    port: int
    path: str | None = None  # a unix socket
    authority: str = ""


_HOST_PORT = re.compile(r"^(?:\[([^\]]*)\]|([^:\[\]]*))(?::([^:]*))?$")


def parse_target(url: str) -> Target:
    """gRPC name syntax (dns, ipv4/ipv6, unix, passthrough schemes; host:port); ValueError otherwise."""
    if not url:
        raise ValueError("empty target")
    rest = url
    if rest.startswith("unix:"):
        path = rest[len("unix://"):] if rest.startswith("unix://") else rest[len("unix:"):]
        if not path:
            raise ValueError(f'missing socket path in target "{url}"')
        return Target("localhost", 0, path, "localhost")
    if rest.startswith(("ipv4:", "ipv6:")):
        rest = rest[5:].split(",", 1)[0]
    elif "://" in rest:  # scheme://authority/endpoint
        scheme, _, after = rest.partition("://")
        if scheme not in ("dns", "passthrough"):
            raise ValueError(f'unsupported scheme "{scheme}" in target "{url}" (use host:port)')
        rest = after.partition("/")[2]
    found = _HOST_PORT.match(rest)
    if not found:
        raise ValueError(f'target "{url}" is not host:port')
    host = found.group(1) if found.group(1) is not None else found.group(2)
    port_text = found.group(3)
    if port_text is None or port_text == "":
        port = 443  # grpc-go's default port
    elif port_text.isdigit() and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise ValueError(f'invalid port "{port_text}" in target "{url}"')
    host = host or "localhost"
    return Target(host, port, None, join_host_port(host, port))
