"""Real WebSocket peers for the websocket executor tests, all on 127.0.0.1: `websockets` servers (plain,
with subprotocols, wss with the test CA's certificate, wss self-signed) on one asyncio loop in a
background thread, and raw socket servers that misbehave on purpose (a 101 with a wrong
Sec-WebSocket-Accept, a 101 after which the server never answers the close frame).

Routes of the `websockets` servers (by request path):
  /echo        echo every message back
  /hello       send "hello subprotocol=<negotiated or none>" at once, then echo
  /headers     send the request headers, one "Name: value" per line, then echo
  /close/CODE  close at once with CODE and the reason "bye CODE"
  /fragments   send "frag" "mented" "-message" as one fragmented text message, then echo
  /binary      send the bytes 00 ff 'bin-keyword' 00 as a binary message, then echo
  /silent      send nothing (the close handshake still works)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import threading

from conftest import TcpPeer

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def _route(ws) -> None:
    path = ws.request.path
    try:
        if path == "/hello":
            await ws.send(f"hello subprotocol={ws.subprotocol or 'none'}")
        elif path == "/headers":
            await ws.send("\n".join(f"{k}: {v}" for k, v in ws.request.headers.raw_items()))
        elif path.startswith("/close/"):
            code = int(path.rsplit("/", 1)[1])
            await ws.close(code, f"bye {code}")
            return
        elif path == "/fragments":
            await ws.send(iter(["frag", "mented", "-message"]))
        elif path == "/binary":
            await ws.send(b"\x00\xffbin-keyword\x00")
        elif path == "/silent":
            await ws.wait_closed()
            return
        async for message in ws:
            await ws.send(message)
    except Exception:  # clients that vanish mid-exchange are part of the tests
        pass


class WSPeers:
    """The `websockets` servers: `ws` (no subprotocol), `chat` (accepts chat or superchat, requires one),
    `wss` (certificate from the test CA for localhost/127.0.0.1), `wss-self` (self-signed)."""

    def __init__(self) -> None:
        from http_peers import certs

        c = certs()
        self.contexts = {"ws": None, "chat": None, "wss": c.server_context(c.leaf),
                         "wss-self": c.server_context(c.self_signed)}
        self.ports: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        if not self._ready.wait(15) or self._error is not None:
            raise RuntimeError(f"websockets servers did not start: {self._error!r}")

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        self._stop = asyncio.Event()
        servers = []
        try:
            for name, ctx in self.contexts.items():
                options = {"subprotocols": ["chat", "superchat"]} if name == "chat" else {}
                server = await serve(_route, "127.0.0.1", 0, ssl=ctx, ping_interval=None, **options)
                self.ports[name] = server.sockets[0].getsockname()[1]
                servers.append(server)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        self._ready.set()
        await self._stop.wait()
        for server in servers:
            server.close()
            await server.wait_closed()

    def url(self, kind: str = "ws", path: str = "/echo", host: str = "127.0.0.1") -> str:
        scheme = "wss" if kind.startswith("wss") else "ws"
        return f"{scheme}://{host}:{self.ports[kind]}{path}"

    def close(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


class RawPeer(TcpPeer):
    """A socket server speaking just enough of the upgrade to misbehave: `bad-accept` answers 101 with
    a wrong Sec-WebSocket-Accept; `no-close` completes the upgrade correctly, then never reads or
    writes again (a close frame sent to it is never answered); `http10-open` answers
    `HTTP/1.0 200 OK` with a body that never ends (the connection stays open)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(backlog=128)

    def url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            key = b""
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            if self.kind == "http10-open":
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>still loading")
                self.stopped.wait(30)
                return
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            if self.kind == "bad-accept":
                accept = base64.b64encode(hashlib.sha1(b"not the key" + GUID).digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            self.stopped.wait(30)  # keep the connection open and silent
        except OSError:
            pass
        finally:
            conn.close()


_shared: dict[str, object] = {}
_lock = threading.Lock()


def peers() -> WSPeers:
    """One set of `websockets` servers per test process (also for tests in other files, e.g. the
    `peekaping-worker types` example, which needs a local echo server)."""
    with _lock:
        if "peers" not in _shared:
            _shared["peers"] = WSPeers()
        return _shared["peers"]  # type: ignore[return-value]
