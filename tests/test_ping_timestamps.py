"""`ping_ms` ends when the I/O happened, not when the check's coroutine got the loop back.

Each test blocks the event loop (a synchronous sleep, as a burst of other work would) while the
target's answer arrives, then checks that the result's end lies before the block ended: a clock read
on resume cannot pass that. Figures of how close the timing is under load come from
bench/fidelity.py; here the bounds are generous and only the order of events is asserted.
Run on both loops the worker may use (asyncio and uvloop); real peers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
import uvloop

from executors import UP, Monitor
from executors._kit import timing as _timing
from executors import http as http_executor
from executors import tcp as tcp_executor

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
BLOCK = 0.4  # seconds the loop is held while the answer arrives


class DelayedHTTP:
    """A threaded HTTP/1.1 server that answers each request `delay` seconds after reading its head."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.got_request = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                piece = conn.recv(65536)
                if not piece:
                    return
                data += piece
            self.got_request.set()
            time.sleep(self.delay)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            conn.recv(1)  # until the client closes

    def close(self) -> None:
        self.sock.close()


def _run(loop_kind: str, main):
    with asyncio.Runner(loop_factory=LOOPS[loop_kind]) as runner:
        return runner.run(main())


async def _check_while_the_loop_is_blocked(module, monitor: Monitor, block_after: float):
    """Start a check, let it run `block_after` s, hold the loop BLOCK s; (result, when the block ended)."""
    task = asyncio.create_task(module.check(monitor, None, 10.0))
    await asyncio.sleep(block_after)
    time.sleep(BLOCK)  # noqa: ASYNC251 - the point: the loop can run nothing meanwhile
    unblocked = time.time_ns()
    return await task, unblocked


def _http_monitor(port: int) -> Monitor:
    config = {"url": f"http://127.0.0.1:{port}/", "method": "GET", "accepted_statuscodes": ["2XX"]}
    return Monitor(id="m", type="http", timeout=10, config=json.dumps(config))


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_http_end_is_when_the_response_head_arrived_even_if_the_loop_was_busy_then(loop_kind):
    server = DelayedHTTP(0.1)
    try:
        # the request leaves at connect; the answer (100 ms later) arrives while the loop is held
        result, unblocked = _run(loop_kind, lambda: _check_while_the_loop_is_blocked(
            http_executor, _http_monitor(server.port), 0.01))
    finally:
        server.close()
    assert result.status == UP, result.message
    assert result.end_ns < unblocked, "end_time was read when the check resumed, not when the head arrived"
    assert 100 <= result.ping_ms < 100 + BLOCK * 1000 / 2  # the server's 100 ms, not the loop's hold


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_http_request_is_sent_when_the_socket_connects_not_when_the_check_resumes(loop_kind):
    server = DelayedHTTP(0.0)
    sent_during_block = []

    async def main():
        task = asyncio.create_task(http_executor.check(_http_monitor(server.port), None, 10.0))
        await asyncio.sleep(0)  # the check's first step: dial (and, on loopback, connect)
        time.sleep(BLOCK / 2)  # noqa: ASYNC251
        sent_during_block.append(server.got_request.is_set())
        return await task

    try:
        result = _run(loop_kind, main)
    finally:
        server.close()
    assert result.status == UP, result.message
    assert sent_during_block == [True], "the request waited for the coroutine instead of the connection"


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_http_phase_timings_fit_inside_the_ping(loop_kind):
    server = DelayedHTTP(0.1)
    try:
        result = _run(loop_kind, lambda: http_executor.check(_http_monitor(server.port), None, 10.0))
    finally:
        server.close()
    t = result.timings
    assert result.status == UP, result.message
    assert t["ttfb"] >= 100  # request sent to first byte holds the server's delay
    assert t["dns"] == 0 and t["tls"] == 0  # an IP literal over plain http
    assert t["connect"] + t["ttfb"] <= result.ping_ms + 1  # phases are parts of the measured interval
    assert t["transfer"] >= 0


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_tcp_end_is_when_the_handshake_completed_even_if_the_loop_was_busy_then(loop_kind):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    monitor = Monitor(id="m", type="tcp", timeout=10, config=json.dumps({"host": "127.0.0.1", "port": port}))
    try:
        result, unblocked = _run(loop_kind, lambda: _check_while_the_loop_is_blocked(tcp_executor, monitor, 0))
    finally:
        listener.close()
    assert result.status == UP, result.message
    assert result.end_ns < unblocked, "end_time was read when the check resumed, not when the handshake completed"
    assert result.ping_ms < BLOCK * 1000 / 2


def test_stamps_give_the_time_of_the_read_that_completed_an_offset():
    stamps = _timing.Stamps()
    stamps.mark(10, 1_000)  # bytes 0-9
    stamps.mark(15, 2_000)  # bytes 10-24
    assert stamps.through(10) == 1_000  # a head ending with byte 9 arrived in the first read
    assert stamps.through(11) == 2_000
    assert stamps.first() == 1_000
    stamps.restart()  # a new request: earlier reads no longer count as its answer
    stamps.mark(5, 3_000)
    assert stamps.fed == 30 and stamps.through(30) == 3_000 and stamps.first() == 3_000


def test_kernel_stamp_of_a_plain_socket_read_is_when_the_data_arrived():
    listener = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(listener.getsockname())
    b, _ = listener.accept()
    with listener, a, b:
        if not _timing.rx_stamps_on(a):
            pytest.skip("no SO_TIMESTAMPNS on this platform")
        time.sleep(0.05)  # the kernel switches stamping on through a work queue
        b.sendall(b"x")
        sent = time.time_ns()
        time.sleep(0.2)
        data, ancillary, _, _ = a.recvmsg(16, _timing.ANCILLARY)
        stamp = _timing.rx_stamp(ancillary)
    assert data == b"x"
    assert 0 < stamp <= sent + 100_000_000  # the arrival, not the read 200 ms later
