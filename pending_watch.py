"""Wake-up of an idle worker: block on the pending lists instead of sleeping between dequeue polls.

`BLMOVE <pending> <pending> RIGHT RIGHT <timeout>` answers as soon as the list holds an id: it pops the
tail and pushes it back onto the tail of the same list, atomically, so the list holds the same ids in
the same order afterwards, however many it holds. It takes no task: the dequeue script that runs next
does, in the queue order and with the pause check of every dequeue. Redis serves every client blocked
on the list while it is non-empty, so all idle workers wake and their dequeue scripts decide who takes
what, exactly as their polls would.

Redis 7 blocks a BLMOVE on one source key, so each watched queue gets a connection of its own, apart
from the pool the worker's loop uses. `close` cancels the blocks, which drops their connections at
once, so a shutdown never waits for one to time out. Without BLMOVE (Redis < 6.2, or an ACL user
without `+blmove`) the wait is a plain sleep, as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Iterable

log = logging.getLogger("peekaping.worker")

RETRY_AFTER = 10.0  # seconds of plain sleeping after a failed BLMOVE before blocking again


class PendingWatch:
    """Blocks on the pending lists of the queues it is given until one holds an id."""

    def __init__(self, redis: Any, queues: int, block: float = 2.0) -> None:
        self.redis = redis
        self.block = block
        self._client: Any = None
        self._size = queues  # connections: one per queue that may be watched
        self._inflight: dict[str, asyncio.Task] = {}  # queue -> its BLMOVE, still blocked or not yet read
        self._sleep_until = 0.0  # monotonic; BLMOVE failed: sleep instead until then
        self.disabled = ""  # why BLMOVE is never tried again (no such command, not permitted)

    async def wait(self, queues: Iterable[str], timeout: float, poll: float) -> bool:
        """True as soon as the pending list of one of `queues` holds an id; False after `timeout` s, or
        after sleeping `poll` s when BLMOVE cannot be used (not permitted, unknown, connection lost).

        Blocks still running when this returns stay in flight for the next call (none is sent twice), so
        each watched queue costs one BLMOVE per `block` seconds while the worker is idle.
        The answer of a queue left out of `queues` (paused since its block began) is dropped.
        """
        queues = list(queues)
        for queue in list(self._inflight):
            if queue not in queues and self._inflight[queue].done():
                self._read(queue)
        if not queues:
            await asyncio.sleep(timeout)
            return False
        if self.disabled or time.monotonic() < self._sleep_until:
            await asyncio.sleep(poll)
            return False
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            for queue in queues:
                if queue not in self._inflight and remaining > 0.01:
                    self._inflight[queue] = asyncio.get_running_loop().create_task(
                        self._blmove(queue), name=f"pending-watch:{queue}")
            waiting = [self._inflight[q] for q in queues if q in self._inflight]
            if not waiting or remaining <= 0:
                return False
            done, _ = await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                return False
            woke = False
            for queue in queues:
                task = self._inflight.get(queue)
                if task is not None and task.done():
                    woke = self._read(queue) or woke
            if woke:
                return True
            if self.disabled or time.monotonic() < self._sleep_until:
                await asyncio.sleep(min(poll, max(0.0, deadline - time.monotonic())))
                return False

    def _read(self, queue: str) -> bool:
        """Take a finished block's answer: True when its list held an id."""
        from redis.exceptions import NoPermissionError, ResponseError

        task = self._inflight.pop(queue)
        if task.cancelled():
            return False
        exc = task.exception()
        if exc is None:
            return task.result() is not None
        # "no permissions to run the 'blmove' command"; a refused key is the permission watch's to report
        if isinstance(exc, NoPermissionError) and "command" in str(exc):
            self.disabled = "the Redis user may not run BLMOVE"
        elif isinstance(exc, ResponseError) and "unknown command" in str(exc).lower():
            self.disabled = "this Redis has no BLMOVE (6.2 or newer has)"
        else:  # connection trouble or a key permission: the dequeue loop and the watch report those
            self._sleep_until = time.monotonic() + RETRY_AFTER
            log.debug("pending watch failed; polling for a while", extra={"fields": {"error": str(exc)}})
            return False
        log.warning(f"{self.disabled}: an idle worker polls the queues about once a second instead of "
                    "waking when a task arrives")
        return False

    async def _blmove(self, queue: str) -> Any:
        from asynq_protocol import queue_prefix

        key = queue_prefix(queue) + "pending"
        return await self._blocking_client().execute_command("BLMOVE", key, key, "RIGHT", "RIGHT",
                                                             f"{self.block:g}")

    def _blocking_client(self) -> Any:
        """A connection per queue with the worker's settings (no health-check PINGs, a read timeout
        longer than any block)."""
        from asynq_protocol import side_client

        if self._client is None:
            self._client = side_client(self.redis, self._size, socket_timeout=self.block + 10,
                                       health_check_interval=0)
        return self._client

    async def close(self) -> None:
        """Stop every block and drop the connections (a cancelled command closes its connection)."""
        tasks = list(self._inflight.values())
        self._inflight.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await asyncio.wait_for(client.aclose(), 2)
            except Exception:
                pass
