"""Errors a user can act on.

    PvmlabError             problem + hint, printed as one line each; exit code 1
     ├── ValidationError    bad input at the edge (names, MACs, IPs, paths); exit code 2
     ├── StateError         the lab is not in a state that allows the command
     ├── PrivilegeError     root / CAP_NET_ADMIN needed
     ├── DependencyError    a program, firmware or binary is missing
     └── ProcessError       a program we ran failed (command, exit code and stderr tail kept)

Anything else reaching the CLI is a bug and is reported as such, with the traceback only under
``--debug``.
"""

from __future__ import annotations


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
