"""A private PostgreSQL cluster for the postgres executor's tests: initdb + pg_ctl on a free port in a
temp dir, SCRAM passwords, TLS with a test CA (server certificate for `localhost` only), and pg_hba
rules that let each sslmode show what it did: `sslonly` may log in over TLS only, `nossl` without TLS
only, `certuser` with a client certificate, and root through the Unix socket by peer authentication.

PostgreSQL refuses to run as root, so as root every server command runs as the `postgres` user
(`runuser`) in a directory that user owns.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile

from conftest import free_port

PASSWORD = "pw-Scram-9f31c7"  # of monitor, sslonly and nossl; must never show up in a result or a log line
USERS = ("monitor", "sslonly", "nossl")
HBA = """\
local all postgres trust
local all root peer
hostssl all certuser 127.0.0.1/32 cert
hostnossl all sslonly 127.0.0.1/32 reject
hostssl all nossl 127.0.0.1/32 reject
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


def bin_dir() -> str | None:
    """The newest installed PostgreSQL server binaries (Debian keeps them out of PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def missing_reason() -> str | None:
    """Why a private cluster cannot run here, or None."""
    if bin_dir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) are not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    if importlib.util.find_spec("trustme") is None:
        return "trustme is not installed"
    return None



class Cluster:
    """One private cluster; `start` once per test module, `stop` removes everything."""

    def __init__(self) -> None:
        import trustme

        self.port = free_port()
        self.root = tempfile.mkdtemp(prefix="pw-pg-")
        self.data = os.path.join(self.root, "data")
        self.sockets = self.root  # unix_socket_directories
        self.files = tempfile.mkdtemp(prefix="pw-pg-files-")  # what the checks read (CA, client certificate)
        self.ca = trustme.CA()
        self.other_ca = trustme.CA()  # trusted by nothing here
        self.ca_file = self._write("ca.pem", self.ca.cert_pem.bytes())
        self.other_ca_file = self._write("other-ca.pem", self.other_ca.cert_pem.bytes())
        client = self.ca.issue_cert("certuser.example", common_name="certuser")
        self.client_cert = self._write("client.crt", client.cert_chain_pems[0].bytes())
        self.client_key = self._write("client.key", client.private_key_pem.bytes())
        self._server = self.ca.issue_cert("localhost")  # no IP address in its SANs
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.files, name)
        with open(path, "wb") as fh:
            fh.write(data)
        os.chmod(path, 0o600)
        return path

    def _run(self, *args: str, timeout: float = 60) -> None:
        proc = subprocess.run([*self._as_user, *args], capture_output=True, text=True, timeout=timeout)
        if proc.returncode:
            raise RuntimeError(f"{args[0]} failed: {proc.stdout}{proc.stderr}")

    def start(self) -> None:
        binaries = bin_dir()
        if self._as_user:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        os.chmod(self.root, 0o755)  # root (the checks) reaches the socket inside
        self._run(os.path.join(binaries, "initdb"), "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        for name, data in (("server.crt", self._server.cert_chain_pems[0].bytes()),
                           ("server.key", self._server.private_key_pem.bytes()), ("root.crt", self.ca.cert_pem.bytes()),
                           ("pg_hba.conf", HBA.encode())):
            path = os.path.join(self.data, name)
            with open(path, "wb") as fh:
                fh.write(data)
            os.chmod(path, 0o600)
            if self._as_user:
                os.chown(path, pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as fh:
            fh.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                     f"unix_socket_directories = '{self.sockets}'\nssl = on\nssl_cert_file = 'server.crt'\n"
                     "ssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'\npassword_encryption = 'scram-sha-256'\nmax_connections = 150\n"
                     "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nshared_buffers = 16MB\n")
        self._run(os.path.join(binaries, "pg_ctl"), "-D", self.data, "-l", os.path.join(self.root, "log"), "-w",
                  "-t", "60", "start")
        statements = [f"CREATE ROLE {user} LOGIN PASSWORD '{PASSWORD}'" for user in USERS]
        statements += ["CREATE ROLE certuser LOGIN", "CREATE ROLE root LOGIN"]
        self.psql(";".join(statements))

    def psql(self, sql: str) -> str:
        """Run SQL as postgres over the Unix socket; its output."""
        proc = subprocess.run([*self._as_user, os.path.join(bin_dir(), "psql"), "-h", self.sockets, "-p",
                               str(self.port), "-U", "postgres", "-d", "postgres", "-Atqc", sql],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode:
            raise RuntimeError(proc.stderr)
        return proc.stdout.strip()

    def url(self, user: str = "monitor", password: str | None = PASSWORD, host: str = "127.0.0.1",
            database: str = "postgres", **params: str) -> str:
        auth = user if password is None else f"{user}:{password}"
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgres://{auth}@{host}:{self.port}/{database}" + (f"?{query}" if query else "")

    def stop(self) -> None:
        try:
            self._run(os.path.join(bin_dir(), "pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop",
                      timeout=30)
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.files, ignore_errors=True)

