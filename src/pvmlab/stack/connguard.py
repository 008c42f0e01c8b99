"""Connection limits of the lab's HTTP server: no lab client can exhaust it by holding sockets.

Every TCP connection the server accepts goes through a ``ConnectionGuard`` (an asyncio protocol
wrapped around aiohttp's), which enforces:

    idle timeout     a connection that sends no byte of a request within ``idle_timeout`` of
                     being opened or of its previous response is closed (keep-alive timeout)
    header timeout   once a request has begun, its line and headers must be complete within
                     ``header_timeout`` (a slowloris client trickling header bytes is closed)
    body timeout     a request body must arrive within ``body_timeout`` (408), and an unread
                     body is drained for at most that long after the response
    send stall       a response whose bytes the client stops taking (nothing leaves the
                     kernel's send queue) for ``send_stall_timeout`` is cut off
    connection cap   at most ``cap`` connections are open. A new one above the cap takes the
                     place of the connection idle for longest (requests in progress are never
                     cut, nor a connection idle for less than ``EVICTABLE_AFTER``). When none
                     may go, a new one that arrives with its request already waiting still
                     takes the place of a connection that has never sent a byte, however
                     young (with ``defer_accept`` such a one was silent for the idle timeout
                     before it reached the server): a flood of silent connections accepted in
                     one burst cannot lock a real request out. Otherwise the new one is closed
                     at once. Either is logged as one rate-limited line, never a traceback per
                     connection.

Two things keep a flood cheap, so the loop accepts faster than a client opens connections: the
listening socket defers connections that have sent nothing (``defer_accept``: they wait in the
kernel, not in the accept queue a real request waits in, and reach the server after about the
idle timeout, so a silent connection lives up to twice it), and aiohttp's protocol is made only
at a connection's first byte.

The cap is kept below the process's file-descriptor limit: ``raise_fd_limit`` lifts the soft
RLIMIT_NOFILE to the hard one, and the cap is at most that minus ``FD_RESERVE`` (log files,
dnsmasq's pipes, executor threads) and two accept batches (``connection_cap``), so accept()
never fails for lack of descriptors.

A request counts as in progress from the moment its head is parsed until its response has been
written completely (the middleware sends it, so a kernel download is busy until its last byte).

Settings (environment of the supervisor, read once at start; bad values stop the start):
``PVMLAB_HTTP_MAX_CONNECTIONS``, ``PVMLAB_HTTP_IDLE_TIMEOUT``, ``PVMLAB_HTTP_HEADER_TIMEOUT``,
``PVMLAB_HTTP_BODY_TIMEOUT``, ``PVMLAB_HTTP_SEND_STALL_TIMEOUT`` (seconds).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import math
import os
import resource
import socket
import sys
import termios
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pvmlab.errors import ValidationError
from pvmlab.stack import memory
from pvmlab.stack.logfiles import Notes

MAX_CONNECTIONS = 4096
IDLE_TIMEOUT = 15.0
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 10.0
SEND_STALL_TIMEOUT = 60.0
FD_RESERVE = 256
MIN_CAP = 16
EVICTION_TRIES = 32  # idle connections looked at for one that may go, per new connection
EVICTABLE_AFTER = 0.25  # seconds idle before a connection may be closed to make room
SLOW_HEAD_EVICTABLE_AFTER = 2.0  # seconds a request head may take before that, too
FLOOD_PEAK = 256  # connections open at once that count as a flood...
FLOOD_OVER_BELOW = 8  # ...over once this few remain

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = MAX_CONNECTIONS
    idle_timeout: float = IDLE_TIMEOUT
    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    send_stall_timeout: float = SEND_STALL_TIMEOUT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HttpLimits:
        env = os.environ if environ is None else environ
        return cls(
            max_connections=int(_number(env, "PVMLAB_HTTP_MAX_CONNECTIONS", MAX_CONNECTIONS, 1)),
            idle_timeout=_number(env, "PVMLAB_HTTP_IDLE_TIMEOUT", IDLE_TIMEOUT, 0.1),
            header_timeout=_number(env, "PVMLAB_HTTP_HEADER_TIMEOUT", HEADER_TIMEOUT, 0.1),
            body_timeout=_number(env, "PVMLAB_HTTP_BODY_TIMEOUT", BODY_TIMEOUT, 0.1),
            send_stall_timeout=_number(
                env, "PVMLAB_HTTP_SEND_STALL_TIMEOUT", SEND_STALL_TIMEOUT, 0.1
            ),
        )


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= minimum or value == float("inf"):  # also refuses NaN
        raise ValidationError(
            f"{name}={raw!r} is not a number of at least {minimum:g}",
            f"unset {name} to use the default ({default:g})",
        )
    if isinstance(default, int) and value != int(value):
        raise ValidationError(f"{name}={raw!r} is not a whole number", f"e.g. {default}")
    return value


def raise_fd_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep the soft limit we have; the cap follows it
    return soft


def connection_cap(limits: HttpLimits, fd_limit: int, accept_batch: int) -> int:
    """The cap in force: the configured one, kept below the descriptor limit by
    ``FD_RESERVE`` plus two accept batches. asyncio accepts up to ``accept_batch`` (the listen
    backlog) connections per wake-up, and a connection closed to make room frees its
    descriptor only on the loop's next turn, so descriptors can briefly exceed the cap by
    twice that."""
    room = fd_limit - FD_RESERVE - 2 * accept_batch
    return max(MIN_CAP, min(limits.max_connections, room))


def defer_accept(listener: asyncio.Server, limits: HttpLimits) -> bool:
    """Have the kernel hold back connections that have sent nothing yet (Linux
    ``TCP_DEFER_ACCEPT``, for up to the idle timeout): a flood of idle connections then waits
    in the kernel's handshake queue instead of filling the accept queue, where a request
    from a well-behaved client would wait behind it. Connections that stay silent reach the
    server when the time is up and are closed by the idle timeout. False where unsupported.
    """
    option = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if option is None:
        return False
    seconds = max(1, math.ceil(limits.idle_timeout))
    try:
        for sock in listener.sockets:
            sock.setsockopt(socket.IPPROTO_TCP, option, seconds)
    except OSError:
        return False
    return True


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's protocol inside, the guard's timers around it.

    aiohttp's protocol is made when the first byte arrives: a connection that never sends
    anything (most of a flood) costs a transport and this object, not a parser and a task,
    so the loop accepts (and replaces) such connections faster than a client opens them.
    """

    def __init__(
        self,
        guard: ConnectionGuard,
        make_inner: Callable[[], asyncio.Protocol],
        over_cap: bool = False,
    ) -> None:
        self.guard = guard
        self.over_cap = over_cap  # made while the cap was full: admitted only with a request
        self.make_inner = make_inner
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.busy = 0  # requests in progress (aiohttp runs one at a time per connection)
        self.head_started = False  # bytes of a request arrived while not busy
        self.head_since = 0.0  # when its first byte arrived
        self.since = time.monotonic()  # opened, or the end of the last response
        self.peer = "?"
        self.doomed = False  # evicted before its transport was made: closed on arrival
        self.lost = False  # connection_lost has been called
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio protocol: forwarded to aiohttp -------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):  # TCP sockets give a Transport
            raise TypeError(f"unexpected transport {transport!r}")
        if self.doomed:
            transport.abort()
            return
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if self.over_cap:
            if not (self.has_unread_bytes() and self.guard._admit_over_cap(self)):
                self.transport = None
                self.lost = True
                self.guard._refuse()
                transport.abort()
                return
            self.over_cap = False
        self.guard._opened(self)
        self._arm(self.guard.limits.idle_timeout, "idle")

    def data_received(self, data: bytes) -> None:
        if not self.busy and not self.head_started:
            self.head_started = True
            self.head_since = time.monotonic()
            self._arm(self.guard.limits.header_timeout, "request head")
        if self.inner is None:
            if self.transport is None:  # doomed: evicted before it was made
                return
            self.inner = self.make_inner()
            self.inner.connection_made(self.transport)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.inner is None:
            return False  # closed without a byte: close our end too
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._disarm()
        self.guard._closed(self)
        if self.inner is not None:  # aiohttp saw this connection
            self.inner.connection_lost(exc)

    # --- the guard's view -------------------------------------------------------------------

    def request_started(self) -> None:
        self.busy += 1
        self.head_started = False
        self._disarm()
        self.guard._busy(self)

    def request_finished(self) -> None:
        self.busy = max(0, self.busy - 1)
        if not self.busy and self.transport is not None and not self.lost:
            self.since = time.monotonic()
            self._arm(self.guard.limits.idle_timeout, "idle")
            self.guard._idle_again(self)

    def has_unread_bytes(self) -> bool:
        """Whether bytes from the client wait in the kernel, not yet read by the loop."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return False
        try:
            pending = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        except OSError:
            return False
        return int.from_bytes(pending, sys.byteorder) > 0

    def unsent_bytes(self) -> int:
        """Bytes in the kernel's send queue the client has not acknowledged (0 if unknown)."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return 0
        try:
            queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except OSError:
            return 0
        return int.from_bytes(queued, sys.byteorder)

    def cut_off(self) -> None:
        """End a connection in the middle of a response. Not ``transport.abort()``: during
        ``loop.sendfile`` that breaks asyncio's own bookkeeping (Python 3.11: InvalidStateError
        in ``_call_connection_lost``, and the protocol never hears of the loss). Shutting the
        socket down makes the pending send fail (a ConnectionError aiohttp handles), after
        which aiohttp closes the transport itself."""
        self._disarm()
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._disarm()
        if self.transport is None:
            self.doomed = True
        else:
            self.transport.close()

    def _arm(self, delay: float, what: str) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(delay, self._expired, what, delay)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, what: str, delay: float) -> None:
        self._timer = None
        if self.busy or self.transport is None:
            return
        self.guard._timed_out(self, what, delay)
        self.close()


class ConnectionGuard:
    """Counts, times and caps the server's connections (see the module docstring)."""

    def __init__(self, limits: HttpLimits, cap: int, logger: logging.Logger) -> None:
        self.limits = limits
        self.cap = cap
        self.notes = Notes(logger)
        # every connection not yet closed, including those whose transport is being made
        self._all: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._by_transport: dict[asyncio.BaseTransport, _Connection] = {}
        self._idle_order: collections.OrderedDict[_Connection, None] = collections.OrderedDict()
        self.counts = {"accepted": 0, "refused": 0, "evicted": 0, "timed_out": 0, "peak": 0}
        self._flood_peak = 0

    @property
    def open(self) -> int:
        return len(self._all)

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """An asyncio protocol factory wrapping aiohttp's (``runner.server``)."""

        def make() -> asyncio.Protocol:
            if len(self._all) >= self.cap and not self._evict_longest_idle():
                # its socket is not known yet: connection_made admits it if a request waits
                return _Connection(self, inner, over_cap=True)
            conn = _Connection(self, inner)
            self._count_in(conn)
            return conn

        return make

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks the connection busy for the whole request, reads a body within the body
        timeout, and writes the response here so "busy" lasts until its last byte."""
        conn = self._by_transport.get(request.transport) if request.transport else None
        if conn is not None:
            conn.request_started()
        try:
            if request.body_exists:
                try:
                    await asyncio.wait_for(request.read(), self.limits.body_timeout)
                except TimeoutError:
                    raise web.HTTPRequestTimeout(
                        text=f"request body not received within "
                        f"{self.limits.body_timeout:g} s\n"
                    ) from None
            response = await handler(request)
            watchdog = asyncio.ensure_future(self._watch_send(conn)) if conn else None
            try:
                await response.prepare(request)
                await response.write_eof()
            except ConnectionError:
                pass  # the client went away (or was cut off); aiohttp closes the connection
            finally:
                if watchdog is not None:
                    watchdog.cancel()
            return response
        finally:
            if conn is not None:
                conn.request_finished()

    async def _watch_send(self, conn: _Connection) -> None:
        """Cut a response off when the client has taken none of it for the stall timeout."""
        stall = self.limits.send_stall_timeout
        loop = asyncio.get_running_loop()
        last, since = -1, loop.time()
        while True:
            await asyncio.sleep(stall / 4)
            queued = conn.unsent_bytes()
            if queued == 0 or queued != last:
                last, since = queued, loop.time()
            elif loop.time() - since >= stall:
                self.counts["timed_out"] += 1
                self.notes(
                    "timeout:send", logging.INFO,
                    "cut off a response to %s: the client took nothing for %g s",
                    conn.peer, stall,
                )
                conn.cut_off()
                return

    def stats(self) -> dict[str, Any]:
        return {"open": self.open, "idle": len(self._idle_order), "cap": self.cap, **self.counts}

    # --- bookkeeping, called by the connections ---------------------------------------------

    def _opened(self, conn: _Connection) -> None:
        if conn.transport is not None:
            self._by_transport[conn.transport] = conn

    def _closed(self, conn: _Connection) -> None:
        self._all.discard(conn)
        self._idle_order.pop(conn, None)
        if conn.transport is not None:
            self._by_transport.pop(conn.transport, None)
        if (
            self._flood_peak >= FLOOD_PEAK
            and len(self._all) < FLOOD_OVER_BELOW
        ):
            peak, self._flood_peak = self._flood_peak, 0
            asyncio.get_running_loop().call_soon(self._after_flood, peak)

    def _after_flood(self, peak: int) -> None:
        """A flood has drained: shrink the tables it grew, and say what memory it left.

        Measured (docs/performance.md): RSS stays some 13 MiB above idle after a flood, the
        same after every further flood (reused, not leaked). tracemalloc finds only ~2 MiB of
        it live (these tables and asyncio's); the rest is free pymalloc arenas pinned by a few
        live objects, which glibc's ``malloc_trim`` cannot return (it gave back 0-3 MiB)."""
        if not self._all:
            self._all = weakref.WeakSet()
            self._by_transport = {}
            self._idle_order = collections.OrderedDict()
        self.notes.logger.info(
            "after a peak of %d connections: %d open, RSS %.1f MiB",
            peak, len(self._all), memory.rss_bytes() / 2**20,
        )

    def _busy(self, conn: _Connection) -> None:
        self._idle_order.pop(conn, None)

    def _idle_again(self, conn: _Connection) -> None:
        self._idle_order.pop(conn, None)
        self._idle_order[conn] = None  # the newest idle one goes last

    def _count_in(self, conn: _Connection) -> None:
        self._all.add(conn)
        self._idle_order[conn] = None  # idle from the start (its transport comes soon)
        self.counts["accepted"] += 1
        self.counts["peak"] = max(self.counts["peak"], len(self._all))
        self._flood_peak = max(self._flood_peak, len(self._all))

    def _refuse(self) -> None:
        self.counts["refused"] += 1
        self.notes(
            "refused", logging.WARNING,
            "%d connections open, over the cap of %d; refusing new ones",
            len(self._all) + 1, self.cap,
        )

    def _admit_over_cap(self, conn: _Connection) -> bool:
        """Make room for ``conn``, which arrived over the cap with its request waiting: the
        longest idle connection if one may go by now, else one that has never sent a byte
        (the oldest such among ``EVICTION_TRIES``). False when every one is busy or talking."""
        if len(self._all) < self.cap or self._evict_longest_idle():
            self._count_in(conn)
            return True
        for _, silent in zip(range(EVICTION_TRIES), self._idle_order, strict=False):
            if silent.inner is None and not silent.head_started and not silent.has_unread_bytes():
                self._evict(silent, "that never sent a byte, for a waiting request")
                self._count_in(conn)
                return True
        return False

    def _evict(self, conn: _Connection, why: str) -> None:
        del self._idle_order[conn]
        self._all.discard(conn)  # its slot is free now; connection_lost follows
        self.counts["evicted"] += 1
        self.notes(
            "evicted", logging.WARNING,
            "at the cap of %d connections: closing the connection %s "
            "(from %s, idle %.1f s) for each new one",
            self.cap, why, conn.peer, time.monotonic() - conn.since,
        )
        conn.close()

    def _evict_longest_idle(self) -> bool:
        """Close the connection idle for longest to make room; False when none may go.

        Only a connection idle for ``EVICTABLE_AFTER`` may go; not one whose request bytes
        wait unread in the kernel, nor one whose request began less than
        ``SLOW_HEAD_EVICTABLE_AFTER`` ago (both are about to become busy). A burst of accepts
        could otherwise run through every idle connection before the loop has read, or begun
        to handle, a request sent just after its connect."""
        now = time.monotonic()
        for _ in range(min(EVICTION_TRIES, len(self._idle_order))):
            conn = next(iter(self._idle_order))
            if now - conn.since < EVICTABLE_AFTER:
                return False  # the longest idle is too young: every one is
            if conn.has_unread_bytes() or (
                conn.head_started and now - conn.head_since < SLOW_HEAD_EVICTABLE_AFTER
            ):
                self._idle_order.move_to_end(conn)
                continue
            self._evict(conn, "idle for longest")
            return True
        return False

    def _timed_out(self, conn: _Connection, what: str, delay: float) -> None:
        self.counts["timed_out"] += 1
        self.notes(
            f"timeout:{what}", logging.INFO,
            "closed a connection from %s: no complete %s within %g s", conn.peer,
            "request" if what == "idle" else what, delay,
        )
