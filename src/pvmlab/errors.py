"""Errors a user can act on.

    PvmlabError             problem + hint, printed as one line each; exit code 1
     ├── ValidationError    bad input at the edge (names, MACs, IPs, paths); exit code 2
     ├── StateError         the lab is not in a state that allows the command
     ├── PrivilegeError     root / CAP_NET_ADMIN needed
     ├── DependencyError    a program, firmware or binary is missing
     └── ProcessError       a program we ran failed (command, exit code and stderr tail kept)

An OSError the user or the machine causes (a full disk or quota, a read-only filesystem, a
missing permission) is turned into a StateError by ``from_os_error`` at the CLI's top level:
one line naming the file and the fix. Anything else reaching the CLI is a bug and is reported
as such, with the traceback only under ``--debug``.
"""

from __future__ import annotations

import errno
import os


class PvmlabError(Exception):
    exit_code = 1

    def __init__(self, problem: str, hint: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.hint = hint

    def __str__(self) -> str:
        return self.problem if self.hint is None else f"{self.problem} (hint: {self.hint})"


class ValidationError(PvmlabError):
    exit_code = 2


class StateError(PvmlabError):
    pass


class PrivilegeError(PvmlabError):
    pass


class DependencyError(PvmlabError):
    pass


class ProcessError(PvmlabError):
    def __init__(
        self,
        problem: str,
        hint: str | None = None,
        *,
        argv: list[str] | None = None,
        returncode: int | None = None,
        stderr: str = "",
    ) -> None:
        super().__init__(problem, hint)
        self.argv = argv or []
        self.returncode = returncode
        self.stderr = stderr


def from_os_error(exc: OSError, home: str) -> StateError | None:
    """The one-line error for an OSError the user can act on (None: a bug, report it as such).

    ``home`` is the lab home, named when the error does not say which file it was.
    """
    where = exc.filename if exc.filename is not None else f"a file in {home}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StateError(
            f"no space left writing {where} ({exc.strerror})",
            f"free space on the filesystem of {home} (`df -h {home}`) and rerun; "
            "files pvmlab writes are replaced whole, so the lab is as it was",
        )
    if exc.errno == errno.EROFS:
        return StateError(
            f"cannot write {where}: read-only filesystem",
            "choose a home on a writable filesystem with --home or PVMLAB_HOME",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        hint = (
            "the lab belongs to root: run pvmlab as root (sudo pvmlab ...)"
            if os.geteuid() != 0
            else f"check the owner and mode of {where}"
        )
        return StateError(f"permission denied: {where}", hint)
    return None
