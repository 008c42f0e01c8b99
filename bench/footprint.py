"""Footprint: the stack's idle memory and how fast the CLI answers.

    sudo .venv/bin/python -m bench.footprint [--vms 20] [--runs 15] [--json]

1. Idle RSS: a lab is created and started with the real CLI in a temporary home; after
   ``--idle`` seconds the VmRSS of the supervisor (Python: asyncio, aiohttp, dnsmasq's keeper)
   and of dnsmasq are read from /proc/PID/status. (``--skip-stack`` leaves this out; it needs
   root.)
2. CLI wall time: ``--vms`` VMs are defined with ``pvmlab vm create`` in another temporary home
   (the stack is not started), then ``pvmlab --help`` and ``pvmlab vm list`` run ``--runs``
   times each through the installed console script, after one warm-up run; median and min of
   the wall time, and the median CPU time (user+sys), which a busy machine disturbs less.
   ``--importtime`` adds the slowest imports of each command (``python -X importtime``).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import click

from bench._common import (
    children_cpu_seconds,
    emit_json,
    interruptible,
    machine,
    netlab,
    one_line_errors,
    require_programs,
    require_root,
    rss_kib,
    table,
)
from bench._common import workdir as make_workdir
from pvmlab import spawn

COMMANDS: dict[str, list[str]] = {"--help": ["--help"], "vm list": ["vm", "list"]}


def pvmlab_argv() -> list[str]:
    """The console script users run (next to this interpreter), else ``python -m``."""
    script = Path(sys.executable).parent / "pvmlab"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pvmlab.cli.main"]


def cli(home: Path, *args: str) -> str:
    env = {**os.environ, "PVMLAB_HOME": str(home)}
    return spawn.run([*pvmlab_argv(), *args], env=env).stdout


# --- idle RSS -------------------------------------------------------------------------------


def idle_rss(work: Path, idle: float) -> dict[str, Any]:
    with netlab.running_lab(work / "stack-home") as lab:
        time.sleep(idle)
        lab.refresh()
        rss = {name: rss_kib(pid) if pid else None
               for name in ("supervisor", "dnsmasq") for pid in [lab.pid(name)]}
    return {
        "idle_s": idle,
        "supervisor_kib": rss["supervisor"],
        "dnsmasq_kib": rss["dnsmasq"],
        "total_kib": (rss["supervisor"] or 0) + (rss["dnsmasq"] or 0),
    }


# --- CLI speed ------------------------------------------------------------------------------


def define_vms(home: Path, count: int) -> None:
    cli(home, "provisioner", "create")
    for i in range(count):
        cli(home, "vm", "create", f"bench{i:02d}", "--arch", "x86_64")
    listed = cli(home, "vm", "list", "--json")
    if listed.count('"bench') < count:
        raise RuntimeError(f"vm list does not show the {count} VMs just created:\n{listed}")


def time_command(home: Path, args: list[str], runs: int) -> dict[str, Any]:
    env = {**os.environ, "PVMLAB_HOME": str(home)}
    argv = [*pvmlab_argv(), *args]
    spawn.run(argv, env=env)  # warm-up: page cache, .pyc files
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(runs):
        cpu = children_cpu_seconds()
        began = time.monotonic()
        spawn.run(argv, env=env)
        walls.append(time.monotonic() - began)
        cpus.append(children_cpu_seconds() - cpu)
    return {
        "runs": runs,
        "median_s": round(statistics.median(walls), 3),
        "min_s": round(min(walls), 3),
        "max_s": round(max(walls), 3),
        "median_cpu_s": round(statistics.median(cpus), 3),
    }


def slowest_imports(home: Path, args: list[str], top: int) -> list[dict[str, Any]]:
    """Top-level imports by cumulative time (microseconds) from ``python -X importtime``."""
    env = {**os.environ, "PVMLAB_HOME": str(home)}
    proc = spawn.run([sys.executable, "-X", "importtime", "-m", "pvmlab.cli.main", *args],
                     env=env)
    found: list[dict[str, Any]] = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        _, cumulative, name = line.split("|", 2)
        if name.startswith("  "):  # nested: counted in its parent's cumulative time
            continue
        found.append({"module": name.strip(), "cumulative_ms": int(cumulative) / 1000})
    found.sort(key=lambda e: e["cumulative_ms"], reverse=True)
    return found[:top]


# --- output ---------------------------------------------------------------------------------


def print_report(result: dict[str, Any]) -> None:
    m = result["machine"]
    print(f"machine: {m['nproc']} x {m['cpu']}, kernel {m['kernel']}, {m['date']}, "
          f"load {m['loadavg_1m']}")
    rss = result.get("idle_rss")
    if rss:
        table(f"Stack idle RSS after {rss['idle_s']:g} s (KiB, VmRSS)",
              ["supervisor (python)", "dnsmasq", "total"],
              [[str(rss["supervisor_kib"]), str(rss["dnsmasq_kib"]), str(rss["total_kib"])]])
    speed = result["cli"]
    table(
        f"CLI wall time, {speed['vms']} VMs defined ({speed['program']})",
        ["command", "median s", "min s", "max s", "median CPU s", "runs"],
        [[f"pvmlab {name}", f"{t['median_s']:.3f}", f"{t['min_s']:.3f}", f"{t['max_s']:.3f}",
          f"{t['median_cpu_s']:.3f}", str(t["runs"])] for name, t in speed["commands"].items()],
    )
    for name, imports in result.get("imports", {}).items():
        table(f"slowest top-level imports of `pvmlab {name}`", ["module", "cumulative ms"],
              [[e["module"], f"{e['cumulative_ms']:.1f}"] for e in imports])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--vms", default=20, show_default=True, type=click.IntRange(0, 500),
              help="VMs to define (with `pvmlab vm create`) before timing `vm list`.")
@click.option("--runs", default=15, show_default=True, type=click.IntRange(1, 1000),
              help="Timed runs per command (after one warm-up run).")
@click.option("--idle", default=3.0, show_default=True, type=click.FloatRange(0, 600),
              help="Seconds the started stack idles before its RSS is read.")
@click.option("--skip-stack", is_flag=True, help="Only the CLI timings (no root needed).")
@click.option("--importtime", "with_imports", is_flag=True,
              help="Also list each command's slowest imports (python -X importtime).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the lab homes here (default: a temp dir, removed).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def main(vms: int, runs: int, idle: float, skip_stack: bool, with_imports: bool,
         workdir: Path | None, as_json: bool) -> None:
    """The stack's idle RSS and the wall time of `pvmlab --help` and `pvmlab vm list`."""
    if not skip_stack:
        require_root()
        require_programs("ip", "dnsmasq")
    result: dict[str, Any] = {"machine": machine()}
    with (
        one_line_errors(),
        interruptible(),
        make_workdir(workdir, "pvmlab-bench-footprint-") as work,
    ):
        if not skip_stack:
            result["idle_rss"] = idle_rss(work, idle)
        cli_home = work / "cli-home"
        define_vms(cli_home, vms)
        result["cli"] = {
            "vms": vms,
            "program": " ".join(pvmlab_argv()),
            "commands": {name: time_command(cli_home, args, runs)
                         for name, args in COMMANDS.items()},
        }
        if with_imports:
            result["imports"] = {name: slowest_imports(cli_home, args, 8)
                                 for name, args in COMMANDS.items()}
    if as_json:
        emit_json(result)
    else:
        print_report(result)


if __name__ == "__main__":
    main()
