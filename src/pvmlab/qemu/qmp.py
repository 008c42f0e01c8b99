"""Talking to a running QEMU over its QMP socket, with QEMU's own ``qemu.qmp`` library.

Synchronous wrappers (one short asyncio run per call, so they may be called from several
threads at once) because the CLI is synchronous. Every call has a timeout and opens its own
short connection: QEMU serves one QMP client at a time, so nothing here holds the socket while
it waits for something else. A socket nobody answers on is reported as ``None``/``False``, not
raised, so callers can fall back to the next, harder way of stopping a VM.

The run state QEMU reports (``query-status``) is the truth about a VM whose process is alive:
``running``, or one of the states in which the guest runs no code (``paused`` after a QMP
``stop``, ``internal-error`` after a KVM failure, ``guest-panicked`` when the guest reported a
panic through pvpanic, ``shutdown``, ``io-error``, ``watchdog``, ``suspended``, ``debug``…).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from qemu.qmp import ExecInterruptedError, QMPClient, QMPError, Runstate

log = logging.getLogger(__name__)

RUNNING = "running"
# Run states a guest cannot leave by itself: it is not executing, so it will neither print the
# awaited text nor react to the ACPI power button.
HALTED_STATES = frozenset(
    {
        "paused",
        "internal-error",
        "guest-panicked",
        "shutdown",
        "io-error",
        "watchdog",
        "suspended",
        "debug",
    }
)
# What a failed call raises: the library's own errors, the socket's, and our timeout.
_NO_ANSWER = (QMPError, OSError, EOFError, TimeoutError)


async def _connect(client: QMPClient, socket: Path) -> None:
    """``client.connect``, with a QEMU that hangs up during it read as a hang-up (EOFError).

    qemu.qmp (0.0.x) ends ``connect`` with ``assert runstate == RUNNING``; when QEMU closes the
    socket right after the capabilities negotiation, the reader it has just started sees the end
    of file first and moves the client to DISCONNECTING, so that assertion fails. Disconnecting
    then re-raises what the reader met (the EOFError) and returns the client to IDLE.
    """
    try:
        await client.connect(str(socket))
    except AssertionError as exc:
        if client.runstate != Runstate.DISCONNECTING:
            raise  # a different failure of the library: not ours to hide
        with contextlib.suppress(*_NO_ANSWER):
            await client.disconnect()
        raise EOFError(f"QEMU closed {socket} while pvmlab connected") from exc


async def _execute(socket: Path, command: str, args: dict[str, Any] | None, timeout: float) -> Any:
    if not log.isEnabledFor(logging.DEBUG):
        # The library logs every failed connection as an ERROR; for us a VM that does not
        # answer is an expected state that the caller reports (or falls back from).
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    client = QMPClient("pvmlab")
    await asyncio.wait_for(_connect(client, socket), timeout)
    try:
        return await asyncio.wait_for(client.execute(command, args), timeout)
    finally:
        with contextlib.suppress(*_NO_ANSWER):
            await asyncio.wait_for(client.disconnect(), timeout)


def execute(
    socket: Path, command: str, args: dict[str, Any] | None = None, *, timeout: float = 5.0
) -> Any:
    """Run one QMP command and return its result; raises OSError/QMPError/TimeoutError."""
    return asyncio.run(_execute(socket, command, args, timeout))


def try_execute(
    socket: Path, command: str, args: dict[str, Any] | None = None, *, timeout: float = 5.0
) -> tuple[bool, Any]:
    """Like ``execute`` but never raises for a QEMU that does not answer: (ok, result or error)."""
    if not socket.exists():
        return False, FileNotFoundError(str(socket))
    try:
        return True, execute(socket, command, args, timeout=timeout)
    except _NO_ANSWER as exc:
        log.debug("qmp %s on %s: %s: %s", command, socket, type(exc).__name__, exc)
        return False, exc


def query_status(socket: Path, *, timeout: float = 3.0) -> str | None:
    """QEMU's run state (``running``, ``paused``, ``guest-panicked``…) or None when unreachable."""
    ok, result = try_execute(socket, "query-status", timeout=timeout)
    if ok and isinstance(result, dict):
        return str(result.get("status"))
    return None


def press_power_button(socket: Path) -> bool:
    """Press the ACPI power button."""
    return try_execute(socket, "system_powerdown")[0]


def quit_qemu(socket: Path) -> bool:
    """Ask QEMU to exit at once (like pulling the plug, but QEMU cleans up)."""
    ok, err = try_execute(socket, "quit")
    # QEMU may close the connection before it answers: that is success too.
    return ok or isinstance(err, EOFError | ConnectionResetError | ExecInterruptedError)
