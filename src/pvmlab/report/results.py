"""The result of a lab test run: per machine, whether it reached its ready condition, and the
evidence (boot timeline, console tail, what the stack saw of its MAC)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Outcome = Literal["passed", "failed"]


@dataclass
class MachineResult:
    name: str
    arch: str
    firmware: str
    boot: str
    expectation: str  # what "ready" meant, in words
    outcome: Outcome
    reason: str = ""  # one line when failed
    elapsed: float | None = None  # seconds from start to ready (or to the failure)
    timeline: dict[str, Any] | None = None  # ``vm timeline --json``
    console_tail: list[str] = field(default_factory=list)
    stack_view: list[str] = field(default_factory=list)  # dnsmasq/HTTP lines of its MAC

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"


@dataclass
class RunResult:
    lab: str
    lab_file: str
    started: str  # ISO 8601
    duration: float
    machines: list[MachineResult]

    @property
    def passed(self) -> int:
        return sum(1 for m in self.machines if m.passed)

    @property
    def failed(self) -> int:
        return len(self.machines) - self.passed

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        out["failed"] = self.failed
        return out
