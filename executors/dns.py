"""`dns`: ask one DNS server (resolver_server:port) for one record type of `host`; UP when it has some.

Only that server is asked: no /etc/hosts, no search domains, no resolv.conf options. Go's stub
resolver applies all three, so a Go monitor could pass while the server under test is broken, and
its errors name the resolv.conf server. Every query goes over UDP with EDNS0 (1232-byte payload, as
Go's resolver) and is asked again over TCP when the answer comes back truncated, for all ten types.
A silent server gets the query again every min(5 s, timeout / 2) until the budget ends; the whole
check, TCP fallback and retries included, ends within the budget.

Messages are built with dnspython's message API; the exchange itself is done here on plain
non-blocking sockets so that the end of the check is the kernel's receive timestamp of the answer,
not the moment this coroutine resumes. ping_ms runs from just before resolving resolver_server (when
it is a name) or sending the first query, to that timestamp. Phases: `resolve`, `query`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import struct
import time

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
# The rdata classes are imported by name at run time; naming them here lets the frozen binary see them.
import dns.rdtypes.ANY.CAA
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.OPT
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV

from executors import DOWN, UP, Monitor, Result, instant
from executors._kit import poll as _poll
from executors._kit import timing as _timing
from executors._kit.gojson import decode_config
from executors._kit.gotext import go_quote_bytes, is_domain_name, join_host_port, os_error_text, resolver_suffix

SCHEMA = {"host": str, "resolver_server": str, "port": int, "resolve_type": str}  # Go's DNSConfig
FIELDS = {
    "host": "name to look up (an IP address for PTR; _service._proto.name for SRV)",
    "resolver_server": "IP address (or name) of the DNS server to ask; the only server asked",
    "port": "DNS server port, 1-65535 (53 usually)",
    "resolve_type": "A AAAA CAA CNAME MX NS PTR SOA SRV TXT (any letter case)",
}
SUMMARY = "ask one DNS server for one record type of a name; UP when it answers with such records"
EXAMPLES = {"dns": ({"host": "example.com", "resolver_server": "1.1.1.1", "port": 53, "resolve_type": "A"}, "UP",
                    "when 1.1.1.1 answers with A records for example.com")}

EDNS_PAYLOAD = 1232  # the UDP answer size offered, as Go's resolver (DNS flag day 2020)
RETRY_EVERY = 5.0  # seconds of silence before a UDP query is sent again (resolv.conf's default timeout)
MALFORMED = "DNS response contained records which contain invalid names"  # Go's errMalformedDNSRecordsDetail
_IN = dns.rdataclass.IN
_T = dns.rdatatype


class _Failure(Exception):
    """The lookup failed; str(exc) follows `DNS lookup failed: `."""


class _NoRecords(Exception):
    """The server answered without error but with no usable record of the type."""


async def check(monitor: Monitor, proxy: dict | None, budget: float) -> Result:
    cfg = decode_config(monitor.config, SCHEMA, "DNSConfig")
    host, resolve_type = cfg["host"], cfg["resolve_type"]
    lookup = _LOOKUPS.get(resolve_type.upper())
    if lookup is None:
        return instant(DOWN, f"DNS lookup failed: unsupported record type: {resolve_type}")
    budget = max(budget, 0.001)
    asker = _Asker(host, cfg["resolver_server"], cfg["port"], budget)
    start = time.time_ns()
    try:
        async with asyncio.timeout(budget):
            message = await lookup(asker, host)
    except _Failure as exc:
        return asker.result(DOWN, f"DNS lookup failed: {exc}", start)
    except _NoRecords:
        return asker.result(DOWN, f"No {resolve_type} records found for {host}", start)
    except (asyncio.TimeoutError, TimeoutError):
        asker.last_answer_ns = 0
        return asker.result(DOWN, f"DNS lookup failed: {asker.error('i/o timeout')}", start)
    return asker.result(UP, message, start)


# --------------------------------------------------------------------------------------------------
# One lookup per record type: each returns the UP message or raises _Failure / _NoRecords.

def _records(response: dns.message.Message, rdtype: int) -> list:
    """Every rdata of `rdtype` in the answer section, whatever its owner (as Go's resolver reads it)."""
    return [rd for rrset in response.answer if rrset.rdtype == rdtype and rrset.rdclass == _IN for rd in rrset]


def _ip_literal(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address as Go's parsers take it (an IPv6 zone is accepted and dropped; a v4-mapped v6
    address counts as IPv4), or None."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0] if ":" in text else text)
    except ValueError:
        return None
    return ip.ipv4_mapped or ip if ip.version == 6 else ip


async def _addresses(asker: "_Asker", host: str, rdtype: int) -> str:
    label, version = ("A", 4) if rdtype == _T.A else ("AAAA", 6)
    literal = _ip_literal(host)
    if literal is not None:  # Go answers an address with itself, without asking
        if literal.version != version:
            raise _Failure(f"address {host}: no suitable address found")
        return f"{label} records: {literal}"
    response = await asker.ask(host, rdtype)
    found = [ipaddress.ip_address(rd.address) for rd in _records(response, rdtype)]
    usable = [ip for ip in found if not (ip.version == 6 and ip.ipv4_mapped)]  # Go drops v4-mapped AAAA
    if found and not usable:
        raise _Failure(f"address {host}: no suitable address found")
    if not usable:
        raise _NoRecords
    return f"{label} records: {', '.join(str(ip) for ip in usable)}"


async def _a(asker: "_Asker", host: str) -> str:
    return await _addresses(asker, host, _T.A)


async def _aaaa(asker: "_Asker", host: str) -> str:
    return await _addresses(asker, host, _T.AAAA)


async def _cname(asker: "_Asker", host: str) -> str:
    """The target of host's own CNAME record (the first hop of a chain, as Go's resolver reports it);
    host itself when it has no CNAME but has addresses."""
    for rdtype in (_T.CNAME, _T.A, _T.AAAA):
        response = await asker.ask(host, rdtype)
        for rrset in response.answer:
            if rrset.rdclass != _IN:
                continue
            if rrset.rdtype == _T.CNAME:
                return f"CNAME: {asker.valid_name(rrset[0].target.to_text())}"
            if rrset.rdtype == rdtype:
                return f"CNAME: {asker.valid_name(rrset.name.to_text())}"
    raise _NoRecords


async def _mx(asker: "_Asker", host: str) -> str:
    # by preference; equal preferences keep the server's order (Go shuffles them)
    records = sorted(_records(await asker.ask(host, _T.MX), _T.MX), key=lambda rd: rd.preference)
    if not records:
        raise _NoRecords
    items = [f"{asker.valid_name(rd.exchange.to_text())} (priority: {rd.preference})" for rd in records]
    return f"MX records: {', '.join(items)}"


async def _ns(asker: "_Asker", host: str) -> str:
    records = _records(await asker.ask(host, _T.NS), _T.NS)
    if not records:
        raise _NoRecords
    return f"NS records: {', '.join(asker.valid_name(rd.target.to_text()) for rd in records)}"


async def _txt(asker: "_Asker", host: str) -> str:
    records = _records(await asker.ask(host, _T.TXT), _T.TXT)
    if not records:
        raise _NoRecords
    # the character-strings of one record are joined without a separator, as Go does
    return f"TXT records: {'; '.join(_go_string(b''.join(rd.strings)) for rd in records)}"


async def _ptr(asker: "_Asker", host: str) -> str:
    ip = _ip_literal(host)
    if ip is None:
        raise _Failure(f"lookup {host}: unrecognized address")
    reverse = dns.reversename.from_address(str(ip)).to_text()
    records = _records(await asker.ask(reverse, _T.PTR, reverse), _T.PTR)
    if not records:
        raise _NoRecords
    return f"PTR records: {', '.join(asker.valid_name(rd.target.to_text()) for rd in records)}"


async def _srv(asker: "_Asker", host: str) -> str:
    response = await asker.ask(host, _T.SRV)
    owner = next((rrset.name.to_text() for rrset in response.answer if rrset.rdtype == _T.SRV), "")
    # by priority, then the heavier weight first; ties keep the server's order (Go shuffles by weight)
    records = sorted(_records(response, _T.SRV), key=lambda rd: (rd.priority, -rd.weight))
    if not records:
        raise _NoRecords
    asker.valid_name(owner)
    items = [f"{asker.valid_name(rd.target.to_text())}:{rd.port} (priority: {rd.priority}, weight: {rd.weight})"
             for rd in records]
    return f"SRV records (cname: {owner}): {', '.join(items)}"


async def _caa(asker: "_Asker", host: str) -> str:
    records = _records(await asker.ask(host, _T.CAA), _T.CAA)
    if not records:
        raise _NoRecords
    items = [f"{rd.flags} {_go_string(rd.tag)} {go_quote_bytes(rd.value)}" for rd in records]
    return f"CAA records: {'; '.join(items)}"


async def _soa(asker: "_Asker", host: str) -> str:
    records = _records(await asker.ask(host, _T.SOA), _T.SOA)  # only the answer section: not the authority's
    if not records:
        raise _NoRecords
    rd = records[0]
    return (f"SOA: Primary NS: {rd.mname.to_text()}, Admin: {rd.rname.to_text()}, Serial: {rd.serial}, "
            f"Refresh: {rd.refresh}, Retry: {rd.retry}, Expire: {rd.expire}, Min TTL: {rd.minimum}")


_LOOKUPS = {"A": _a, "AAAA": _aaaa, "CAA": _caa, "CNAME": _cname, "MX": _mx, "NS": _ns, "PTR": _ptr, "SOA": _soa,
            "SRV": _srv, "TXT": _txt}


# --------------------------------------------------------------------------------------------------
# Go's text for raw bytes: a Go string prints them as they are (JSON then shows each invalid UTF-8
# byte as U+FFFD); %q escapes them (gotext.go_quote_bytes).

_ESCAPED = re.compile("[\udc80-\udcff]")


def _go_string(raw: bytes) -> str:
    text = raw.decode("utf-8", "surrogateescape")
    return _ESCAPED.sub("\ufffd", text) if not text.isascii() else text


# --------------------------------------------------------------------------------------------------
# The exchange with the one server.

class _Asker:
    """Queries to resolver_server:port within one budget; errors in Go's words, naming that server."""

    def __init__(self, host: str, server: str, port: int, budget: float) -> None:
        self.host, self.server, self.port = host, server, port
        self.label = join_host_port(server, port)
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + budget
        self.retry_every = min(RETRY_EVERY, budget / 2)
        self.target: tuple[int, tuple] | None = None  # (family, socket address)
        self.timings: dict[str, float] = {}
        self.query_start_ns = 0
        self.last_answer_ns = 0  # kernel receive time of the latest answer

    def error(self, reason: str, name: str | None = None) -> str:
        return f"lookup {self.host if name is None else name} on {self.label}: {reason}"

    def valid_name(self, name: str) -> str:
        """`name`, or the failure Go reports for a record naming something that is not a host name."""
        if not is_domain_name(name):
            raise _Failure(self.error(MALFORMED))
        return name

    def result(self, status: int, message: str, start: int) -> Result:
        end = self.last_answer_ns or time.time_ns()
        end = max(end, start)
        if self.query_start_ns:
            self.timings["query"] = round((end - self.query_start_ns) / 1e6, 3)
        return Result(status, message, start, end, timings=self.timings)

    def remaining(self) -> float:
        return self.deadline - self.loop.time()

    async def ask(self, name: str, rdtype: int, name_in_errors: str | None = None) -> dns.message.Message:
        """The answer to one question, with NOERROR; NXDOMAIN and error codes raise _Failure. A SERVFAIL
        is asked once more (a resolver's upstream may have failed for a moment), as Go's resolver does."""
        if not is_domain_name(name):  # Go answers this without asking
            raise _Failure(f"lookup {name if name_in_errors is None else name_in_errors}: no such host")
        family, address = await self._target()
        query = dns.message.make_query(dns.name.from_text(name), rdtype, use_edns=0, payload=EDNS_PAYLOAD)
        wire = query.to_wire()
        if not self.query_start_ns:
            self.query_start_ns = time.time_ns()
        for attempt in range(2):
            response = await self._udp(family, address, query, wire)
            if response.flags & dns.flags.TC:
                response = await self._tcp(family, address, query, wire)
            rcode = response.rcode()
            if rcode == dns.rcode.SERVFAIL and attempt == 0 and self.remaining() > 0:
                continue
            break
        if rcode == dns.rcode.NXDOMAIN:
            raise _Failure(self.error("no such host", name_in_errors))
        if rcode != dns.rcode.NOERROR:
            raise _Failure(self.error("server misbehaving", name_in_errors))
        if not response.answer and not response.flags & (dns.flags.AA | dns.flags.RA):
            raise _Failure(self.error("lame referral", name_in_errors))  # neither authoritative nor a resolver
        return response

    async def _target(self) -> tuple[int, tuple]:
        """The server's socket address; a name is resolved once by the system resolver (as Go's dialer)."""
        if self.target is not None:
            return self.target
        server, port = self.server, self.port
        if not server:
            raise _Failure(self.error("dial udp: missing address"))
        if not 0 < port <= 65535:
            raise _Failure(self.error(f"dial udp: address {port}: invalid port"))
        try:
            infos = socket.getaddrinfo(server, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)
        except (socket.gaierror, UnicodeError, ValueError):
            infos = None
        if infos is None:
            if not is_domain_name(server):
                raise _Failure(self.error(f"dial udp: lookup {server}: no such host"))
            began = time.time_ns()
            try:
                async with asyncio.timeout(max(self.remaining(), 0.001)):
                    infos = await self.loop.getaddrinfo(server, port, type=socket.SOCK_DGRAM)
            except (socket.gaierror, UnicodeError, OSError):
                raise _Failure(self.error(f"dial udp: lookup {server}{resolver_suffix()}: no such host")) from None
            finally:
                self.timings["resolve"] = round((time.time_ns() - began) / 1e6, 3)
        family, _, _, _, address = infos[0]
        self.target = (family, address)
        return self.target

    async def _udp(self, family: int, address: tuple, query: dns.message.Message, wire: bytes) -> dns.message.Message:
        """Send over UDP until a matching answer arrives (datagrams that are not one are ignored, as Go
        does against forgery) or the budget ends."""
        self.last_answer_ns = 0
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        fd = sock.fileno()
        poll = _poll.poller(self.loop)
        answer: asyncio.Future = self.loop.create_future()
        remote = join_host_port(address[0], address[1])
        try:
            _timing.rx_stamps_on(sock)
            try:
                sock.connect(address)  # a connected socket hears ICMP port-unreachable as ECONNREFUSED
            except OSError as exc:
                raise _Failure(self.error(f"dial udp {remote}: connect: {os_error_text(exc)}")) from None
            local = join_host_port(*sock.getsockname()[:2])

            def readable(_: int) -> None:
                while not answer.done():
                    try:
                        data, ancillary, _, _ = sock.recvmsg(65535, _timing.ANCILLARY)
                    except (BlockingIOError, InterruptedError):
                        return
                    except OSError as exc:
                        answer.set_exception(_Failure(self.error(
                            f"read udp {local}->{remote}: read: {os_error_text(exc)}")))
                        return
                    response = _parse(data, query)
                    if response is not None:
                        answer.set_result((response, _timing.rx_stamp(ancillary) or time.time_ns()))

            poll.watch(fd, _poll.IN, readable)
            while not answer.done():
                remaining = self.remaining()
                if remaining <= 0:
                    raise _Failure(self.error("i/o timeout"))
                try:
                    sock.send(wire)
                except (BlockingIOError, InterruptedError):
                    pass  # a full send buffer loses the datagram like the network would; sent again later
                except OSError as exc:
                    raise _Failure(self.error(f"write udp {local}->{remote}: write: {os_error_text(exc)}")) from None
                await asyncio.wait((answer,), timeout=min(self.retry_every, remaining))
            response, self.last_answer_ns = answer.result()
            return response
        finally:
            poll.forget(fd)
            sock.close()
            if not answer.done():
                answer.cancel()

    async def _tcp(self, family: int, address: tuple, query: dns.message.Message, wire: bytes) -> dns.message.Message:
        """The same question over TCP (the UDP answer was truncated), within what is left of the budget."""
        self.last_answer_ns = 0
        remote = join_host_port(address[0], address[1])
        framed = struct.pack("!H", len(wire)) + wire
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        fd = sock.fileno()
        poll = _poll.poller(self.loop)
        answer: asyncio.Future = self.loop.create_future()
        try:
            _timing.rx_stamps_on(sock)
            try:
                async with asyncio.timeout(max(self.remaining(), 0.001)):
                    _, sent, _ = await _timing.connect(self.loop, sock, address, framed)
                    if sent < len(framed):
                        await self.loop.sock_sendall(sock, framed[sent:])
            except OSError as exc:
                raise _Failure(self.error(f"dial tcp {remote}: connect: {os_error_text(exc)}")) from None
            except (asyncio.TimeoutError, TimeoutError):
                raise _Failure(self.error("i/o timeout")) from None
            local = join_host_port(*sock.getsockname()[:2])
            received = bytearray()

            def readable(_: int) -> None:
                while not answer.done():
                    try:
                        data, ancillary, _, _ = sock.recvmsg(65537, _timing.ANCILLARY)
                    except (BlockingIOError, InterruptedError):
                        return
                    except OSError as exc:
                        answer.set_exception(_Failure(self.error(f"read tcp {local}->{remote}: read: {os_error_text(exc)}")))
                        return
                    if not data:
                        answer.set_exception(_Failure(self.error("unexpected EOF" if received else "EOF")))
                        return
                    received.extend(data)
                    if len(received) >= 2 and len(received) >= 2 + (size := struct.unpack_from("!H", received)[0]):
                        answer.set_result((bytes(received[2:2 + size]),
                                           _timing.rx_stamp(ancillary) or time.time_ns()))

            poll.watch(fd, _poll.IN, readable)
            await asyncio.wait((answer,), timeout=max(self.remaining(), 0))
            if not answer.done():
                raise _Failure(self.error("i/o timeout"))
            data, stamp = answer.result()
            try:
                response = dns.message.from_wire(data, ignore_trailing=True)
            except Exception:  # any malformed answer: dnspython raises many kinds
                raise _Failure(self.error("cannot unmarshal DNS message")) from None
            if not query.is_response(response):
                raise _Failure(self.error("invalid DNS response"))
            self.last_answer_ns = stamp
            return response
        finally:
            poll.forget(fd)
            sock.close()
            if not answer.done():
                answer.cancel()


def _parse(data: bytes, query: dns.message.Message) -> dns.message.Message | None:
    """The answer to `query` in one datagram, or None (malformed, another ID or question)."""
    try:
        response = dns.message.from_wire(data, ignore_trailing=True)
        return response if query.is_response(response) else None
    except Exception:  # dns.exception.DNSException, ValueError, struct.error...: not an answer
        return None
