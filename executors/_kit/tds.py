"""TDS transport for the sqlserver executor: the socket python-tds talks to (`Wire`), with what
python-tds lacks: go-mssqldb's encryption negotiation with TLS-in-TDS on the standard ssl module, the
check's deadline on every read and write, receive timestamps, and an abort for the event loop (at the
budget the socket is shut down, so a read blocked in the session's thread returns at once).

Failures raise `GoError` in go-mssqldb's words (the executor adds the Peekaping prefix).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import ssl
import threading
import time

from executors._kit import timing as _timing
from executors._kit import tls as _tls
from executors._kit.gotext import join_host_port, os_error_text

OFF, REQUIRED, DISABLED = 0, 1, 3  # go-mssqldb's Encryption settings
ENC_OFF, ENC_ON, ENC_NOT_SUP = 0, 1, 2  # PRELOGIN ENCRYPTION values
PRELOGIN, LOGIN7 = 0x12, 0x10  # TDS packet types


class GoError(Exception):
    """A driver-level failure in go-mssqldb's words (the caller adds the Peekaping prefix)."""


_contexts: dict[tuple, ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def _tls_context(verify: bool, ca_pem: str | None) -> ssl.SSLContext:
    """Client contexts, built once per (verify, trust anchors): building one takes ~20 ms of CPU."""
    key = (verify, hashlib.sha256(ca_pem.encode()).digest() if ca_pem is not None else
           (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")))
    with _contexts_lock:
        if key in _contexts:
            return _contexts[key]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # Go's client default
    if not verify:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    elif ca_pem is None:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:  # x509.CertPool.AppendCertsFromPEM: what does not parse is skipped
        for block in re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", ca_pem, re.DOTALL):
            try:
                ctx.load_verify_locations(cadata=block)
            except ssl.SSLError:
                pass
    ctx.sslobject_class = _tls.CapturingSSLObject  # keeps the peer chain for Go's x509 error texts
    with _contexts_lock:
        if len(_contexts) >= 32:
            _contexts.clear()
        _contexts[key] = ctx
    return ctx


def _packets(kind: int, data: bytes, size: int = 4096) -> bytes:
    """`data` as TDS packets of at most `size` bytes, the last marked end-of-message."""
    chunks = [data[i:i + size - 8] for i in range(0, len(data), size - 8)] or [b""]
    return b"".join(bytes((kind, int(n == len(chunks)))) + (len(chunk) + 8).to_bytes(2, "big")
                    + bytes((0, 0, n % 256, 0)) + chunk for n, chunk in enumerate(chunks, 1))


def _prelogin_option(payload: bytes | bytearray, token: int) -> int | None:
    """Offset of a PRELOGIN option's value in the payload (None when absent)."""
    i = 0
    while i + 5 <= len(payload) and payload[i] != 0xFF:
        if payload[i] == token:
            offset, length = int.from_bytes(payload[i + 1:i + 3], "big"), int.from_bytes(payload[i + 3:i + 5], "big")
            return offset if length >= 1 and offset < len(payload) else None
        i += 5
    return None


class Wire:
    """The socket python-tds talks to (see the module docstring). Used by the session thread, except
    `abort`, which the event loop calls."""

    def __init__(self, sock: socket.socket, deadline: float, timings: dict[str, float], server_name: str, *,
                 encryption: int, verify: bool, ca_pem: str | None, op_timeout: float) -> None:
        self.sock, self.deadline, self.timings, self.began = sock, deadline, timings, time.perf_counter()
        self.server_name, self.encryption, self.verify, self.ca_pem = server_name, encryption, verify, ca_pem
        self.op_timeout = op_timeout  # go-mssqldb's `connection timeout`: seconds per read or write, 0 = none
        self.stage = "connection failed: "  # the message prefix of a failure now
        self.state = "prelogin"  # -> "negotiate" (PRELOGIN sent) -> "login" (reply handed over)
        self.pending = b""
        self.tls: ssl.SSLObject | None = None
        self.tls_login_only = False
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.lock = threading.Lock()
        self.aborted = self.closed = False
        self.stamped = _timing.rx_stamps_on(sock)
        self.last_rx = time.time_ns()
        try:
            self.route = f"{join_host_port(*sock.getsockname()[:2])}->{join_host_port(*sock.getpeername()[:2])}"
        except OSError:
            self.route = "?"

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = round((now - self.began) * 1000, 3)
        self.began = now

    def abort(self) -> None:
        """From the event loop: end the connection now; a read blocked in the thread returns at once."""
        with self.lock:
            self.aborted = True
            if not self.closed:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def release(self) -> None:
        """From the thread, when the session is over: close the socket."""
        with self.lock:
            self.closed = True
            self.sock.close()

    # -- python-tds's transport interface
    def gettimeout(self) -> float | None:
        return None

    def settimeout(self, timeout: float | None) -> None:
        pass  # every read and write has the check's deadline

    def close(self) -> None:
        pass  # release() closes when the thread is done

    def sendall(self, data: bytes | bytearray, flags: int = 0) -> None:
        data = bytearray(data)
        if self.state == "prelogin" and data[:1] == bytes((PRELOGIN,)):
            offset = _prelogin_option(data[8:], 1)  # ENCRYPTION: go-mssqldb's value, not python-tds's
            if offset is not None:
                data[8 + offset] = {OFF: ENC_OFF, REQUIRED: ENC_ON, DISABLED: ENC_NOT_SUP}[self.encryption]
            self.state = "negotiate"
        if self.tls is None:
            return self._send(data)
        self.tls.write(data)
        self._send(self.outgoing.read())
        if self.tls_login_only and data[0] == LOGIN7 and data[1] & 1:
            self.tls = None  # ENCRYPT_OFF: only the login travels encrypted

    def recv_into(self, buffer, size: int = 0, flags: int = 0) -> int:
        size = size or len(buffer)
        if self.state == "negotiate":
            self.pending, self.state = self._negotiate(), "login"
        if self.pending:
            data, self.pending = self.pending[:size], self.pending[size:]
        else:
            data = self._tls_read(size) if self.tls is not None else self._recv(size)
        buffer[:len(data)] = data
        return len(data)

    def recv(self, size: int, flags: int = 0) -> bytes:
        buffer = bytearray(size)
        return bytes(buffer[:self.recv_into(buffer, size)])

    # -- encryption, as go-mssqldb negotiates it
    def _negotiate(self) -> bytes:
        """Read the server's PRELOGIN reply and run TLS if it asks for it; python-tds gets the reply with
        ENCRYPT_NOT_SUP, so that it never tries TLS itself."""
        payload = self._read_message()
        offset = _prelogin_option(payload, 1)
        if offset is None:
            raise GoError("encrypt negotiation failed")
        reply = payload[offset]
        if self.encryption == REQUIRED and reply in (ENC_NOT_SUP, ENC_OFF):
            raise GoError("server does not support encryption")
        self.mark("prelogin")
        if reply != ENC_NOT_SUP:
            self._handshake()
            self.tls_login_only = reply == ENC_OFF
            self.mark("tls")
        payload[offset] = ENC_NOT_SUP
        return _packets(0x04, bytes(payload), 1 << 16)

    def _handshake(self) -> None:
        """TLS with the handshake carried in PRELOGIN packets, records bare on the wire afterwards."""
        verify = self.verify or self.encryption == DISABLED  # disabled, yet the server insists: Go verifies
        if verify and not self.server_name:
            raise GoError("TLS Handshake failed: tls: either ServerName or InsecureSkipVerify must be specified "
                          "in the tls.Config")
        ctx = _tls_context(verify, self.ca_pem if self.encryption != DISABLED else None)
        tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=self.server_name or None)
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if self.outgoing.pending:
                        self._send(_packets(PRELOGIN, self.outgoing.read()))
                    self.incoming.write(self._read_message())
            if self.outgoing.pending:
                self._send(_packets(PRELOGIN, self.outgoing.read()))
        except (ssl.SSLError, ssl.CertificateError) as exc:
            if self.outgoing.pending:  # the alert, so the server learns why
                try:
                    self._send(_packets(PRELOGIN, self.outgoing.read()))
                except GoError:
                    pass
            raise GoError("TLS Handshake failed: " + _tls.tls_error_text(exc, self.server_name)) from None
        except GoError as exc:
            raise GoError(f"TLS Handshake failed: {exc}") from None
        self.tls = tls

    def _tls_read(self, size: int) -> bytes:
        while True:
            try:
                return self.tls.read(size)
            except ssl.SSLWantReadError:
                data = self._recv(1 << 16)
                if not data:
                    return b""
                self.incoming.write(data)
            except ssl.SSLZeroReturnError:
                return b""
            except ssl.SSLError as exc:
                raise GoError(_tls.tls_error_text(exc, self.server_name)) from None

    def _read_message(self) -> bytearray:
        """One whole TDS message (all its packets) from the socket; the payload."""
        payload = bytearray()
        while True:
            head = self._read_exact(8)
            length = int.from_bytes(head[2:4], "big")
            if length < 8:
                raise GoError("invalid packet size, it is shorter than header size")
            payload += self._read_exact(length - 8)
            if head[1] & 1:
                return payload

    def _read_exact(self, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            data = self._recv(size - len(out))
            if not data:
                raise GoError("unexpected EOF" if out else "EOF")
            out += data
        return bytes(out)

    # -- the socket, bounded by the deadline and the per-operation limit
    def _timeout(self, op: str) -> float:
        left = self.deadline - time.monotonic()
        if self.aborted or left <= 0:
            raise GoError(f"{op} tcp {self.route}: i/o timeout")
        return min(left, self.op_timeout) if self.op_timeout else left

    def _send(self, data: bytes | bytearray) -> None:
        self.sock.settimeout(self._timeout("write"))
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise GoError(f"write tcp {self.route}: i/o timeout") from None
        except OSError as exc:
            raise GoError(f"write tcp {self.route}: write: {os_error_text(exc)}") from None

    def _recv(self, size: int) -> bytes:
        self.sock.settimeout(self._timeout("read"))
        try:
            if self.stamped:
                data, ancillary, _, _ = self.sock.recvmsg(size, _timing.ANCILLARY)
                stamp = _timing.rx_stamp(ancillary)
            else:
                data, stamp = self.sock.recv(size), 0
        except TimeoutError:
            raise GoError(f"read tcp {self.route}: i/o timeout") from None
        except OSError as exc:
            raise GoError(f"read tcp {self.route}: read: {os_error_text(exc)}") from None
        if self.aborted:
            raise GoError(f"read tcp {self.route}: i/o timeout")
        self.last_rx = stamp or time.time_ns()
        return data
