"""Bounded logs for the stack's long-running process: one mechanism for every log it writes.

``logs/http.log`` (the request log) and ``logs/supervisor.log`` are each capped at
``max_bytes`` with ``backups`` rotated files beside them (``http.log.1`` is the newest old
one), written through the standard library's ``RotatingFileHandler``. So the most a log
takes is ``max_bytes * (backups + 1)``, whatever a lab client sends.

``PVMLAB_LOG_MAX_BYTES`` and ``PVMLAB_LOG_BACKUPS`` change the bound (tests use a small one).

``logs/dnsmasq.log`` is written by dnsmasq itself, so the supervisor bounds it the same way
from outside: every ``DNSMASQ_LOG_CHECK`` seconds it looks at the size and, over the bound,
shifts the files with ``rotate`` and sends dnsmasq SIGUSR2, on which dnsmasq closes its log
and opens it again (dnsmasq(8), ``--log-facility``). Lines written between the rename and the
reopen land in ``dnsmasq.log.1``; none is lost. The bound holds to within what dnsmasq writes
in one check interval.

Readers take a log with ``read_lines``: the newest rotated file (``NAME.1``) and then the
current one, so what happened across one rotation is read whole.

``supervisor.log`` is also the supervisor's stderr (``provisioner start`` points it there, so
a crash before logging is set up still lands in it). ``capture_stdio=True`` keeps fds 1 and 2
on the current file after every rotation, so nothing keeps writing into a rotated-away file.

``Notes`` rate-limits lines a flood would repeat: at most one line per key and interval,
saying how many were held back since the last one.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvmlab.errors import ValidationError

MAX_BYTES = 8 * 1024 * 1024
BACKUPS = 3
DNSMASQ_LOG_CHECK = 1.0  # seconds between the supervisor's looks at dnsmasq.log's size


@dataclass(frozen=True)
class LogBounds:
    max_bytes: int = MAX_BYTES
    backups: int = BACKUPS

    @property
    def total(self) -> int:
        """The most one log and its rotated files take."""
        return self.max_bytes * (self.backups + 1)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> LogBounds:
        env = os.environ if environ is None else environ
        return cls(
            max_bytes=_int_env(env, "PVMLAB_LOG_MAX_BYTES", MAX_BYTES, minimum=4096),
            backups=_int_env(env, "PVMLAB_LOG_BACKUPS", BACKUPS, minimum=1),
        )


def _int_env(env: Any, name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValidationError(
            f"{name}={raw!r} is not a whole number of at least {minimum}",
            f"unset {name} to use the default ({default})",
        )
    return value


def backup(path: Path, n: int = 1) -> Path:
    """The ``n``-th rotated file of log ``path`` (1 is the newest): ``NAME.n``."""
    return path.with_name(f"{path.name}.{n}")


def rotate(path: Path, backups: int) -> bool:
    """Shift the log ``path`` into ``NAME.1`` (``NAME.1`` into ``NAME.2``, ..., the oldest past
    ``backups`` is overwritten), as ``RotatingFileHandler`` does; False when ``path`` is not
    there. The writer must then reopen ``path``."""
    if not path.exists():
        return False
    for n in range(backups - 1, 0, -1):
        if backup(path, n).exists():
            backup(path, n).replace(backup(path, n + 1))
    path.replace(backup(path))
    return True


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _read(path: Path) -> tuple[int | None, list[str]]:
    try:
        with path.open(errors="replace") as f:
            return os.fstat(f.fileno()).st_ino, f.read().splitlines()
    except FileNotFoundError:
        return None, []


def read_lines(path: Path) -> list[str]:
    """The lines of log ``path``, those of its newest rotated file (``NAME.1``) first.

    A rotation between the two reads gives ``NAME.1`` another inode; then both are read again,
    so a line is neither missed nor read twice.
    """
    for _ in range(3):
        older_inode, older = _read(backup(path))
        _, current = _read(path)
        if _inode(backup(path)) == older_inode:
            break
    return older + current


class BoundedFileHandler(logging.handlers.RotatingFileHandler):
    """A size-bounded log file; with ``capture_stdio`` fds 1 and 2 follow it across rotations."""

    def __init__(self, path: Path, bounds: LogBounds, *, capture_stdio: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(
            path, maxBytes=bounds.max_bytes, backupCount=bounds.backups, encoding="utf-8"
        )
        self.capture_stdio = capture_stdio
        self._point_stdio()

    def doRollover(self) -> None:  # the standard library's name
        super().doRollover()
        self._point_stdio()

    def _point_stdio(self) -> None:
        if not self.capture_stdio or self.stream is None:
            return
        for stream_fd in (1, 2):
            os.dup2(self.stream.fileno(), stream_fd)


def log_to(path: Path, bounds: LogBounds, *, level: int = logging.INFO) -> BoundedFileHandler:
    """Send the process's logging (and its stdout/stderr) to the bounded file ``path``."""
    handler = BoundedFileHandler(path, bounds, capture_stdio=True)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(name)s[%(process)d] %(levelname)s: %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    return handler


class Notes:
    """At most one log line per key every ``interval`` seconds, with the count held back."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(self, key: str, level: int, message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``key`` was logged within the interval; True if
        logged."""
        held = self.allow(key)
        if held is None:
            return False
        if held:
            message += f" ({held} more like this since the last such line)"
        self.logger.log(level, message, *args)
        return True

    def allow(self, key: str) -> int | None:
        """None while ``key`` is held back; else how many were held back since its last line."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


def quiet_loop_errors(loop: asyncio.AbstractEventLoop, notes: Notes) -> None:
    """Report OS errors the event loop meets (a failed accept when file descriptors run out,
    a reset connection) as one rate-limited line instead of a traceback each; anything else
    goes to asyncio's default handler."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError):
            what = str(context.get("message", "event loop error"))
            notes(f"loop:{what}", logging.WARNING, "%s: %s", what, exc.strerror or exc)
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
