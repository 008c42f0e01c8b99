"""``vm console``: attach the terminal to a running VM's serial console.

QEMU serves the serial port on a unix socket (``monitors/NAME.console``) and logs it to
``logs/NAME.log`` at the same time. Attaching connects to that socket: what the guest writes
appears here, keys typed here go to the guest. Ctrl-] detaches (the VM keeps running). When
stdin is not a terminal, output is streamed read-only until the VM stops.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import termios
import tty
from collections.abc import Iterator
from pathlib import Path

from pvmlab.errors import StateError

DETACH = b"\x1d"  # Ctrl-]


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    old = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def attach(sock_path: Path, *, name: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(sock_path))
    except OSError as exc:
        sock.close()
        raise StateError(
            f"cannot attach to the console of {name!r}: {exc.strerror}",
            "another `vm console` may be attached (QEMU takes one at a time); "
            f"`pvmlab vm logs {name} -f` follows the console read-only",
        ) from None
    out = sys.stdout.buffer
    stdin_fd = sys.stdin.fileno()
    interactive = os.isatty(stdin_fd)
    with sock, _raw(stdin_fd) if interactive else contextlib.nullcontext():
        if interactive:
            out.write(f"[attached to {name}; Ctrl-] detaches]\r\n".encode())
            out.flush()
        watch = [sock, stdin_fd] if interactive else [sock]
        while True:
            ready, _, _ = select.select(watch, [], [])
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    break  # QEMU closed the console: the VM stopped
                out.write(data)
                out.flush()
            if stdin_fd in ready:
                keys = os.read(stdin_fd, 1024)
                if not keys or DETACH in keys:
                    keys = keys.split(DETACH, 1)[0]
                    if keys:
                        sock.sendall(keys)
                    break
                sock.sendall(keys)
    if interactive:
        out.write(f"\r\n[detached from {name}]\r\n".encode())
        out.flush()
