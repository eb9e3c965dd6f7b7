"""Bounds every executor gets by using these helpers: a target (or a config) decides how much data
arrives, so what it costs in memory and CPU must be capped here, not in each executor.

* `max_body_bytes()`: the body cap (HTTP_MAX_BODY_BYTES, default 1 MiB). No executor keeps or
  decodes more of anything a target sends; the rest is read and dropped, or the connection closed.
* `Inflater`: gzip decoding that stops at the cap. Compressed bytes past it are drained raw, never
  inflated, so a 1 MB gzip bomb inflating to 1 GB costs what reading 1 MB costs.
* `offload(fn, *args)`: run work whose cost depends on what a target sent (JSON decoding, GJSON
  queries, charset decoding, searching). It starts on the loop with a 2 ms budget; work that is not
  done by then is abandoned and redone on a lane of two threads, so the loop keeps turning. `fn` must
  be free of side effects (it may run twice) and must call `checkpoint()` in its loops: that is where
  work moves off the loop, and where it stops once its check timed out (so its CPU ends with the
  check). Threads rather than slices on the loop: a lane call costs ~45 us against ~0.5 us inline,
  and Python code on the lane stalls the loop at most a GIL switch interval (5 ms) at a time (15 ms
  measured). A single C call holds the GIL throughout: json.loads/dumps of 1 MiB are 20-45 ms each,
  which the body cap bounds. `python bench/bench_hostile.py` prints these figures.
* `BoundedCache`: an LRU bounded in bytes as well as entries, for caches keyed by config or URL.
* `trim_memory()` / `trim_soon()`: hand freed heap back to the OS (glibc keeps it otherwise) after
  large configs or bodies went through.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import queue
import threading
import time
import zlib
from collections import OrderedDict
from typing import Any, Callable, Hashable, TypeVar

T = TypeVar("T")

DEFAULT_MAX_BODY = 1 << 20
INFLATE_STEP = 64 * 1024  # output per zlib call: one call is a few hundred microseconds at most
INLINE_BUDGET = 0.002  # seconds of body work allowed on the loop before it moves to the lane
LANE_THREADS = 2  # at most this many threads compete with the loop for the GIL
LARGE = 256 * 1024  # configs or bodies this big ask for a heap trim once the burst is over
TRIM_DELAY = 2.0  # seconds after the last large config or body
TRIM_MAX_WAIT = 30.0  # a steady stream of large ones still gets a trim this often


def max_body_bytes() -> int:
    """HTTP_MAX_BODY_BYTES (default 1 MiB): how much of what a target sends is kept and decoded."""
    raw = os.environ.get("HTTP_MAX_BODY_BYTES", "")
    try:
        value = int(raw)
    except ValueError:
        return DEFAULT_MAX_BODY
    return value if value >= 0 else DEFAULT_MAX_BODY


class InflateError(Exception):
    """The compressed stream is broken; str(exc) is Go's compress/gzip wording."""


class Inflater:
    """gzip (multistream, as Go reads it) decoded up to `cap` output bytes; input past that is dropped.

    `feed` returns after at most `cap` bytes of output in total, in steps of INFLATE_STEP, so the CPU
    a stream costs is bounded by the cap whatever its compression ratio.
    """

    __slots__ = ("dec", "cap", "produced", "capped")

    def __init__(self, cap: int) -> None:
        self.dec: Any = None
        self.cap = cap
        self.produced = 0
        self.capped = cap <= 0

    def feed(self, data: bytes, out: bytearray, keep: int) -> None:
        """Inflate `data`, appending to `out` while it holds fewer than `keep` bytes."""
        while data and not self.capped:
            if self.dec is None:
                self.dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
            step = min(INFLATE_STEP, self.cap - self.produced)
            try:
                chunk = self.dec.decompress(data, step)
            except zlib.error as exc:
                text = str(exc)
                if "header" in text:
                    raise InflateError("gzip: invalid header") from None
                if "check" in text or "crc" in text.lower():
                    raise InflateError("gzip: invalid checksum") from None
                raise InflateError("flate: corrupt input") from None
            self.produced += len(chunk)
            if len(out) < keep:
                out += chunk[:keep - len(out)]
            if self.dec.eof:
                data = self.dec.unused_data
                self.dec = None  # another gzip member may follow
            elif self.produced >= self.cap:
                self.capped = True  # the rest of the stream is read and dropped, never inflated
            elif self.dec.unconsumed_tail:
                data = self.dec.unconsumed_tail
            elif len(chunk) == step:
                data = b""  # output still buffered inside zlib: drain it without new input
                while not self.capped and self.dec is not None:
                    step = min(INFLATE_STEP, self.cap - self.produced)
                    chunk = self.dec.decompress(b"", step)
                    self.produced += len(chunk)
                    if len(out) < keep:
                        out += chunk[:keep - len(out)]
                    if self.dec.eof:
                        data = self.dec.unused_data
                        self.dec = None
                    elif self.produced >= self.cap:
                        self.capped = True
                    elif len(chunk) < step:
                        break
            else:
                data = b""

    def finish(self) -> None:
        """At the end of the body: a member cut short is Go's `unexpected EOF` (unless capped)."""
        if self.dec is not None and not self.capped:
            raise InflateError("unexpected EOF")


# --------------------------------------------------------------------------------------------------
# Work off the loop

class Abandoned(Exception):
    """Raised by `checkpoint()` inside work whose result is no longer wanted (or must move off the loop)."""


class _Job:
    __slots__ = ("fn", "args", "deadline", "cancelled", "future", "loop")

    def __init__(self, fn: Callable, args: tuple, deadline: float) -> None:
        self.fn, self.args, self.deadline = fn, args, deadline
        self.cancelled = False
        self.future: asyncio.Future | None = None
        self.loop: asyncio.AbstractEventLoop | None = None


_state = threading.local()


def checkpoint() -> None:
    """Stop here when the running work was cancelled or ran out of its slice (cost: ~0.1 us)."""
    job = getattr(_state, "job", None)
    if job is not None and (job.cancelled or time.monotonic() > job.deadline):
        raise Abandoned


class _Lane:
    """LANE_THREADS daemon threads (started on first use) running offloaded jobs in order; a job
    cancelled while queued is skipped, one cancelled while running stops at its next checkpoint."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.started = False
        self.lock = threading.Lock()

    def submit(self, job: _Job) -> None:
        if not self.started:
            with self.lock:
                if not self.started:
                    for _ in range(self.threads):
                        threading.Thread(target=self._work, name="body-work", daemon=True).start()
                    self.started = True
        self.jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job.cancelled:
                continue
            _state.job = job
            try:
                outcome: tuple[bool, Any] = (True, job.fn(*job.args))
            except BaseException as exc:  # handed to the awaiting check
                outcome = (False, exc)
            finally:
                _state.job = None
            if not job.cancelled and job.loop is not None:
                try:
                    job.loop.call_soon_threadsafe(_settle, job.future, outcome)
                except RuntimeError:  # the loop closed meanwhile
                    pass


def _settle(future: asyncio.Future | None, outcome: tuple[bool, Any]) -> None:
    if future is None or future.done():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


_lane = _Lane(LANE_THREADS)


async def offload(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args), on the loop if it finishes within INLINE_BUDGET, else on the lane threads.

    Cancelling the caller (its check timed out) stops the work at its next `checkpoint()`.
    """
    job = _Job(fn, args, time.monotonic() + INLINE_BUDGET)
    outer = getattr(_state, "job", None)
    _state.job = job
    try:
        return fn(*args)
    except Abandoned:
        pass
    finally:
        _state.job = outer
    job.deadline = float("inf")
    loop = asyncio.get_running_loop()
    job.loop, job.future = loop, loop.create_future()
    _lane.submit(job)
    try:
        return await job.future
    finally:
        job.cancelled = True  # done, failed or cancelled: nothing more to compute


# --------------------------------------------------------------------------------------------------
# Caches bounded in bytes

class BoundedCache:
    """LRU mapping bounded by `max_entries` and by the summed `cost` (bytes) of its values.

    A value costing more than `max_item` is not stored: large configs are rebuilt per use rather
    than held, so memory after a burst of them returns to where it was.
    """

    def __init__(self, max_bytes: int, max_entries: int, max_item: int | None = None) -> None:
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self.max_item = max_item if max_item is not None else max_bytes // 16
        self.bytes = 0
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                return default
            self._data.move_to_end(key)
            return hit[0]

    def get_or_make(self, key: Hashable, make: Callable[[], Any], cost: int) -> Any:
        """The cached value, or `make()` kept at `cost` bytes (an exception from `make` is not cached)."""
        value = self.get(key)
        if value is None:
            value = make()
            self.put(key, value, cost)
        return value

    def put(self, key: Hashable, value: Any, cost: int) -> None:
        if cost > self.max_item:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._data[key] = (value, cost)
            self.bytes += cost
            while self._data and (self.bytes > self.max_bytes or len(self._data) > self.max_entries):
                _, (_, dropped) = self._data.popitem(last=False)
                self.bytes -= dropped

    def pop(self, key: Hashable) -> Any:
        with self._lock:
            hit = self._data.pop(key, None)
            if hit is None:
                return None
            self.bytes -= hit[1]
            return hit[0]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.bytes = 0


# --------------------------------------------------------------------------------------------------
# Giving freed memory back

def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_trim_fn: Any = False  # not looked up yet
_trim: dict[str, Any] = {"loop": None, "last": 0.0, "first": 0.0}


def trim_memory() -> bool:
    """glibc's malloc_trim(0): return free heap pages to the OS. False where there is no glibc.

    Measured: ~15 ms after a burst left 600 MB of fragmented heap, ~1 ms on an idle heap.
    """
    global _trim_fn
    if _trim_fn is False:
        _trim_fn = _load_trim()
    if _trim_fn is None:
        return False
    _trim_fn(0)
    return True


def trim_soon(size: int) -> None:
    """After handling `size` bytes of config or body: when that was large, trim the heap TRIM_DELAY
    after the last large one (one trim per burst, once its objects are gone), or TRIM_MAX_WAIT after
    the first when they keep coming."""
    if size < LARGE:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    _trim["last"] = loop.time()
    if _trim["loop"] is loop:
        return  # a trim is already pending on this loop

    def run() -> None:
        now = loop.time()
        wait = _trim["last"] + TRIM_DELAY - now
        if wait > 0.01 and now - _trim["first"] < TRIM_MAX_WAIT:
            loop.call_later(wait, run)
            return
        _trim["loop"] = None
        trim_memory()

    _trim["loop"], _trim["first"] = loop, _trim["last"]
    loop.call_later(TRIM_DELAY, run)
