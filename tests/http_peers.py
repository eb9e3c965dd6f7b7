"""Real peers for the HTTP executor tests, all on 127.0.0.1: HTTP/HTTPS/mTLS servers (stdlib
http.server in threads), an NTLM challenge-response server (pyspnego's acceptor), an OAuth2
client-credentials token endpoint, real proxy servers (pproxy as a subprocess), a byte-recording TCP
relay to see what a client sends to a proxy, and hostile servers (dribbling, endless, never-ending
TLS handshake). Certificates come from a CA generated in the test run (trustme + cryptography).

Run as a script, `python http_peers.py pproxy ARGS...` starts pproxy on plain asyncio (pproxy 2.7
cannot start under current uvloop).
"""

from __future__ import annotations

import base64
import atexit
import datetime as dt
import gzip as gzip_module
import http.server
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from conftest import TcpPeer, free_port, stop_process, wait_for_port

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------------------------------
# Certificates

@dataclass
class Pem:
    cert: str
    key: str

    def files(self, tmp: Path, name: str) -> tuple[str, str]:
        cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
        cert.write_text(self.cert)
        key.write_text(self.key)
        return str(cert), str(key)


class Certs:
    """A test PKI: an RSA CA with an intermediate, an EC CA, leaves, a self-signed leaf, an expired leaf,
    a client certificate for mTLS and a CA nobody trusts."""

    def __init__(self) -> None:
        import trustme

        self.tmp = Path(tempfile.mkdtemp(prefix="pw-certs-"))
        # Private keys are written here: remove them when the test process ends.
        atexit.register(shutil.rmtree, self.tmp, ignore_errors=True)
        self.ca = trustme.CA(organization_name="Peekaping Test CA")
        self.intermediate = self.ca.create_child_ca()
        leaf = self.intermediate.issue_cert("localhost", "127.0.0.1", common_name="localhost")
        self.leaf = self._pem(leaf)  # chain: leaf + intermediate
        self.ca_pem = self.ca.cert_pem.bytes().decode()
        self.ca_file = str(self.tmp / "ca.pem")
        Path(self.ca_file).write_text(self.ca_pem)
        self.ec_ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
        self.ec_leaf = self._pem(self.ec_ca.issue_cert("localhost", "127.0.0.1", key_type=trustme.KeyType.ECDSA))
        self.ec_ca_pem = self.ec_ca.cert_pem.bytes().decode()
        now = dt.datetime.now(dt.timezone.utc)
        self.expired = self._pem(self.ca.issue_cert("localhost", "127.0.0.1", not_before=now - dt.timedelta(days=30),
                                                    not_after=now - dt.timedelta(days=2)))
        self.other_ca = trustme.CA()
        self.other_leaf = self._pem(self.other_ca.issue_cert("localhost", "127.0.0.1"))
        self.wrong_name = self._pem(self.ca.issue_cert("other.example", "10.9.9.9"))
        self.client_ca = trustme.CA(organization_name="Client CA")
        self.client = self._pem(self.client_ca.issue_cert("client@peekaping.test", common_name="monitor-client"))
        self.client_ca_pem = self.client_ca.cert_pem.bytes().decode()
        self.self_signed = self._self_signed()

    @staticmethod
    def _pem(issued) -> Pem:
        chain = "".join(b.bytes().decode() for b in issued.cert_chain_pems)
        return Pem(chain, issued.private_key_pem.bytes().decode())

    @staticmethod
    def _self_signed() -> Pem:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Self, Signed & Co"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                          x509.NameAttribute(NameOID.EMAIL_ADDRESS, "ops@peekaping.test")])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(0x1234ABCD).not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=90))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                .sign(key, hashes.SHA256()))
        return Pem(cert.public_bytes(serialization.Encoding.PEM).decode(),
                   key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode())

    def server_context(self, pem: Pem, client_ca: str | None = None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert, key = pem.files(self.tmp, f"srv{abs(hash(pem.cert))}")
        ctx.load_cert_chain(cert, key)
        if client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=client_ca)
        return ctx


# --------------------------------------------------------------------------------------------------
# An HTTP(S) server with the routes the tests need

class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, handler, ssl_context: ssl.SSLContext | None, peer: "Peer") -> None:
        self.ssl_context = ssl_context
        self.peer = peer
        super().__init__(("127.0.0.1", 0), handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address) -> None:  # clients that hang up are normal here
        pass


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()
        self.ntlm_context = None

    def log_message(self, *args) -> None:
        pass

    # every method goes through one router
    def do_GET(self) -> None:
        self._route()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None, reason: str | None = None) -> None:
        self.send_response(code, reason)
        headers = dict(headers or {})
        if "Content-Length" not in headers and "Transfer-Encoding" not in headers:
            headers["Content-Length"] = str(len(body))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _route(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        peer = self.server.peer
        record = {"method": self.command, "path": self.path, "headers": list(self.headers.items()), "body": body,
                  "tls": isinstance(self.request, ssl.SSLSocket)}
        path = parts.path
        if path != "/loop":  # a redirect loop at full speed would fill memory with records
            with peer.lock:
                peer.requests.append(record)
        if path == "/echo" or path.startswith("/echo/"):
            doc = {"method": self.command, "path": self.path, "headers": dict(self.headers.items()),
                   "header_list": list(self.headers.items()), "body": body.decode("utf-8", "replace")}
            self._send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})
        elif path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            self._send(code, f"status {code}".encode() if code not in (204, 304) else b"")
        elif path.startswith("/redirect/"):
            n = int(path.rsplit("/", 1)[1])
            if n == 0:
                self._send(200, b"arrived")
            else:
                self._send(int(query.get("code", 302)), b"", {"Location": f"/redirect/{n - 1}" +
                                                              (f"?code={query['code']}" if "code" in query else "")})
        elif path == "/loop":
            self._send(302, b"", {"Location": "/loop"})
        elif path == "/to":
            self._send(int(query.get("code", 302)), b"", {"Location": query["url"]})
        elif path == "/no-location":
            self._send(302, b"moved somewhere")
        elif path == "/slow":
            time.sleep(float(query.get("s", "1")))
            self._send(200, b"slow")
        elif path == "/body":
            self._send(200, query.get("text", "").encode(), {"Content-Type": query.get("type", "text/plain")})
        elif path == "/gzip":
            data = query.get("text", "").encode()
            if "gzip" in (self.headers.get("Accept-Encoding") or ""):
                self._send(200, gzip_module.compress(data), {"Content-Encoding": "gzip"})
            else:
                self._send(200, data)
        elif path == "/bad-gzip":
            self._send(200, b"this is not gzip at all", {"Content-Encoding": "gzip"})
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in query.get("parts", "").split(","):
                data = part.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/big":
            size = int(query.get("bytes", "0"))
            head, tail = query.get("head", "").encode(), query.get("tail", "").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            left = size - len(head) - len(tail)
            self.wfile.write(head)
            block = b"x" * 65536
            while left > 0:
                n = min(left, len(block))
                self.wfile.write(block[:n])
                left -= n
            self.wfile.write(tail)
        elif path == "/basic":
            expected = "Basic " + base64.b64encode(f"{query.get('user')}:{query.get('pass')}".encode()).decode()
            if self.headers.get("Authorization") == expected:
                self._send(200, b"welcome")
            else:
                self._send(401, b"who are you", {"WWW-Authenticate": 'Basic realm="test"'})
        elif path == "/token":
            self._token(body)
        elif path == "/bearer":
            auth = self.headers.get("Authorization") or ""
            if auth.startswith("Bearer ") and auth[7:] in peer.valid_tokens:
                self._send(200, f"hello {auth[7:]}".encode())
            else:
                self._send(401, b"bad token", {"WWW-Authenticate": "Bearer"})
        elif path == "/ntlm":
            self._ntlm()
        elif path == "/tls-info":
            self._send(200, b"tls" if isinstance(self.request, ssl.SSLSocket) else b"plain")
        else:
            self._send(404, b"not found")

    def _token(self, body: bytes) -> None:
        peer = self.server.peer
        form = {k: v[-1] for k, v in parse_qs(body.decode()).items()}
        auth = self.headers.get("Authorization")
        with peer.lock:
            peer.token_requests.append({"form": form, "authorization": auth,
                                        "content_type": self.headers.get("Content-Type")})
            mode = peer.token_mode
        if mode == "401":
            return self._send(401, b'{"error":"invalid_client"}')
        if mode == "empty":
            return self._send(200, b"{}", {"Content-Type": "application/json"})
        if mode == "not-json":
            return self._send(200, b"<html>oops</html>")
        secret_ok = form.get("client_secret") == peer.client_secret and form.get("client_id") == peer.client_id
        if auth is not None:
            want = "Basic " + base64.b64encode(f"{peer.client_id}:{peer.client_secret}".encode()).decode()
            secret_ok = secret_ok and auth == want
        if form.get("grant_type") != "client_credentials" or not secret_ok:
            return self._send(401, b'{"error":"invalid_client"}')
        with peer.lock:
            peer.issued += 1
            token = f"tok-{peer.issued}-{form.get('scope', '').replace(' ', '+')}"
            peer.valid_tokens.add(token)
        doc = {"access_token": token, "token_type": "Bearer", "expires_in": peer.expires_in}
        self._send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})

    def _ntlm(self) -> None:
        import spnego

        peer = self.server.peer
        auth = self.headers.get("Authorization") or ""
        with peer.lock:
            peer.ntlm_log.append(auth.split(" ")[0] if auth else "")
        if auth.startswith("NTLM "):
            token = base64.b64decode(auth[5:])
            if self.ntlm_context is None or token[8:12] == b"\x01\x00\x00\x00":  # NEGOTIATE starts a handshake
                self.ntlm_context = spnego.server(protocol="ntlm")
            try:
                answer = self.ntlm_context.step(token)
            except Exception:
                self.ntlm_context = None
                return self._send(401, b"denied", {"WWW-Authenticate": "NTLM"})
            if answer:
                return self._send(401, b"", {"WWW-Authenticate": "NTLM " + base64.b64encode(answer).decode()})
            if self.ntlm_context.complete:
                with peer.lock:
                    peer.ntlm_users.append(self.ntlm_context.client_principal)
                return self._send(200, b"ntlm ok")
        self._send(401, b"", {"WWW-Authenticate": "NTLM"})


class Peer:
    """One server; `url(path)` is where it answers."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.token_requests: list[dict] = []
        self.valid_tokens: set[str] = set()
        self.issued = 0
        self.token_mode = "ok"
        self.client_id, self.client_secret = "client123", "secret456"
        self.expires_in = 3600
        self.ntlm_log: list[str] = []
        self.ntlm_users: list[str] = []
        self.server = _Server(Handler, ssl_context, self)
        self.port = self.server.server_address[1]
        self.scheme = "https" if ssl_context else "http"
        self.host = host
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.token_requests.clear()
            self.ntlm_log.clear()
            self.ntlm_users.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------------------------------
# Hostile servers (raw sockets)

class Hostile(TcpPeer):
    """Misbehaving servers: `dribble` (one byte per second), `endless` (a body that never ends),
    `tls-stall` (accepts, never answers a ClientHello), `redirect-loop` is a normal Peer route."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(backlog=256)

    def serve(self, conn: socket.socket) -> None:
        try:
            if self.kind == "tls-stall":
                while not self.stopped.is_set():  # read the ClientHello and never answer
                    conn.settimeout(0.5)
                    try:
                        if not conn.recv(65536):
                            return
                    except socket.timeout:
                        continue
                return
            conn.settimeout(5)
            conn.recv(65536)
            if self.kind == "dribble":
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello":
                    if self.stopped.wait(1.0):
                        return
                    conn.sendall(bytes([byte]))
            elif self.kind == "endless":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
                chunk = b"10000\r\n" + b"y" * 0x10000 + b"\r\n"
                while not self.stopped.is_set():
                    conn.sendall(chunk)
        except OSError:
            pass
        finally:
            conn.close()


# --------------------------------------------------------------------------------------------------
# A recording TCP relay (to see the bytes a client sends to a real proxy)

class Tap(TcpPeer):
    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self._sent: dict[socket.socket, bytes] = {}
        super().__init__()

    @property
    def sent(self) -> list[bytes]:
        """What each client sent to the proxy (its first 4 KiB), per connection in the order they came."""
        return [self._sent.get(conn, b"") for conn in self.conns]

    def serve(self, client: socket.socket) -> None:
        up = socket.create_connection(("127.0.0.1", self.upstream))
        threading.Thread(target=self._pump, args=(up, client), daemon=True).start()
        self._pump(client, up, record=True)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool = False) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record and len(self._sent.get(src, b"")) < 4096:
                    self._sent[src] = self._sent.get(src, b"") + data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


# --------------------------------------------------------------------------------------------------
# Real proxy servers

class ProxyServer:
    """pproxy (a real multi-protocol proxy server) in a subprocess, e.g. `socks5://127.0.0.1:PORT#user:pass`."""

    def __init__(self, scheme: str, auth: str | None = None, ssl_pem: Pem | None = None, certs: Certs | None = None):
        self.port = free_port()
        uri = f"{scheme}://127.0.0.1:{self.port}" + (f"#{auth}" if auth else "")
        args = [sys.executable, str(HERE / "http_peers.py"), "pproxy", "-l", uri, "-v", "--auth", "0"]
        if ssl_pem is not None and certs is not None:
            cert, key = ssl_pem.files(certs.tmp, f"proxy{self.port}")
            args += ["--ssl", f"{cert},{key}"]
        self.log = tempfile.NamedTemporaryFile(prefix="pw-pproxy-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, "pproxy", 10, proc=self.proc, log=self.output)

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def close(self) -> None:
        stop_process(self.proc, 5)
        os.unlink(self.log.name)


def _run_pproxy(argv: list[str]) -> None:
    import asyncio

    sys.modules["uvloop"] = None  # type: ignore[assignment]
    asyncio.set_event_loop(asyncio.new_event_loop())
    from pproxy.server import main

    sys.argv = ["pproxy"] + argv
    main()


# --------------------------------------------------------------------------------------------------
# Shared instances (one per test process) and the check runner

_shared: dict[str, object] = {}
_shared_lock = threading.Lock()


def certs() -> Certs:
    with _shared_lock:
        if "certs" not in _shared:
            _shared["certs"] = Certs()
        return _shared["certs"]  # type: ignore[return-value]


def peer(kind: str = "http") -> Peer:
    """`http`, `https` (CA-signed chain), `https-ec`, `https-self`, `https-expired`, `https-other`
    (untrusted CA), `https-wrongname`, `mtls` (requires a client certificate from the client CA)."""
    c = certs()
    with _shared_lock:
        if kind not in _shared:
            contexts = {
                "http": None, "https": lambda: c.server_context(c.leaf), "https-ec": lambda: c.server_context(c.ec_leaf),
                "https-self": lambda: c.server_context(c.self_signed),
                "https-expired": lambda: c.server_context(c.expired),
                "https-other": lambda: c.server_context(c.other_leaf),
                "https-wrongname": lambda: c.server_context(c.wrong_name),
                "mtls": lambda: c.server_context(c.leaf, client_ca=c.client_ca_pem),
            }
            make = contexts[kind]
            _shared[kind] = Peer(make() if make else None)
        return _shared[kind]  # type: ignore[return-value]


async def run(config: dict | str, monitor_type: str = "http", proxy: dict | None = None, timeout: float = 5.0):
    """One check through the worker's registry and hard cap, as the worker runs it."""
    import healthcheck
    from executors import Monitor

    text = config if isinstance(config, str) else json.dumps(config)
    monitor = Monitor(id="m1", name="test", type=monitor_type, interval=60, timeout=int(timeout), config=text)
    return await healthcheck.run_check(monitor, proxy, timeout)


def cfg(url: str, **fields) -> dict:
    """The web form's document (spec 7) for `url`, with `fields` on top."""
    doc = {"url": url, "method": "GET", "headers": "", "encoding": "json", "body": "",
           "accepted_statuscodes": ["2XX"], "max_redirects": 10, "ignore_tls_errors": False, "authMethod": "none",
           "check_cert_expiry": False}
    doc.update(fields)
    return doc


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "pproxy":
        _run_pproxy(sys.argv[2:])
    else:
        print(__doc__)
