"""Peers for the `rabbitmq` executor tests: a private RabbitMQ node with the management plugin (plain
and TLS listeners, a test CA), and a scripted HTTP server for answers a real node does not give.

The private node has its own name, ports, Erlang cookie (HOME), data, logs, config and enabled-plugins
file, all in a temporary directory; the shared node on 5672 is never touched. It starts in ~6 s, so
tests start it once per module.
"""

from __future__ import annotations

import atexit
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

from conftest import TcpPeer, free_port, wait_ready

USER, PASSWORD = "pw-admin", "Rabbit-Pass-6c1e9b"  # a management user created on the private node
RABBIT_BIN = "/usr/lib/rabbitmq/bin"  # Debian: the real scripts (/usr/sbin's wrappers switch to user rabbitmq)


class NodeError(Exception):
    """The private node could not be started; the text says why."""



def _tool(name: str) -> str | None:
    candidate = os.path.join(RABBIT_BIN, name)
    if os.access(candidate, os.X_OK):
        return candidate
    return shutil.which(name)


class RabbitNode:
    """rabbitmq-server with rabbitmq_management on 127.0.0.1: `mgmt_port` (http), `tls_port` (https)."""

    def __init__(self) -> None:
        self.server, self.ctl_path = _tool("rabbitmq-server"), _tool("rabbitmqctl")
        if self.server is None or self.ctl_path is None:
            raise NodeError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        self.dir = tempfile.mkdtemp(prefix="pw-rabbit-")
        self.name = f"pw-{uuid.uuid4().hex[:10]}@localhost"
        self.amqp_port, self.dist_port = free_port(), free_port()
        self.mgmt_port, self.tls_port = free_port(), free_port()
        self.ca_pem = ""
        self.proc: subprocess.Popen | None = None
        self.env = dict(os.environ, HOME=self.dir, RABBITMQ_NODENAME=self.name,
                        RABBITMQ_NODE_IP_ADDRESS="127.0.0.1", RABBITMQ_NODE_PORT=str(self.amqp_port),
                        RABBITMQ_DIST_PORT=str(self.dist_port),
                        RABBITMQ_MNESIA_BASE=os.path.join(self.dir, "mnesia"),
                        RABBITMQ_LOG_BASE=os.path.join(self.dir, "log"),
                        RABBITMQ_CONFIG_FILE=os.path.join(self.dir, "rabbitmq.conf"),
                        RABBITMQ_ADVANCED_CONFIG_FILE=os.path.join(self.dir, "advanced.config"),
                        RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(self.dir, "enabled_plugins"),
                        RABBITMQ_CONF_ENV_FILE=os.path.join(self.dir, "rabbitmq-env.conf"),
                        RABBITMQ_PID_FILE=os.path.join(self.dir, "pid"), ERL_EPMD_ADDRESS="127.0.0.1")
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
            self.env.pop(name, None)

    def url(self, tls: bool = False) -> str:
        return f"https://127.0.0.1:{self.tls_port}" if tls else f"http://127.0.0.1:{self.mgmt_port}"

    def start(self, timeout: float = 90.0) -> None:
        self._write_files()
        with open(os.path.join(self.dir, "server.out"), "wb") as log:
            self.proc = subprocess.Popen([self.server], cwd=self.dir, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        atexit.register(self.stop)  # also when the test run is cut short
        wait_ready(lambda: self.status("guest", "guest")[0] == 200, "the management API of rabbitmq-server", timeout,
                   proc=self.proc, log=self._tail, error=NodeError, interval=0.2)
        self.ctl("add_user", USER, PASSWORD)
        self.ctl("set_user_tags", USER, "monitoring")

    def _write_files(self) -> None:
        import trustme

        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_pem = ca.cert_pem.bytes().decode()
        paths = {name: os.path.join(self.dir, name) for name in ("ca.pem", "server.pem", "server.key")}
        ca.cert_pem.write_to_path(paths["ca.pem"])
        leaf.private_key_pem.write_to_path(paths["server.key"])
        with open(paths["server.pem"], "wb") as fh:
            fh.writelines(blob.bytes() for blob in leaf.cert_chain_pems)
        config = [
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}",
            f"management.tcp.port = {self.mgmt_port}", "management.tcp.ip = 127.0.0.1",
            f"management.ssl.port = {self.tls_port}", "management.ssl.ip = 127.0.0.1",
            f"management.ssl.cacertfile = {paths['ca.pem']}", f"management.ssl.certfile = {paths['server.pem']}",
            f"management.ssl.keyfile = {paths['server.key']}",
        ]
        with open(self.env["RABBITMQ_CONFIG_FILE"], "w") as fh:
            fh.write("\n".join(config) + "\n")
        with open(self.env["RABBITMQ_ENABLED_PLUGINS_FILE"], "w") as fh:
            fh.write("[rabbitmq_management].\n")
        open(self.env["RABBITMQ_CONF_ENV_FILE"], "w").close()  # not /etc/rabbitmq's (it names the shared node)

    def _tail(self) -> str:
        try:
            with open(os.path.join(self.dir, "server.out"), "rb") as fh:
                return fh.read()[-1500:].decode("utf-8", "replace")
        except OSError:
            return ""

    def ctl(self, *args: str) -> str:
        """rabbitmqctl against this node (same HOME, so the same Erlang cookie)."""
        proc = subprocess.run([self.ctl_path, "-n", self.name, *args], env=self.env, cwd=self.dir,
                              capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise NodeError(f"rabbitmqctl {' '.join(args)}: {proc.stdout}{proc.stderr}")
        return proc.stdout

    def status(self, user: str = USER, password: str = PASSWORD) -> tuple[int, dict | None]:
        """Status code and JSON body of the alarms health check, asked directly; (0, None) when unreachable."""
        conn = http.client.HTTPConnection("127.0.0.1", self.mgmt_port, timeout=5)
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        try:
            conn.request("GET", "/api/health/checks/alarms/", headers={"Authorization": f"Basic {token}"})
            resp = conn.getresponse()
            body = resp.read()
        except OSError:
            return 0, None
        finally:
            conn.close()
        try:
            return resp.status, json.loads(body)
        except ValueError:
            return resp.status, None

    def wait_status(self, code: int, timeout: float = 20.0) -> dict | None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status, body = self.status()
            if status == code:
                return body
            time.sleep(0.1)
        raise NodeError(f"the alarms health check did not answer {code} within {timeout:.0f} s")

    def raise_disk_alarm(self) -> dict | None:
        """A disk alarm (free-space limit far above any disk); the 503 body it causes."""
        self.ctl("set_disk_free_limit", "1000000GB")
        return self.wait_status(503)

    def clear_disk_alarm(self) -> None:
        self.ctl("set_disk_free_limit", "1MB")
        self.wait_status(200)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:  # the node's own process group (start_new_session); its data is thrown away, so no clean stop
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class HttpPeer(TcpPeer):
    """A scripted HTTP server: records each request head and answers it with `reply` (None: never
    answers, holding the connection), then closes the connection."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.requests: list[bytes] = []
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}"

    def serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    head += chunk
            except OSError:
                return
            self.requests.append(head)
            if self.reply is None:
                self.stopped.wait(30)
                return
            try:
                conn.sendall(self.reply)
            except OSError:
                pass


def response(status: str, body: bytes = b"", content_type: str = "application/json", length: int | None = None) -> bytes:
    """An HTTP/1.1 response that closes the connection; `length` overrides Content-Length (a short body)."""
    size = len(body) if length is None else length
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {size}\r\n"
            "Connection: close\r\n\r\n").encode() + body

