"""Peers for the mongodb executor's tests.

No real `mongod` can be installed here, so the server is SecantusDB (`secantusdb` from PyPI,
`secantusd-py`): a MongoDB wire-protocol server with OP_MSG, hello, SCRAM-SHA-256, ping, buildInfo,
serverStatus, find/insert/findAndModify/count, TLS and failCommand fail points. Each test module
starts its own instances on free ports with their data in a temporary directory. A small DNS server
answers the SRV and TXT lookups of `mongodb+srv://` names.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from conftest import free_port, skip_or_fail, stop_process, wait_for_port

# Users created in every server: (name, password, database the user is defined in, roles)
USERS = {
    "username": ("password", "admin", ["root"]),  # the web form's default connection string
    "alice": ("Alice-pw-3f9c1e", "admin", ["root"]),
    "bob": ("Bob-pw-8d2a7b", "test", [{"role": "readWrite", "db": "test"}]),
}
PASSWORDS = [password for password, _, _ in USERS.values()]



def _server_command() -> list[str] | None:
    beside = Path(sys.executable).parent / "secantusd-py"
    found = str(beside) if beside.exists() else shutil.which("secantusd-py")
    return [found] if found else None


def require_secantus() -> list[str]:
    """The server command; skips the test when SecantusDB is missing, fails under CI=true."""
    command = _server_command()
    if command is None:
        skip_or_fail("secantusd-py is not installed (pip install --pre secantusdb)")
    return command


class Secantus:
    """A private SecantusDB standalone server; with `auth`, it has the users of USERS and requires them."""

    def __init__(self, tls: tuple[str, str] | None = None, auth: bool = True) -> None:
        self.command = require_secantus()
        self.dir = tempfile.mkdtemp(prefix="pw-mongo-")
        self.port = free_port()
        self.tls = tls  # (certificate file, key file)
        self.auth = auth
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if self.auth:  # users are created while the server still lets anyone in
            self._launch(auth=False, tls=False)
            self._provision()
            self.stop()
        self._launch(auth=self.auth, tls=bool(self.tls))

    def _launch(self, auth: bool, tls: bool) -> None:
        args = [*self.command, "--host", "127.0.0.1", "--port", str(self.port), "--storage-path",
                os.path.join(self.dir, "data"), "--standalone", "--log-level", "WARNING",
                "--enable-test-commands"]  # configureFailPoint, to stall one command
        if auth:
            args.append("--auth")
        if tls:
            args += ["--tls-cert-file", self.tls[0], "--tls-key-file", self.tls[1]]
        log = open(os.path.join(self.dir, "log"), "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait_for_port(self.port, "secantusd-py", 30, proc=self.proc, log=lambda: self.log()[-2000:])

    def _provision(self) -> None:
        import pymongo

        with pymongo.MongoClient("127.0.0.1", self.port, serverSelectionTimeoutMS=10000) as client:
            for name, (password, database, roles) in USERS.items():
                client[database].command("createUser", name, pwd=password, roles=roles)
            # Documents whose fields the path tests read back with findAndModify
            client.test.values.insert_one(_typed_document())

    def log(self) -> str:
        try:
            return Path(self.dir, "log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def cleanup(self) -> None:
        if self.proc and self.proc.poll() is None:  # its data is thrown away: no need for a clean shutdown
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


def _typed_document() -> dict:
    """One value of each BSON type the Go driver prints in its own way."""
    import datetime

    from bson import Binary, Decimal128, Int64, ObjectId, Regex, Timestamp

    return {
        "_id": "types", "int32": 1, "int64": Int64(1), "double": 1.0, "text": "1", "big": 1500000.0,
        "small": 0.00001, "flag": True, "nothing": None, "list": [1, "a", {"k": 2.5}],
        "doc": {"b": 2, "a": {"c": "deep"}}, "oid": ObjectId("65a1b2c3d4e5f60718293a4b"),
        "when": datetime.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.timezone.utc),
        "ts": Timestamp(1700000000, 7), "bin": Binary(b"\x01\x02\xff", 0), "uuid": Binary(b"\x00" * 16, 4),
        "dec": Decimal128("12.50"), "re": Regex("^a.c$", "im"),
    }


class SrvDns:
    """A UDP DNS server with fixed SRV/TXT answers; NXDOMAIN for other names, or no answer at all."""

    def __init__(self, records: dict[tuple[str, str], list[str]], silent: bool = False) -> None:
        self.records = {(name.lower().rstrip(".") + ".", kind): texts for (name, kind), texts in records.items()}
        self.silent = silent
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        self.queries: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.closed:
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            question = query.question[0]
            kind = dns.rdatatype.to_text(question.rdtype)
            self.queries.append(f"{question.name} {kind}")
            if self.silent:
                continue
            response = dns.message.make_response(query)
            texts = self.records.get((question.name.to_text().lower(), kind))
            if texts:
                response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", kind, texts))
            elif not any(name == question.name.to_text().lower() for name, _ in self.records):
                response.set_rcode(dns.rcode.NXDOMAIN)
            try:
                self.sock.sendto(response.to_wire(), peer)
            except OSError:
                return

    def resolver(self):
        """A dnspython asyncio resolver that asks only this server."""
        import dns.asyncresolver

        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.port = self.port
        resolver.nameservers = ["127.0.0.1"]
        resolver.timeout = resolver.lifetime = 5.0
        return resolver

    def close(self) -> None:
        self.closed = True
        self.thread.join(2)
        self.sock.close()
