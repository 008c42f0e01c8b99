"""Talking to a running QEMU over its QMP socket, with QEMU's own ``qemu.qmp`` library.

Synchronous wrappers (one short asyncio run per call) because the CLI is synchronous. Every
call has a timeout; a socket nobody answers on is reported as ``None``/``False``, not raised,
so callers can fall back to the next, harder way of stopping a VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


async def _execute(socket: Path, command: str, args: dict[str, Any] | None, timeout: float) -> Any:
    from qemu.qmp import QMPClient

    if not log.isEnabledFor(logging.DEBUG):
        # The library logs every failed connection as an ERROR; for us a VM that does not
        # answer is an expected state that the caller reports (or falls back from).
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    client = QMPClient("pvmlab")
    await asyncio.wait_for(client.connect(str(socket)), timeout)
    try:
        return await asyncio.wait_for(client.execute(command, args), timeout)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), timeout)


def execute(
    socket: Path, command: str, args: dict[str, Any] | None = None, *, timeout: float = 5.0
) -> Any:
    """Run one QMP command and return its result; raises OSError/QMPError/TimeoutError."""
    return asyncio.run(_execute(socket, command, args, timeout))


def try_execute(
    socket: Path, command: str, args: dict[str, Any] | None = None, *, timeout: float = 5.0
) -> tuple[bool, Any]:
    """Like ``execute`` but never raises: (ok, result or the error)."""
    if not socket.exists():
        return False, FileNotFoundError(str(socket))
    try:
        return True, execute(socket, command, args, timeout=timeout)
    except Exception as exc:  # the QMP library raises several kinds; all mean "no answer"
        log.debug("qmp %s on %s: %s: %s", command, socket, type(exc).__name__, exc)
        return False, exc


def status(socket: Path) -> str | None:
    """QEMU's run state (``running``, ``paused``, ``shutdown``…) or None when unreachable."""
    ok, result = try_execute(socket, "query-status", timeout=3.0)
    if ok and isinstance(result, dict):
        return str(result.get("status"))
    return None


def powerdown(socket: Path) -> bool:
    """Press the ACPI power button."""
    return try_execute(socket, "system_powerdown")[0]


def quit_(socket: Path) -> bool:
    """Ask QEMU to exit at once (like pulling the plug, but QEMU cleans up)."""
    ok, err = try_execute(socket, "quit")
    # QEMU may close the connection before it answers: that is success too.
    return ok or type(err).__name__ in ("EOFError", "ConnectionResetError", "ExecInterruptedError")
