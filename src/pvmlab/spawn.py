"""The one place pvmlab starts programs.

Argv lists only (never a shell). Every command is logged with ``shlex.join`` at debug level.
``run`` waits for a program and turns a failure into a ProcessError carrying the command, its
exit code and the tail of its stderr. ``spawn`` is a context manager around a running child that
always terminates (then kills) it on the way out. ``start_detached`` starts a program that
outlives pvmlab (the stack supervisor, QEMU) in its own session; ``terminate`` stops such a
program by PID (SIGTERM, then SIGKILL).

``netns`` runs the program inside a network namespace through ``ip netns exec``, which execs the
program, so the PID we get is the program's own.

pvmlab's own helpers (the stack supervisor, the console stamper) run as child interpreters
started by ``start_python_module``: ``python -I -m MODULE`` from ``/``. ``-I`` (isolated mode)
keeps the working directory, PYTHONPATH, PYTHON* variables and the user's site-packages off
the child's import path, so a ``pvmlab/`` or ``aiohttp.py`` planted in the directory root runs
pvmlab from is never imported as root. pvmlab must therefore be installed in the
interpreter's own site-packages (a venv, pipx, the system; editable installs included).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from pvmlab.errors import DependencyError, ProcessError
from pvmlab.home import open_for_writing

log = logging.getLogger(__name__)


def in_netns(argv: Sequence[str], netns: str | None) -> list[str]:
    """Prefix argv so it runs in ``netns`` (unchanged when netns is None)."""
    if netns is None:
        return list(argv)
    return ["ip", "netns", "exec", netns, *argv]


def _not_found(program: str) -> DependencyError:
    return DependencyError(
        f"program not found: {program}",
        "run `pvmlab setup` to see what is missing and how to install it",
    )


@contextlib.contextmanager
def _launching(argv: Sequence[str], netns: str | None, how: str) -> Iterator[list[str]]:
    """The full argv (in ``netns``), logged under ``how``; a program that is not there becomes
    a DependencyError."""
    full = in_netns(argv, netns)
    log.debug("%s: %s", how, shlex.join(full))
    try:
        yield full
    except FileNotFoundError as exc:
        raise _not_found(full[0]) from exc


def _env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    return dict(env) if env is not None else None


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    check: bool = True,
    ok_codes: Sequence[int] = (0,),
    timeout: float | None = 60,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    text: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a program to completion, capturing its output."""
    with _launching(argv, netns, "run") as full:
        try:
            proc = subprocess.run(
                full,
                capture_output=True,
                text=text,
                input=input,
                timeout=timeout,
                env=_env(env),
                cwd=cwd,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:  # run() has already killed the child
            raise ProcessError(
                f"`{shlex.join(full)}` did not finish within {timeout} s", argv=full
            ) from exc
    if check and proc.returncode not in ok_codes:
        err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
        raise ProcessError(
            f"`{shlex.join(full)}` failed with exit code {proc.returncode}: "
            f"{_tail(err, 3) or '(no error output)'}",
            argv=full,
            returncode=proc.returncode,
            stderr=err,
        )
    return proc


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


@contextlib.contextmanager
def spawn(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    stdout: int | IO[bytes] | None = subprocess.DEVNULL,
    stderr: int | IO[bytes] | None = subprocess.DEVNULL,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    grace: float = 5.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a child for the duration of a ``with`` block; it is stopped on the way out."""
    with _launching(argv, netns, "spawn") as full:
        proc = subprocess.Popen(
            full,
            stdout=stdout,
            stderr=stderr,
            stdin=stdin,
            env=_env(env),
            pass_fds=tuple(pass_fds),
        )
    try:
        yield proc
    finally:
        _stop(proc, grace)


def start_detached(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    log_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin_devnull: bool = True,
    cwd: Path | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start a long-lived program in its own session (it survives pvmlab's exit).

    Its stdout and stderr go to ``log_file`` (appended; never through a symlink, see
    ``pvmlab.home.open_for_writing``) or are discarded; ``pass_fds`` stay open in it (a
    readiness pipe).
    """
    out = open_for_writing(log_file) if log_file is not None else subprocess.DEVNULL
    try:
        with _launching(argv, netns, "start") as full:
            return subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL if stdin_devnull else None,
                stdout=out,
                stderr=subprocess.STDOUT if log_file is not None else subprocess.DEVNULL,
                start_new_session=True,
                env=_env(env),
                close_fds=True,
                cwd=cwd,
                pass_fds=tuple(pass_fds),
            )
    finally:
        if out != subprocess.DEVNULL:
            os.close(out)


PYTHON_CWD = Path("/")  # the working directory of pvmlab's child interpreters


def python_module(module: str, *args: str) -> list[str]:
    """The argv that runs pvmlab's own ``module`` in an isolated child interpreter (``-I``)."""
    return [sys.executable, "-I", "-m", module, *args]


def start_python_module(
    module: str,
    *args: str,
    netns: str | None = None,
    log_file: Path | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """``start_detached`` for one of pvmlab's own modules: ``python -I -m MODULE ARGS`` with
    ``/`` as its working directory, so nothing in the caller's directory can be imported."""
    return start_detached(
        python_module(module, *args),
        netns=netns,
        log_file=log_file,
        cwd=PYTHON_CWD,
        pass_fds=pass_fds,
    )


def terminate(pids: Sequence[int], grace: float = 5.0, kill_wait: float = 5.0) -> bool:
    """Stop processes pvmlab started (by PID): SIGTERM, up to ``grace`` s, then SIGKILL and up to
    ``kill_wait`` s more. True when all of them are gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if _wait_gone(pids, grace):
        return True
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return _wait_gone(pids, kill_wait)


def _wait_gone(pids: Sequence[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process.

    A zombie (exited, not yet reaped by its parent) counts as gone: it has finished its work.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc (macOS): kill(0) is all we know
    return stat.rsplit(")", 1)[-1].split()[0:1] != ["Z"]


def pid_cmdline(pid: int) -> list[str]:
    """The argv of a running process ([] when it is gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def read_pid_file(path: Path) -> int | None:
    """The PID written in ``path`` (None when it is missing, unreadable or not a number)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
