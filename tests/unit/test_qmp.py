"""A QEMU that goes away while pvmlab connects to its QMP socket reads as "no answer".

Two windows: QEMU exiting before it greets (a real QEMU that fails after accepting the
connection), and QEMU hanging up right after the capabilities negotiation, which qemu.qmp 0.0.x
turns into an AssertionError at the end of ``connect``. No QEMU can be made to exit exactly
there, so that window is played by a fake QMP server: it answers the negotiation and closes the
connection in the same breath.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from qemu.qmp import QMPError

from conftest import needs
from pvmlab.qemu import qmp

GREETING = {
    "QMP": {
        "version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""},
        "capabilities": [],
    }
}


def _line(msg: dict[str, object]) -> bytes:
    return json.dumps(msg).encode() + b"\r\n"


class HangUpAfterNegotiation:
    """A QMP server that greets, answers ``qmp_capabilities`` and closes the connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.served = 0
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                conn.sendall(_line(GREETING))
                request = conn.recv(65536)  # qemu.qmp sends the command without a newline
                assert json.loads(request)["execute"] == "qmp_capabilities"
                conn.sendall(_line({"return": {}}))
            self.served += 1

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(10)


@pytest.fixture
def hangup_server(tmp_path: Path) -> Iterator[HangUpAfterNegotiation]:
    server = HangUpAfterNegotiation(tmp_path / "qmp.sock")
    try:
        yield server
    finally:
        server.close()


def test_hang_up_after_negotiation_is_no_answer(hangup_server: HangUpAfterNegotiation) -> None:
    hung_up_in_connect = 0
    for _ in range(20):
        assert qmp.query_status(hangup_server.path) is None
        ok, err = qmp.try_execute(hangup_server.path, "query-status")
        assert not ok
        assert isinstance(err, EOFError | OSError | QMPError)
        if isinstance(err, EOFError) and isinstance(err.__cause__, AssertionError):
            hung_up_in_connect += 1
    assert hangup_server.served == 40
    # the server closes right behind its answer, so the client's reader meets the end of file
    # before connect() returns: the library's assertion was hit (and turned into EOFError)
    assert hung_up_in_connect > 0


@needs("qemu-system-x86_64")
def test_qemu_exiting_during_connect_is_no_answer(tmp_path: Path) -> None:
    """``wait=on``: QEMU waits for the QMP client, then fails on a missing disk and exits
    before it greets."""
    sock = tmp_path / "qmp.sock"
    argv = ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
            "-qmp", f"unix:{sock},server=on,wait=on",
            "-drive", f"file={tmp_path / 'missing.qcow2'},if=none,id=d0"]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "QEMU made no socket"
            time.sleep(0.05)
        assert qmp.query_status(sock) is None
        assert proc.wait(timeout=60) == 1
        assert proc.stderr is not None
        assert b"missing.qcow2" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
