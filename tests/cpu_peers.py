"""Targets that cost a checker CPU or memory, served by a separate process so the harness does not
share their GIL: a gzip bomb (1 MB of gzip inflating to 1 GiB of zeros), a 1 MiB deeply nested
JSON body, a healthy page answering after a fixed delay, and a sink that reads a request body.

`python cpu_peers.py` prints the port on its first line and serves until stdin closes:
  /bomb          gzip bomb; `keyword-at-start` (a marker before the zeros) and `keyword-at-end` (after them)
  /endless-bomb  gzip members of 16 MiB of zeros, chunked, until the client hangs up
  /deep          1 MiB of nested JSON arrays
  /healthy       `healthy` after DELAY seconds
  /sink          reads the request body, answers 200 at once
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import zlib
from pathlib import Path

BOMB_BYTES = 1 << 30
DELAY = 0.1
DEEP_BYTES = 1 << 20


def gzip_bomb(size: int = BOMB_BYTES, head: bytes = b"", tail: bytes = b"") -> bytes:
    """One gzip member of `head`, `size` zero bytes, `tail` (~1 KB of gzip per MB of zeros)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    parts = [comp.compress(head)]
    left = size
    while left > 0:
        step = min(left, len(zeros))
        parts.append(comp.compress(zeros[:step]))
        left -= step
    parts.append(comp.compress(tail))
    parts.append(comp.flush())
    return b"".join(parts)


def deep_json(size: int = DEEP_BYTES) -> bytes:
    return b"[" * (size // 2) + b"]" * (size // 2)


async def serve() -> None:
    loop = asyncio.get_running_loop()
    bombs = {
        "/bomb": await loop.run_in_executor(None, gzip_bomb, BOMB_BYTES, b"keyword-at-start ", b" keyword-at-end"),
    }
    deep = deep_json()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1].split("?")[0]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                while length > 0:  # read and drop the request body
                    chunk = await reader.read(min(length, 1 << 16))
                    if not chunk:
                        return
                    length -= len(chunk)
                extra = b""
                if path == "/endless-bomb":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n")
                    member = gzip_bomb(16 << 20)
                    chunk = b"%x\r\n%s\r\n" % (len(member), member)
                    while True:
                        writer.write(chunk)
                        await writer.drain()
                if path in bombs:
                    body, extra = bombs[path], b"Content-Encoding: gzip\r\n"
                elif path == "/deep":
                    body, extra = deep, b"Content-Type: application/json\r\n"
                elif path == "/healthy":
                    await asyncio.sleep(DELAY)
                    body = b"healthy"
                else:
                    body = b"ok"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra))
                writer.write(body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024, limit=1 << 20)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    server.close()



def start() -> tuple[subprocess.Popen, int]:
    """Run the peers in a child process; returns it and the port. Close its stdin to stop it."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.strip().isdigit():
        proc.kill()
        raise RuntimeError("cpu_peers did not start")
    return proc, int(line)


def stop(proc: subprocess.Popen) -> None:
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(10)
    except Exception:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    asyncio.run(serve())


async def with_lag(coro) -> tuple[object, float, float]:
    """(result, CPU seconds of this process, longest loop stall) while `coro` runs: a 5 ms ticker
    measures the longest time the event loop did not turn."""
    lags = [0.0]
    done = asyncio.Event()

    async def tick() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - started - 0.005)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.02)
    cpu = time.process_time()
    try:
        result = await coro
    finally:
        cpu = time.process_time() - cpu
        done.set()
        await ticker  # its last tick measures a stall that lasted until `coro` returned
    return result, cpu, max(lags)
