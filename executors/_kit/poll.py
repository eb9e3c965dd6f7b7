"""One epoll set for the executors' own sockets, watched by the event loop as a single descriptor.

Why: uvloop (libuv) turns each `add_reader`/`remove_reader` of a new socket into five or six
epoll_ctl calls (a probe ADD+DEL, the ADD, a DEL, failed retries: measured with strace), which made
a check's plain HTTP connection cost more than a uvloop transport. Here a socket costs one ADD and
one DEL. When the loop reports the set readable, `Poller` asks it which sockets are ready and calls
their handlers at once, in the same callback.
Where epoll is missing, the loop's own add_reader/add_writer do the same job.
"""

from __future__ import annotations

import asyncio
import select
import weakref
from typing import Callable

IN = getattr(select, "EPOLLIN", 1)
OUT = getattr(select, "EPOLLOUT", 4)
MAX_EVENTS = 256  # per call; the set stays readable while more are ready, so the loop calls again


class Poller:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._ep = select.epoll()
        self._handlers: dict[int, Callable[[int], None]] = {}
        loop.add_reader(self._ep.fileno(), self._ready)  # the loop keeps this Poller alive, not the reverse

    def watch(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        """Call handler(events) while `fd` is ready for `events` (IN, OUT; errors always count)."""
        if fd in self._handlers:
            try:
                self._ep.modify(fd, events)
            except FileNotFoundError:  # closed and reused without forget(): the kernel dropped the old one
                self._ep.register(fd, events)
        else:
            self._ep.register(fd, events)
        self._handlers[fd] = handler

    def forget(self, fd: int) -> None:
        """Stop watching `fd`; call it before closing the socket."""
        if self._handlers.pop(fd, None) is not None:
            try:
                self._ep.unregister(fd)
            except OSError:
                pass

    def closing(self, fd: int) -> None:
        """Stop watching `fd`, which is about to be closed: closing it takes it out of the epoll set, so
        this spares the epoll_ctl call (the socket must not have been duplicated)."""
        self._handlers.pop(fd, None)

    def _ready(self) -> None:
        handlers = self._handlers
        for fd, events in self._ep.poll(0, MAX_EVENTS):
            handler = handlers.get(fd)
            if handler is not None:
                handler(events)


class _LoopPoller:
    """The same interface on the loop's add_reader/add_writer (platforms without epoll)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: dict[int, int] = {}

    def watch(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        self.forget(fd)
        self._events[fd] = events
        if events & IN:
            self._loop.add_reader(fd, handler, IN)
        if events & OUT:
            self._loop.add_writer(fd, handler, OUT)

    def forget(self, fd: int) -> None:
        events = self._events.pop(fd, 0)
        if events & IN:
            self._loop.remove_reader(fd)
        if events & OUT:
            self._loop.remove_writer(fd)

    closing = forget


_pollers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Poller | _LoopPoller]" = weakref.WeakKeyDictionary()


def poller(loop: asyncio.AbstractEventLoop) -> Poller | _LoopPoller:
    """The poller of `loop`, made on first use."""
    found = _pollers.get(loop)
    if found is None:
        found = _pollers[loop] = Poller(loop) if hasattr(select, "epoll") else _LoopPoller(loop)
    return found
