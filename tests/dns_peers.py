"""DNS peers for the dns executor's tests: a private `nsd` (Debian's authoritative server) serving a
test zone on 127.0.0.1 and ::1, and small Python servers that misbehave on purpose (never answer,
answer SERVFAIL/REFUSED, refer elsewhere, or truncate every UDP answer so only TCP carries it).

The Python servers answer from the same zone text as nsd (parsed with dnspython), so an answer seen
through TCP fallback can be compared with nsd's.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.zone

from conftest import stop_process, wait_ready

ZONE = "peek.test"
# Thirty 150-byte TXT records: about 4.7 kB, far past the 1232-byte EDNS size the executor asks for.
BIG_TXT = [f"chunk{i:02d}-" + "x" * 142 for i in range(30)]

ZONE_TEXT = f"""$ORIGIN {ZONE}.
$TTL 300
@          SOA   ns1.peek.test. hostmaster.peek.test. 2024010101 3600 600 86400 300
@          NS    ns1.peek.test.
@          NS    ns2.peek.test.
@          MX    20 backup.peek.test.
@          MX    10 mail.peek.test.
@          CAA   0 issue "letsencrypt.org"
@          CAA   0 iodef "mailto:sec@peek.test"
ns1        A     127.0.0.1
ns2        A     127.0.0.2
www        A     192.0.2.10
www        A     192.0.2.11
www        AAAA  2001:db8::10
www        AAAA  2001:db8:0:0:1:0:0:11
alias      CNAME www.peek.test.
chain      CNAME alias.peek.test.
dangling   CNAME gone.peek.test.
v6only     AAAA  2001:db8::6
txt        TXT   "v=spf1 -all"
txt        TXT   "part one, " "part two"
bytes      TXT   "caf\\195\\169 \\255!"
quoted     CAA   128 tbs "say \\"hi\\"\\009tab"
_sip._tcp  SRV   20 10 5061 sip2.peek.test.
_sip._tcp  SRV   10 60 5060 sip1.peek.test.
badmx      MX    10 bad\\032host.peek.test.
""" + "".join(f'big        TXT   "{chunk}"\n' for chunk in BIG_TXT)

REVERSE_V4 = "2.0.192.in-addr.arpa"
REVERSE_V4_TEXT = f"""$ORIGIN {REVERSE_V4}.
$TTL 300
@    SOA  ns1.peek.test. hostmaster.peek.test. 1 3600 600 86400 300
@    NS   ns1.peek.test.
10   PTR  www.peek.test.
10   PTR  web.peek.test.
20   TXT  "an address without a PTR record"
"""

REVERSE_V6 = "8.b.d.0.1.0.0.2.ip6.arpa"  # 2001:db8::/32
REVERSE_V6_TEXT = f"""$ORIGIN {REVERSE_V6}.
$TTL 300
@    SOA  ns1.peek.test. hostmaster.peek.test. 1 3600 600 86400 300
@    NS   ns1.peek.test.
0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0  PTR  www.peek.test.
"""

ZONES = {ZONE: ZONE_TEXT, REVERSE_V4: REVERSE_V4_TEXT, REVERSE_V6: REVERSE_V6_TEXT}


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 and ::1 (nsd binds all four)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            for family, kind, host in ((socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1"),
                                       (socket.AF_INET6, socket.SOCK_DGRAM, "::1"),
                                       (socket.AF_INET6, socket.SOCK_STREAM, "::1")):
                with socket.socket(family, kind) as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port for UDP and TCP on 127.0.0.1 and ::1")


class Nsd:
    """A private nsd instance: own config, zone files, pid file and log in a temporary directory,
    no chroot, no privilege drop, no remote control; listens on 127.0.0.1 and ::1 at a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="pw-nsd-")
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        d = self.dir
        zones = "".join(f"zone:\n    name: {name}\n    zonefile: {name}.zone\n" for name in ZONES)
        return (f"server:\n    ip-address: 127.0.0.1@{self.port}\n    ip-address: ::1@{self.port}\n"
                f"    port: {self.port}\n    username: \"\"\n    chroot: \"\"\n    zonesdir: \"{d}\"\n"
                f"    pidfile: \"{d}/nsd.pid\"\n    database: \"\"\n    xfrdfile: \"{d}/xfrd.state\"\n"
                f"    xfrdir: \"{d}\"\n    zonelistfile: \"{d}/zone.list\"\n    logfile: \"{d}/nsd.log\"\n"
                f"    server-count: 1\n    verbosity: 1\n    hide-version: yes\n    round-robin: no\n"
                f"    reuseport: no\nremote-control:\n    control-enable: no\n{zones}")

    def start(self) -> None:
        for name, text in ZONES.items():
            with open(os.path.join(self.dir, f"{name}.zone"), "w") as fh:
                fh.write(text)
        conf = os.path.join(self.dir, "nsd.conf")
        with open(conf, "w") as fh:
            fh.write(self.config())
        with open(os.path.join(self.dir, "nsd.stderr"), "wb") as stderr:  # what it says before its log is open
            self.proc = subprocess.Popen([shutil.which("nsd"), "-d", "-c", conf], stdout=subprocess.DEVNULL,
                                         stderr=stderr)
        wait_ready(lambda: all(self.answers(host) for host in ("127.0.0.1", "::1")), "nsd", 15, proc=self.proc,
                   log=self.log)

    def answers(self, host: str) -> bool:
        query = dns.message.make_query(f"www.{ZONE}.", "A")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            try:
                s.sendto(query.to_wire(), (host, self.port))
                return dns.message.from_wire(s.recv(4096)).rcode() == dns.rcode.NOERROR
            except OSError:
                return False

    def log(self) -> str:
        text = ""
        for name in ("nsd.stderr", "nsd.log"):
            try:
                with open(os.path.join(self.dir, name), errors="replace") as fh:
                    text += fh.read()[-2000:]
            except OSError:
                pass
        return text

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


def _zone_data() -> dict[tuple[dns.name.Name, int], dns.rrset.RRset]:
    """(owner, type) -> RRset for every record of ZONES."""
    data = {}
    for origin, text in ZONES.items():
        zone = dns.zone.from_text(text, origin=origin, relativize=False)
        for name, node in zone.nodes.items():
            for rdataset in node.rdatasets:
                rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype)
                rrset.update(rdataset)
                data[(name, rdataset.rdtype)] = rrset
    return data


class StubDns:
    """A misbehaving DNS server on 127.0.0.1 (UDP, and TCP for `truncate`), served by threads.

    modes: `silent` reads queries and never answers; `servfail` / `refused` answer with that code;
    `referral` answers NOERROR without AA or RA and with no answer (a lame referral);
    `truncate` answers every UDP query with TC set and nothing in it, and answers TCP from the zone;
    `tcp-silent` answers UDP as `truncate` but its TCP port accepts connections and never answers;
    `spoof` first sends an answer with the wrong ID and a wrong question, then the right one.
    `udp_queries` and `tcp_queries` record the (name, type) of every query seen.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.port = free_port()
        self.udp_queries: list[tuple[str, str]] = []
        self.tcp_queries: list[tuple[str, str]] = []
        self.data = _zone_data()
        self._stop = threading.Event()
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(("127.0.0.1", self.port))
        self._udp.settimeout(0.1)
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True)]
        self._tcp = None
        if mode in ("truncate", "tcp-silent"):
            self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._tcp.bind(("127.0.0.1", self.port))
            self._tcp.listen(64)
            self._tcp.settimeout(0.1)
        if mode == "truncate":  # tcp-silent never accepts: the kernel completes handshakes into the backlog
            self._threads.append(threading.Thread(target=self._serve_tcp, daemon=True))
        for thread in self._threads:
            thread.start()

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        """The zone's authoritative answer to `query` (NXDOMAIN for names the zone does not hold)."""
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name, rdtype = question.name, question.rdtype
        rrset = self.data.get((name, rdtype))
        cname = self.data.get((name, dns.rdatatype.CNAME))
        if rrset is not None:
            response.answer.append(rrset)
        elif cname is not None:
            response.answer.append(cname)
        elif not any(owner == name for owner, _ in self.data):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response

    @staticmethod
    def _describe(query: dns.message.Message) -> tuple[str, str]:
        question = query.question[0]
        return question.name.to_text(), dns.rdatatype.to_text(question.rdtype)

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._udp.recvfrom(65535)
            except (socket.timeout, OSError):
                continue
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            self.udp_queries.append(self._describe(query))
            for reply in self._udp_replies(query):
                self._udp.sendto(reply, peer)

    def _udp_replies(self, query: dns.message.Message) -> list[bytes]:
        mode = self.mode
        if mode == "silent":
            return []
        response = dns.message.make_response(query)
        if mode in ("servfail", "refused"):
            response.set_rcode(dns.rcode.SERVFAIL if mode == "servfail" else dns.rcode.REFUSED)
        elif mode == "referral":
            response.flags &= ~(dns.flags.AA | dns.flags.RA)
            response.authority.append(dns.rrset.from_text("test.", 300, "IN", "NS", "ns.elsewhere.example."))
        elif mode in ("truncate", "tcp-silent"):
            response.flags |= dns.flags.TC | dns.flags.AA
        elif mode == "spoof":
            forged = dns.message.make_query("forged.example.", "A")
            forged.id = (query.id + 1) % 65536
            forged.flags |= dns.flags.QR
            wrong_question = dns.message.make_response(dns.message.make_query("other.example.", "A"))
            wrong_question.id = query.id
            return [forged.to_wire(), wrong_question.to_wire(), b"\x00", self.answer(query).to_wire(want_shuffle=False)]
        return [response.to_wire()]

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._tcp.accept()
            except (socket.timeout, OSError):
                continue
            with conn:
                conn.settimeout(2)
                try:
                    size = struct.unpack("!H", _read_exactly(conn, 2))[0]
                    query = dns.message.from_wire(_read_exactly(conn, size))
                except (OSError, ValueError, Exception):
                    continue
                self.tcp_queries.append(self._describe(query))
                wire = self.answer(query).to_wire(max_size=65535, want_shuffle=False)
                try:
                    conn.sendall(struct.pack("!H", len(wire)) + wire)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._udp.close()
        if self._tcp is not None:
            self._tcp.close()


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ValueError("connection closed early")
        data += chunk
    return data
