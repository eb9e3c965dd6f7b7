"""MySQL peers for the mysql executor's tests.

* The shared MariaDB on 127.0.0.1:3306 (root, empty password; database `test`): `SharedUser` creates
  a uniquely named user with a password (SELECT on `test`) and drops it again. Nothing global changes.
* `PrivateMariaDB`: a `mariadbd` of our own (mariadb-install-db into a temp datadir, a free port, its
  socket in the temp dir, run as root with --user=root) with TLS from a test CA whose server certificate
  names `localhost` only (no IP SAN); users: `plain` (password), `sslonly` (password, REQUIRE SSL) and
  `eduser` (MariaDB's ed25519 plugin, non-ASCII password).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile

from conftest import free_port, stop_process, wait_ready

SHARED_HOST, SHARED_PORT = "127.0.0.1", 3306
PASSWORD = "pw-Maria-7c1e94d2"  # every test user's; must never show up in a result or a log line
ED_PASSWORD = "ed-Pässwort-31a6"  # sent as UTF-8, as Go does
_SERVER = "mariadbd"
_INSTALL = "mariadb-install-db"


def missing_shared_reason() -> str | None:
    """Why the shared MariaDB cannot be used, or None."""
    try:
        with socket.create_connection((SHARED_HOST, SHARED_PORT), timeout=2) as sock:
            sock.settimeout(2)
            if not sock.recv(64):
                return f"nothing speaks MySQL on {SHARED_HOST}:{SHARED_PORT}"
    except OSError as exc:
        return f"no MariaDB on {SHARED_HOST}:{SHARED_PORT} ({exc}); apt-get install mariadb-server"
    return None


def missing_private_reason() -> str | None:
    """Why a private mariadbd cannot run here, or None."""
    for tool in (_SERVER, _INSTALL):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} is not installed (apt-get install mariadb-server)"
    try:
        import trustme  # noqa: F401
    except ImportError:
        return "trustme is not installed"
    return None


def _admin(**where):
    import pymysql

    return pymysql.connect(user="root", password="", autocommit=True, connect_timeout=10, **where)


class SharedUser:
    """A user with PASSWORD on the shared server, allowed to SELECT in `test`; `drop` removes it."""

    def __init__(self) -> None:
        self.name = "pwk_" + secrets.token_hex(5)
        with _admin(host=SHARED_HOST, port=SHARED_PORT) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE USER '{self.name}'@'%' IDENTIFIED BY '{PASSWORD}'")
            cur.execute(f"GRANT SELECT ON test.* TO '{self.name}'@'%'")

    def url(self, password: str = PASSWORD, database: str = "test", **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"mysql://{self.name}:{password}@{SHARED_HOST}:{SHARED_PORT}/{database}" + (f"?{query}" if query else "")

    def drop(self) -> None:
        with _admin(host=SHARED_HOST, port=SHARED_PORT) as conn, conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{self.name}'@'%'")


def shared_row_count(query: str) -> int:
    """How many rows the shared server returns for `query` (as root, through PyMySQL)."""
    with _admin(host=SHARED_HOST, port=SHARED_PORT) as conn, conn.cursor() as cur:
        return cur.execute(query)


class PrivateMariaDB:
    """One private mariadbd with TLS; `start` once per test module, `stop` removes everything."""

    def __init__(self) -> None:
        import trustme

        self.root = tempfile.mkdtemp(prefix="pw-mariadb-")
        self.data = os.path.join(self.root, "data")
        self.socket = os.path.join(self.root, "mysqld.sock")
        self.port = free_port()
        self.ca = trustme.CA(organization_name="Peekaping MariaDB Test CA")
        self.ca_file = self._write("ca.pem", self.ca.cert_pem.bytes())
        leaf = self.ca.issue_cert("localhost")  # no IP address in its SANs
        self._cert = self._write("server.pem", b"".join(p.bytes() for p in leaf.cert_chain_pems))
        self._key = self._write("server.key", leaf.private_key_pem.bytes())
        self.proc: subprocess.Popen | None = None

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.root, name)
        with open(path, "wb") as fh:
            fh.write(data)
        return path

    def start(self) -> None:
        small = ["--innodb-buffer-pool-size=8M", "--innodb-log-file-size=4M"]
        install = subprocess.run(
            [_tool(_INSTALL), "--no-defaults", f"--datadir={self.data}", "--user=root", "--skip-test-db",
             "--auth-root-authentication-method=normal", *small], capture_output=True, text=True, timeout=120)
        if install.returncode:
            raise RuntimeError(f"mariadb-install-db failed: {install.stdout}{install.stderr}")
        log = os.path.join(self.root, "error.log")
        self.proc = subprocess.Popen(
            [_tool(_SERVER), "--no-defaults", f"--datadir={self.data}", "--user=root", f"--port={self.port}",
             "--bind-address=127.0.0.1", f"--socket={self.socket}", f"--pid-file={self.root}/mysqld.pid",
             f"--log-error={log}", "--skip-name-resolve", "--skip-log-bin", "--performance-schema=OFF",
             "--max-connections=300", "--max-allowed-packet=64M", f"--ssl-ca={self.ca_file}",
             f"--ssl-cert={self._cert}", f"--ssl-key={self._key}",
             "--plugin-load-add=auth_ed25519", *small],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(self._answers, "mariadbd", 60, proc=self.proc, log=self.log, interval=0.1)
        self.sql("CREATE DATABASE app", "CREATE TABLE app.items (id INT PRIMARY KEY)",
                 "INSERT INTO app.items VALUES (1), (2), (3)",
                 f"CREATE USER 'plain'@'%' IDENTIFIED BY '{PASSWORD}'",
                 f"CREATE USER 'sslonly'@'%' IDENTIFIED BY '{PASSWORD}' REQUIRE SSL",
                 f"CREATE USER 'eduser'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{ED_PASSWORD}')",
                 *(f"GRANT SELECT ON app.* TO '{user}'@'%'" for user in ("plain", "sslonly", "eduser")))

    def _answers(self) -> bool:
        try:
            self.sql("SELECT 1")
        except Exception:  # pymysql's errors while it starts
            return False
        return True

    def sql(self, *statements: str) -> list:
        """Run statements as root over the Unix socket; the rows of the last one."""
        rows: list = []
        with _admin(unix_socket=self.socket) as conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
                rows = list(cur.fetchall())
        return rows

    def url(self, user: str = "plain", password: str = PASSWORD, host: str = "127.0.0.1", database: str = "app",
            **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"mysql://{user}:{password}@{host}:{self.port}/{database}" + (f"?{query}" if query else "")

    def log(self) -> str:
        try:
            with open(os.path.join(self.root, "error.log"), errors="replace") as fh:
                return fh.read()[-3000:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc, 30)
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"

