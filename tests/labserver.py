"""The lab's HTTP server (`pvmlab.stack.http`, as the supervisor runs it) on 127.0.0.1 in a
thread of the test process, for unit tests of its routes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from pvmlab.home import LabHome
from pvmlab.records.models import LabSpec
from pvmlab.stack import http as pvhttp
from pvmlab.stack.endpoint import bind_endpoint


@dataclass
class Server:
    home: LabHome
    port: int
    base: str


S = TypeVar("S", bound=Server)


@contextlib.contextmanager
def serving(home: LabHome, lab: LabSpec, make: Callable[[LabHome, int, str], S]) -> Iterator[S]:
    """The server for ``home`` on an ephemeral port, described by ``make`` (a test module's
    subclass of ``Server`` with its request helpers), stopped on the way out."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = asyncio.run_coroutine_threadsafe(
        pvhttp.start_http(home, lab, bind_endpoint(lab, "127.0.0.1", 0)), loop
    ).result(30)
    try:
        port = pvhttp.bound_port(runner)
        yield make(home, port, f"http://127.0.0.1:{port}")
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
