"""Peers for the `redis` executor tests: private redis-server instances (password, ACL user, TLS with a
test CA, optionally requiring client certificates) and a scripted RESP server for replies no real
Redis 7 gives (Redis 5's unknown HELLO, a server echoing the password, HTTP, a closed connection).

Certificates and keys live in a private temporary directory removed when the peers stop (and at exit).
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

from conftest import TcpPeer, free_port, stop_process, wait_ready

PASSWORD = "Req-Pass-7f3a9c"  # requirepass of the default user
ALICE, ALICE_PASSWORD = "alice", "Alice-Pass-51be0d"  # an ACL user
CAROL, CAROL_PASSWORD = "carol", "Carol-Pass-3c81f7"  # an ACL user who may not SELECT
SCRIPTED_PASSWORD = "Scripted-Pass-9d2e44"
ALL_PASSWORDS = (PASSWORD, ALICE_PASSWORD, CAROL_PASSWORD, SCRIPTED_PASSWORD)



@dataclass
class Pki:
    """A test CA with a server certificate for `localhost` only and a client certificate; another CA."""
    dir: str
    ca_pem: str
    other_ca_pem: str
    client_cert_pem: str
    client_key_pem: str
    other_client_cert_pem: str
    other_client_key_pem: str

    @property
    def ca_file(self) -> str:
        return os.path.join(self.dir, "ca.pem")

    @classmethod
    def create(cls) -> "Pki":
        import trustme

        ca, other = trustme.CA(), trustme.CA()
        server, client, stranger = ca.issue_cert("localhost"), ca.issue_cert("client.test"), \
            other.issue_cert("client.test")
        directory = tempfile.mkdtemp(prefix="pw-redis-pki-")  # mode 0700
        atexit.register(shutil.rmtree, directory, True)
        ca.cert_pem.write_to_path(os.path.join(directory, "ca.pem"))
        server.private_key_pem.write_to_path(os.path.join(directory, "server.key"))
        with open(os.path.join(directory, "server.pem"), "wb") as fh:
            for blob in server.cert_chain_pems:
                fh.write(blob.bytes())
        text = lambda blob: blob.bytes().decode()
        return cls(directory, text(ca.cert_pem), text(other.cert_pem), text(client.cert_chain_pems[0]),
                   text(client.private_key_pem), text(stranger.cert_chain_pems[0]), text(stranger.private_key_pem))

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisPeer:
    """A private redis-server on free ports: plain and TLS, optional password, ACL user, client certs."""

    def __init__(self, pki: Pki, password: str | None = None, acl_user: bool = False,
                 client_certs: str = "no") -> None:
        self.port, self.tls_port = free_port(), free_port()
        self.dir = tempfile.mkdtemp(prefix="pw-redis-exec-")
        self.password = password
        args = [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "-::1", "--save", "", "--appendonly", "no", "--dir", self.dir, "--logfile",
                os.path.join(self.dir, "log"), "--tls-port", str(self.tls_port),
                "--tls-cert-file", os.path.join(pki.dir, "server.pem"),
                "--tls-key-file", os.path.join(pki.dir, "server.key"),
                "--tls-ca-cert-file", pki.ca_file, "--tls-auth-clients", client_certs]
        if password:
            args += ["--requirepass", password]
        if acl_user:
            args += ["--user", ALICE, "on", f">{ALICE_PASSWORD}", "~*", "&*", "+@all",
                     "--user", CAROL, "on", f">{CAROL_PASSWORD}", "~*", "&*", "+@all", "-select"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(lambda: self.command("PING") in ("PONG", "NOAUTH Authentication required."), "redis-server",
                       10, proc=self.proc, log=self._log)
        except RuntimeError:
            self.stop()
            raise

    def _log(self) -> str:
        try:
            with open(os.path.join(self.dir, "log")) as fh:
                return fh.read()[-2000:]
        except OSError:
            return ""

    def command(self, *args: str) -> str:
        """One command on a fresh plain connection (authenticated when the peer has a password): the
        text of its reply (status, error or bulk string)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s, s.makefile("rb") as f:
            commands = ([("AUTH", self.password)] if self.password else []) + [args]
            s.sendall(b"".join(_pack(*c) for c in commands))
            for _ in commands:
                line = f.readline()
                if not line:
                    raise ConnectionError("closed")
                text = line[1:-2]
                if line.startswith(b"$"):
                    text = f.read(int(text) + 2)[:-2]
        return text.decode()

    def info(self, field: str) -> int:
        for line in self.command("INFO").splitlines():
            if line.startswith(field + ":"):
                return int(line.split(":", 1)[1])
        raise KeyError(field)

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def _pack(*args: str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class ScriptedServer(TcpPeer):
    """A TCP server answering each chunk it receives on a connection with the next scripted reply
    (closing the connection when the script is done or the reply is None); records what arrived and
    counts the `connections`."""

    def __init__(self, script: list[bytes | None]) -> None:
        self.script = script
        self.received: list[bytes] = []
        super().__init__(backlog=16)

    def serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            for reply in self.script:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                self.received.append(chunk)
                if reply is None:
                    return
                conn.sendall(reply)
            time.sleep(0.2)  # the client closes first after a complete script
