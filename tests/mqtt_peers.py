"""Peers for the `mqtt` executor tests: a private Mosquitto (password file made with mosquitto_passwd,
an ACL, a TLS listener with a trustme test CA, a log of its connections), a scripted broker for what
Mosquitto never does (refusing MQTT 3.1.1, never answering SUBSCRIBE, QoS 1 deliveries, odd packets),
and a publisher speaking raw MQTT 3.1.1 (the tests never publish with the code under test).

Certificates, keys and the password file live in a private temporary directory removed when the peer
stops (and at exit).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading

from conftest import free_port, stop_process, wait_for_port

USER, PASSWORD = "tester", "Mqtt-Pass-4c9e21"
ALL_PASSWORDS = (PASSWORD,)


class Mosquitto:
    """A private broker: `port` needs USER/PASSWORD and applies the ACL (USER reads everything but
    `secret/#`), `tls_port` is the same behind TLS with a certificate for `localhost` from a test CA,
    `anon_port` lets anyone in. Connections are logged to `log_path`."""

    def __init__(self) -> None:
        import trustme

        self.dir = tempfile.mkdtemp(prefix="pw-mqtt-")  # mode 0700
        atexit.register(shutil.rmtree, self.dir, True)
        ca = trustme.CA()
        self.ca_file, self.other_ca_file = self._path("ca.pem"), self._path("other-ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        trustme.CA().cert_pem.write_to_path(self.other_ca_file)
        leaf = ca.issue_cert("localhost")
        leaf.private_key_pem.write_to_path(self._path("server.key"))
        with open(self._path("server.pem"), "wb") as fh:
            fh.writelines(blob.bytes() for blob in leaf.cert_chain_pems)
        subprocess.run(["mosquitto_passwd", "-b", "-c", self._path("passwd"), USER, PASSWORD], check=True,
                       capture_output=True)
        with open(self._path("acl"), "w") as fh:
            fh.write(f"user {USER}\ntopic deny secret/#\ntopic readwrite #\n")
        self.port, self.tls_port, self.anon_port = free_port(), free_port(), free_port()
        self.log_path = self._path("mosquitto.log")
        secured = (f"allow_anonymous false\npassword_file {self._path('passwd')}\nacl_file {self._path('acl')}\n")
        config = (f"per_listener_settings true\npersistence false\nuser {pwd.getpwuid(os.getuid()).pw_name}\n"
                  f"log_dest file {self.log_path}\nlog_type all\nconnection_messages true\n"
                  f"listener {self.port} 127.0.0.1\n{secured}"
                  f"listener {self.tls_port} 127.0.0.1\n{secured}certfile {self._path('server.pem')}\n"
                  f"keyfile {self._path('server.key')}\n"
                  f"listener {self.anon_port} 127.0.0.1\nallow_anonymous true\n")
        with open(self._path("mosquitto.conf"), "w") as fh:
            fh.write(config)
        self.proc = subprocess.Popen(["mosquitto", "-c", self._path("mosquitto.conf")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for port in (self.port, self.tls_port, self.anon_port):
            wait_for_port(port, "mosquitto", 10, proc=self.proc, log=lambda: self.log()[-2000:])

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:  # not yet written
            return ""

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, True)


# --------------------------------------------------------------------------------------------------
# A publisher in raw MQTT 3.1.1 (blocking sockets)

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def publish(port: int, topic: str, payload: bytes | str, retain: bool = False, user: str = "",
            password: str = "") -> None:
    """CONNECT, PUBLISH at QoS 0, DISCONNECT; raises if the broker refuses the connection."""
    payload = payload.encode() if isinstance(payload, str) else payload
    flags = 0x02 | (0xC0 if user else 0)
    body = _utf8("MQTT") + bytes([4, flags]) + (30).to_bytes(2, "big") + _utf8(f"pub-{os.urandom(4).hex()}")
    if user:
        body += _utf8(user) + _utf8(password)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"\x10" + _varint(len(body)) + body)
        connack = sock.recv(4)
        if connack[:2] != b"\x20\x02" or connack[3:4] != b"\x00":
            raise RuntimeError(f"publisher refused: {connack!r}")
        message = _utf8(topic) + payload
        sock.sendall(bytes([0x30 | (1 if retain else 0)]) + _varint(len(message)) + message + b"\xe0\x00")


class Repeater:
    """Publishes the same message every `every` seconds until stopped: a live (not retained) message
    reaches a check whatever moment its subscription starts."""

    def __init__(self, port: int, topic: str, payload: bytes | str, every: float = 0.1, **login: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(port, topic, payload, every, login), daemon=True)
        self._thread.start()

    def _run(self, port: int, topic: str, payload: bytes | str, every: float, login: dict) -> None:
        while not self._stop.is_set():
            publish(port, topic, payload, **login)
            self._stop.wait(every)

    def __enter__(self) -> Repeater:
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


# --------------------------------------------------------------------------------------------------
# A scripted broker

class ScriptedBroker:
    """An asyncio server in a thread answering each connection as `behaviour` says:
    `v31-only` refuses MQTT 3.1.1 (CONNACK 1) and serves 3.1; `no-suback` never answers SUBSCRIBE;
    `suback-refused` answers it with 0x80; `qos1` delivers at QoS 1 and records the PUBACK;
    `not-connack` answers CONNECT with a PINGRESP; `eof` closes after CONNECT; `drop` closes after the
    SUBACK; `other-topic` delivers a message on a topic the filter does not match, then nothing; any
    other behaviour delivers one message on the subscribed topic. `connects` lists the protocol levels
    of the CONNECTs seen, `pubacks` the PUBACK bodies."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.connects: list[int] = []
        self.pubacks: list[bytes] = []
        self.port = 0
        self._tasks: set[asyncio.Task] = set()
        ready = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(ready),), daemon=True)
        self.thread.start()
        if not ready.wait(5):
            raise RuntimeError("the scripted broker did not start")

    async def _main(self, ready: threading.Event) -> None:
        self.loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await self._stopping.wait()
            server.close()
            if self._tasks:  # connections the client has just closed finish on their own
                await asyncio.wait(self._tasks, timeout=1)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _packet(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        first = (await reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first >> 4, await reader.readexactly(length)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # a cancelled connection task ends quietly (asyncio's stream callback would log it)
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _script(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, body = await self._packet(reader)  # CONNECT
        level = body[2 + int.from_bytes(body[:2], "big")]
        self.connects.append(level)
        behaviour = self.behaviour
        if behaviour == "eof":
            return
        if behaviour == "not-connack" or behaviour == "v31-only" and level == 4:
            writer.write(b"\xd0\x00" if behaviour == "not-connack" else b"\x20\x02\x00\x01")
            await reader.read()
            return
        writer.write(b"\x20\x02\x00\x00")
        _, body = await self._packet(reader)  # SUBSCRIBE
        packet_id, size = body[:2], int.from_bytes(body[2:4], "big")
        topic = body[4:4 + size].decode()
        if behaviour == "no-suback":
            await reader.read()
            return
        writer.write(b"\x90\x03" + packet_id + (b"\x80" if behaviour == "suback-refused" else b"\x00"))
        if behaviour == "drop":
            return
        if behaviour == "other-topic":
            message = _utf8("elsewhere/x") + b"not for you"
            writer.write(b"\x30" + _varint(len(message)) + message)
        elif behaviour == "qos1":
            message = _utf8(topic) + b"\x00\x07" + b"delivered at QoS 1"
            writer.write(b"\x32" + _varint(len(message)) + message)
            kind, body = await self._packet(reader)
            if kind == 4:
                self.pubacks.append(body)
        else:
            message = _utf8(topic) + f"hello over protocol level {level}".encode()
            writer.write(b"\x30" + _varint(len(message)) + message)
        await reader.read()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stopping.set)
        self.thread.join(5)
