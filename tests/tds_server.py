"""A small SQL Server stand-in speaking TDS 7.4, written from the MS-TDS specification, for the tests of
the `sqlserver` executor (no real SQL Server can run here).

It answers what a client's login and one batch need:
* PRELOGIN with encryption negotiation: the server either does not support encryption (ENCRYPT_NOT_SUP),
  offers it (answers ENCRYPT_OFF to a client's OFF = TLS for the login packet only, ENCRYPT_ON to ON) or
  requires it (ENCRYPT_REQ); the TLS handshake travels inside PRELOGIN packets, TLS records then run bare
  on the connection (the whole session, or the LOGIN7 packet only);
* LOGIN7 (password de-obfuscated) answered with ENVCHANGE (database, packet size, collation), INFO,
  LOGINACK and DONE; or ERROR 18456 (unknown user, wrong password), 4060 + 18456 (unknown database),
  18452 (integrated/NTLM login); or a routing ENVCHANGE to another server;
* SQLBatch (ALL_HEADERS skipped, UCS-2 text) answered from a table of canned results: COLMETADATA /
  ROW / DONE for int and nvarchar columns, ERROR tokens anywhere in the stream, several result sets;
  an unknown batch is `Incorrect syntax` (102). Attention packets get DONE with DONE_ATTN;
* SQL Server Browser (UDP): the CLNT_UCAST_EX answer listing one named instance.

Every session is recorded (`sessions`) so a test can see what the client sent and how it was encrypted.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field

PRELOGIN, REPLY, LOGIN7, BATCH, ATTENTION, SSPI = 0x12, 0x04, 0x10, 0x01, 0x06, 0x11
ENC_OFF, ENC_ON, ENC_NOT_SUP, ENC_REQ = 0, 1, 2, 3
DONE_MORE, DONE_ERROR, DONE_COUNT, DONE_ATTN = 0x01, 0x02, 0x10, 0x20
COLLATION = bytes.fromhex("0904d00034")  # SQL_Latin1_General_CP1_CI_AS
SERVER_NAME = "TDSTEST"


@dataclass
class Rows:
    """One result set: columns as (name, "int" | "nvarchar"), rows as tuples (None = NULL)."""
    columns: list[tuple[str, str]]
    rows: list[tuple] = field(default_factory=list)


@dataclass
class Error:
    number: int
    message: str
    severity: int = 16
    state: int = 1


HANG = "hang"  # a batch answered with silence
CLOSE = "close"  # a batch answered by closing the connection


def _b_varchar(text: str) -> bytes:
    return bytes((len(text),)) + text.encode("utf-16-le")


def _us_varchar(text: str) -> bytes:
    return struct.pack("<H", len(text)) + text.encode("utf-16-le")


def done(status: int = 0, count: int = 0) -> bytes:
    return b"\xfd" + struct.pack("<HHQ", status, 0xC1, count)


def message(number: int, text: str, severity: int = 16, state: int = 1, info: bool = False) -> bytes:
    body = struct.pack("<iBB", number, state, severity) + _us_varchar(text) + _b_varchar(SERVER_NAME) \
        + _b_varchar("") + struct.pack("<i", 1)
    return (b"\xab" if info else b"\xaa") + struct.pack("<H", len(body)) + body


def envchange(kind: int, new: bytes, old: bytes) -> bytes:
    body = bytes((kind,)) + new + old
    return b"\xe3" + struct.pack("<H", len(body)) + body


def loginack() -> bytes:
    body = b"\x01" + bytes.fromhex("74000004") + _b_varchar("Microsoft SQL Server") + bytes((16, 0, 0x03, 0xE8))
    return b"\xad" + struct.pack("<H", len(body)) + body


def result_set(rows: Rows) -> bytes:
    out = bytearray(b"\x81" + struct.pack("<H", len(rows.columns)))
    for name, kind in rows.columns:
        out += struct.pack("<IH", 0, 0x0001)  # user type, flags (nullable)
        out += b"\x26\x04" if kind == "int" else b"\xe7" + struct.pack("<H", 8000) + COLLATION
        out += _b_varchar(name)
    for row in rows.rows:
        out += b"\xd1"
        for (_, kind), value in zip(rows.columns, row):
            if kind == "int":
                out += b"\x00" if value is None else b"\x04" + struct.pack("<i", value)
            else:
                out += b"\xff\xff" if value is None else struct.pack("<H", len(value) * 2) + value.encode("utf-16-le")
    return bytes(out)


def answer(items: list) -> bytes:
    """Token stream for a batch: result sets and errors in order. A statement's DONE follows its rows, or
    the errors after them (then with DONE_ERROR); DONE_MORE on all but the last."""
    if not items:
        return done()
    out = bytearray()
    for i, item in enumerate(items):
        following = items[i + 1] if i + 1 < len(items) else None
        more = DONE_MORE if following is not None else 0
        if isinstance(item, Rows):
            out += result_set(item)
            if not isinstance(following, Error):
                out += done(DONE_COUNT | more, len(item.rows))
        else:
            out += message(item.number, item.message, item.severity, item.state)
            if not isinstance(following, Error):
                out += done(DONE_ERROR | more)
    return bytes(out)


class _Channel:
    """One client connection: TDS messages over the socket, or through TLS once it is on."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.tls: ssl.SSLObject | None = None
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.buffer = bytearray()

    def _fill(self) -> None:
        while True:
            if self.tls is not None:
                try:
                    self.buffer += self.tls.read(65536)
                    return
                except ssl.SSLWantReadError:
                    pass
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            if self.tls is None:
                self.buffer += data
                return
            self.incoming.write(data)

    def read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = bytes(self.buffer[:size]), self.buffer[size:]
        return data

    def read_message(self) -> tuple[int, bytes]:
        payload, kind = bytearray(), None
        while True:
            head = self.read_exact(8)
            kind = head[0] if kind is None else kind
            payload += self.read_exact(struct.unpack(">H", head[2:4])[0] - 8)
            if head[1] & 1:
                return kind, bytes(payload)

    def send_message(self, kind: int, payload: bytes, size: int = 4096) -> None:
        chunks = [payload[i:i + size - 8] for i in range(0, len(payload), size - 8)] or [b""]
        out = bytearray()
        for n, chunk in enumerate(chunks, 1):
            out += bytes((kind, int(n == len(chunks)))) + struct.pack(">HHBB", len(chunk) + 8, 51, n % 256, 0) + chunk
        if self.tls is not None:
            self.tls.write(bytes(out))
            out = bytearray(self.outgoing.read())
        self.sock.sendall(out)

    def handshake(self, ctx: ssl.SSLContext, first: bytes) -> None:
        """Server side of TLS carried in PRELOGIN packets."""
        tls = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.incoming.write(first)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if self.outgoing.pending:
                    self.send_message(PRELOGIN, self.outgoing.read())
                self.incoming.write(self.read_message()[1])
        if self.outgoing.pending:
            self.send_message(PRELOGIN, self.outgoing.read())
        self.tls = tls


def parse_prelogin(payload: bytes) -> dict[int, bytes]:
    options, i = {}, 0
    while i < len(payload) and payload[i] != 0xFF:
        token, offset, length = payload[i], *struct.unpack(">HH", payload[i + 1:i + 5])
        options[token] = payload[offset:offset + length]
        i += 5
    return options


def parse_login7(payload: bytes) -> dict:
    """LOGIN7 fields a test may look at; the password de-obfuscated (swap nibbles after XOR 0xA5)."""
    fields = {}
    names = ["hostname", "user", "password", "app", "server", "extension", "library", "language", "database"]
    for i, name in enumerate(names):
        offset, length = struct.unpack("<HH", payload[36 + 4 * i:40 + 4 * i])
        raw = payload[offset:offset + 2 * length]
        if name == "password":
            raw = bytes((((b ^ 0xA5) << 4) & 0xF0) | ((b ^ 0xA5) >> 4) for b in raw)
        fields[name] = raw.decode("utf-16-le", "replace")
    sspi_offset, sspi_length = struct.unpack("<HH", payload[78:82])
    fields["sspi"] = payload[sspi_offset:sspi_offset + sspi_length]
    fields["tds_version"] = struct.unpack("<I", payload[4:8])[0]
    fields["packet_size"] = struct.unpack("<I", payload[8:12])[0]
    fields["readonly"] = bool(payload[26] & 0x20)
    return fields


class TDSServer:
    """A threaded TDS server on 127.0.0.1. `encryption`: "not_sup", "off" (offers TLS) or "req";
    `tls`: the server context for TLS (capped at TLS 1.2, as TDS 7.x servers); `users`: name -> password; `queries`: batch text (stripped,
    case-insensitive) -> list of Rows/Error, or HANG/CLOSE."""

    def __init__(self, *, encryption: str = "not_sup", tls: ssl.SSLContext | None = None,
                 users: dict[str, str] | None = None, databases: tuple[str, ...] = ("master", "test"),
                 queries: dict | None = None, route_to: tuple[str, int] | None = None,
                 prelogin_encryption: bool = True) -> None:
        self.encryption, self.users, self.databases = encryption, users or {}, databases
        self.queries = {k.strip().lower(): v for k, v in (queries or {}).items()}
        self.route_to, self.prelogin_encryption = route_to, prelogin_encryption
        self.ctx = tls
        if tls is not None:
            tls.maximum_version = ssl.TLSVersion.TLSv1_2
        self.sessions: list[dict] = []
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self.listener.getsockname()[1]
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name=f"tds-{self.port}").start()

    def close(self) -> None:
        self._stop = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in the thread
        except OSError:
            pass
        self.listener.close()
        with self._lock:
            for conn in list(self._conns):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        session: dict = {"batches": [], "tls": None, "closed": False}
        with self._lock:
            self.sessions.append(session)
        channel = _Channel(conn)
        try:
            self._converse(channel, session)
        except Exception as exc:  # noqa: BLE001 - the client went away or broke the protocol: recorded
            session["error"] = repr(exc)
        finally:
            session["closed"] = True
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _reply_encryption(self, client: int) -> int:
        if self.encryption == "not_sup":
            return ENC_NOT_SUP
        if self.encryption == "req":
            return ENC_ON if client == ENC_ON else ENC_REQ
        return ENC_NOT_SUP if client == ENC_NOT_SUP else (ENC_ON if client == ENC_ON else ENC_OFF)

    def _converse(self, channel: _Channel, session: dict) -> None:
        kind, payload = channel.read_message()
        assert kind == PRELOGIN, kind
        options = parse_prelogin(payload)
        client = options.get(1, b"\x02")[0]
        reply = self._reply_encryption(client)
        session.update(client_encryption=client, server_encryption=reply,
                       instance=options.get(2, b"").rstrip(b"\x00").decode("ascii", "replace"))
        values = [(0, bytes((16, 0, 0x03, 0xE8, 0, 0)))]
        if self.prelogin_encryption:
            values.append((1, bytes((reply,))))
        values += [(2, b"\x00"), (3, b""), (4, b"\x00")]
        head, body, offset = bytearray(), bytearray(), 5 * len(values) + 1
        for token, value in values:
            head += struct.pack(">BHH", token, offset + len(body), len(value))
            body += value
        channel.send_message(REPLY, bytes(head + b"\xff" + body))
        kind, payload = channel.read_message()
        if kind == PRELOGIN:  # the client starts TLS
            if self.ctx is None:
                raise EOFError("TLS asked of a server without a certificate")
            channel.handshake(self.ctx, payload)
            session["tls"] = "login" if reply == ENC_OFF else "full"
            kind, payload = channel.read_message()
            if reply == ENC_OFF:
                channel.tls = None  # ENCRYPT_OFF: only the login packet was encrypted
        elif reply in (ENC_ON, ENC_REQ):
            session["refused"] = "plain login to a server requiring encryption"
            return
        assert kind == LOGIN7, kind
        login = parse_login7(payload)
        session["login"] = login
        if not self._login(channel, session, login):
            return
        while True:
            kind, payload = channel.read_message()
            if kind == ATTENTION:
                channel.send_message(REPLY, done(DONE_ATTN))
                continue
            assert kind == BATCH, kind
            headers = struct.unpack("<I", payload[:4])[0]
            text = payload[headers:].decode("utf-16-le")
            session["batches"].append(text)
            spec = self.queries.get(text.strip().lower())
            if spec == HANG:
                while True:
                    channel.read_message()  # answer nothing; attention included
            if spec == CLOSE:
                return
            if spec is None and text.strip().lower().startswith("set "):
                spec = []  # session options (other clients send SET statements after login)
            if spec is None:
                spec = [Error(102, f"Incorrect syntax near '{text.strip().split()[0] if text.strip() else ''}'.", 15)]
            channel.send_message(REPLY, answer(spec))

    def _login(self, channel: _Channel, session: dict, login: dict) -> bool:
        fail = None
        if login["sspi"]:
            fail = [message(18452, "Login failed. The login is from an untrusted domain and cannot be used with "
                                   "Integrated authentication.", 14)]
        elif self.users.get(login["user"]) != login["password"]:
            fail = [message(18456, f"Login failed for user '{login['user']}'.", 14)]
        elif (login["database"] or "master") not in self.databases:
            fail = [message(4060, f'Cannot open database "{login["database"]}" requested by the login. '
                                  "The login failed.", 11),
                    message(18456, f"Login failed for user '{login['user']}'.", 14)]
        if fail:
            channel.send_message(REPLY, b"".join(fail) + done(DONE_ERROR))
            session["login_ok"] = False
            return False
        session["login_ok"] = True
        if self.route_to:
            host, port = self.route_to
            value = struct.pack("<BH", 0, port) + _us_varchar(host)
            route = envchange(20, struct.pack("<H", len(value)) + value, b"\x00\x00")
            channel.send_message(REPLY, loginack() + route + done())
            return False
        database = login["database"] or "master"
        tokens = envchange(1, _b_varchar(database), _b_varchar("master")) \
            + message(5701, f"Changed database context to '{database}'.", 0, info=True) \
            + envchange(7, bytes((5,)) + COLLATION, b"\x00") \
            + envchange(4, _b_varchar("4096"), _b_varchar("4096")) + loginack() + done()
        channel.send_message(REPLY, tokens)
        return True


class BrowserServer:
    """SQL Server Browser on a UDP port: answers CLNT_UCAST_EX (0x03) with one instance."""

    def __init__(self, instance: str, tcp_port: int | str) -> None:
        text = f"ServerName;{SERVER_NAME};InstanceName;{instance};IsClustered;No;Version;16.0.1000.6;tcp;{tcp_port};;"
        self.reply = b"\x05" + struct.pack("<H", len(text)) + text.encode("ascii")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self._closing = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            data, peer = self.sock.recvfrom(64)
            if self._closing:
                return
            self.requests += 1
            if data[:1] == b"\x03":
                self.sock.sendto(self.reply, peer)

    def close(self) -> None:
        """Stop the thread before closing: a socket closed under a blocked recvfrom stays bound."""
        self._closing = True
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as poke:
            poke.sendto(b"", ("127.0.0.1", self.port))
        self._thread.join(5)
        self.sock.close()


def wait_closed(server: TDSServer, timeout: float = 5.0) -> bool:
    """True once the server has no open client connection."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.open_connections() == 0:
            return True
        time.sleep(0.02)
    return False
