"""SNMP peers for the snmp executor's tests: a private Debian `snmpd` (net-snmp) on a free loopback
UDP port (IPv4 and IPv6) with its own config and persistent directory, v1/v2c communities, SNMPv3
users for every security level and protocol, and fixed values under a private enterprise subtree;
plus a UDP port that takes requests and never answers.

snmpd runs with -C (no system config), without the AgentX and SMUX modules (no sockets shared with
a system agent), logging to a file in its directory.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile

from conftest import require_program, stop_process, wait_ready

COMMUNITY = "public"
BASE = "1.3.6.1.4.1.99999.1"  # fixed values set with `override` (numeric OIDs: no MIBs are loaded)
VALUES = {  # OID -> (snmpd override type, value, text Peekaping prints)
    f"{BASE}.1.0": ("integer", "42", "42"),
    f"{BASE}.2.0": ("integer", "-7", "-7"),
    f"{BASE}.3.0": ("octet_str", '"hello snmp"', "hello snmp"),
    f"{BASE}.4.0": ("uinteger", "3000000000", "3000000000"),  # a Gauge32
    f"{BASE}.5.0": ("counter", "123456", "123456"),  # a Counter32
    f"{BASE}.6.0": ("object_id", ".1.3.6.1.4.1.8072.3.2.10", ".1.3.6.1.4.1.8072.3.2.10"),
    f"{BASE}.7.0": ("octet_str", '"10.5"', "10.5"),
    f"{BASE}.8.0": ("octet_str", '"abc"', "abc"),
}
SYS_CONTACT = "noc@peek.test"
# SNMPv3 users: name -> (AUTH, auth passphrase, PRIV, priv passphrase); the executor's names
USERS = {
    "noauthuser": ("", "", "", ""),
    "authuser": ("SHA-256", "auth:pass%256", "", ""),  # `:` and `%` inside: written %3A and %25
    "privuser": ("SHA-256", "authpass-256", "AES", "privpass-aes"),
    "md5des": ("MD5", "authpass-md5", "DES", "privpass-des"),
    "sha1aes": ("SHA", "authpass-sha1", "AES-128", "privpass-sha1"),
    "sha224aes192": ("SHA-224", "authpass-224", "AES-192", "privpass-192"),
    "sha384aes256": ("SHA-384", "authpass-384", "AES-256", "privpass-256"),
    "sha512aes192c": ("SHA-512", "authpass-512", "AES-192-C", "privpass-192c"),
    "sha512aes256c": ("SHA-512", "authpass-512", "AES-256-C", "privpass-256c"),
}


def v3_community(name: str, **changes: str) -> str:
    """The executor's `community` for a USERS entry (a field replaced by `changes`, for wrong ones)."""
    auth, auth_pass, priv, priv_pass = USERS[name]
    values = {**dict(user=name, auth=auth, auth_pass=auth_pass, priv=priv, priv_pass=priv_pass), **changes}
    escape = lambda text: text.replace("%", "%25").replace(":", "%3A")  # noqa: E731
    fields = [values["user"]]
    if values["auth"]:
        fields += [values["auth"], escape(values["auth_pass"])]
    if values["priv"]:
        fields += [values["priv"], escape(values["priv_pass"])]
    return ":".join(fields)


def free_udp_port() -> int:
    """A UDP port free on both 127.0.0.1 and ::1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as v4:
            v4.bind(("127.0.0.1", 0))
            port = v4.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as v6:
                    v6.bind(("::1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP port")


def _net_snmp_user(name: str) -> str:
    auth, auth_pass, priv, priv_pass = USERS[name]
    net_snmp_priv = {"AES-128": "AES"}.get(priv, priv)
    line = f"createUser {name}"
    if auth:
        line += f' {auth} "{auth_pass}"'
    if priv:
        line += f' {net_snmp_priv} "{priv_pass}"'
    level = "priv" if priv else "auth" if auth else "noauth"
    return f"{line}\nrouser {name} {level}\n"


class SnmpAgent:
    def __init__(self) -> None:
        self.port = free_udp_port()
        self.dir = tempfile.mkdtemp(prefix="pw-snmpd-")
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        lines = [f"agentAddress udp:127.0.0.1:{self.port},udp6:[::1]:{self.port}",
                 f"rocommunity {COMMUNITY} 127.0.0.1", f"rocommunity6 {COMMUNITY} ::1",
                 f"sysContact {SYS_CONTACT}", "sysLocation test lab", "sysServices 72",
                 "dontLogTCPWrappersConnects yes"]
        lines += [f"override .{oid} {kind} {value}" for oid, (kind, value, _) in VALUES.items()]
        return "\n".join(lines) + "\n" + "".join(map(_net_snmp_user, USERS))

    def start(self) -> None:
        conf = os.path.join(self.dir, "snmpd.conf")
        with open(conf, "w") as fh:
            fh.write(self.config())
        persist = os.path.join(self.dir, "persist")
        os.makedirs(persist)
        log = os.path.join(self.dir, "log")
        env = {**os.environ, "SNMP_PERSISTENT_DIR": persist, "SNMPCONFPATH": self.dir, "MIBS": "", "MIBDIRS": persist}
        self.proc = subprocess.Popen(
            [shutil.which("snmpd"), "-C", "-c", conf, "-f", "-Lf", log, "-p", os.path.join(self.dir, "pid"),
             "-I", "-smux,agentx", f"--persistentDir={persist}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        # "NET-SNMP version" is logged once the agent listens
        wait_ready(lambda: "NET-SNMP version" in self.log(), "snmpd", 15, proc=self.proc, log=self.log)

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "log"), errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


_agent: SnmpAgent | None = None


def agent() -> SnmpAgent:
    """The one snmpd of this test process (started on first use, stopped at exit); skips when snmpd is
    not installed, fails under CI=true."""
    global _agent
    if _agent is None:
        require_program("snmpd", "snmpd")
        started = SnmpAgent()
        started.start()
        atexit.register(started.stop)
        _agent = started
    return _agent


class SilentPort:
    """A bound UDP port that reads requests and never answers (no ICMP port-unreachable either)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self.port = self.sock.getsockname()[1]

    def received(self) -> int:
        """How many datagrams arrived so far."""
        count = 0
        self.sock.setblocking(False)
        while True:
            try:
                self.sock.recv(65535)
            except BlockingIOError:
                return count
            count += 1

    def close(self) -> None:
        self.sock.close()
