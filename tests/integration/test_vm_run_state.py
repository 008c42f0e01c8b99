"""A VM's state is what QEMU says, its lock is its own, its tap goes with it, and a damaged
record stays contained: real labs, real QEMU (TCG), driven through the CLI.

Guests: the fixture kernel on SeaBIOS (the fastest firmware under TCG), told to stay up
(``pvmlab.hold``), to power off at once (the default), or, with the panicking initramfs
(``fixtures.bootassets.build_panicking``), to load the pvpanic driver and crash the kernel.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bootlab import cleaned_lab, import_distro, qemu_pids
from conftest import run_pvmlab
from fixtures.bootassets import MARKER, BootAssets, build_panicking
from pvmlab import spawn
from pvmlab.home import LabHome
from pvmlab.network import lab as network
from pvmlab.qemu import qmp
from pvmlab.vm import runtime

pytestmark = pytest.mark.integration

HOLD = "console=ttyS0 pvmlab.hold"


@contextlib.contextmanager
def lab_with(tmp_path: Path, distros: dict[str, BootAssets]) -> Iterator[Path]:
    """A running lab with each ``distros`` entry imported (their kernels' own command lines);
    every VM removed after (``bootlab.cleaned_lab``)."""
    with cleaned_lab(tmp_path / "home") as lab:
        for name, a in distros.items():
            import_distro(lab.home, name, a)
        yield lab.home


def create(home: Path, name: str, distro: str, cmdline: str = "console=ttyS0") -> dict[str, Any]:
    out = run_pvmlab(
        "vm", "create", name, "--arch", "x86_64", "--firmware", "bios", "--distro", distro,
        "--cmdline", cmdline, "--json", home=home,
    ).stdout  # fmt: skip
    return dict(json.loads(out))


def listing(home: Path) -> dict[str, dict[str, Any]]:
    rows = json.loads(run_pvmlab("vm", "list", "--json", home=home).stdout)
    return {r["name"]: r for r in rows}


def start_waiting(home: Path, name: str, *extra: str) -> subprocess.Popen[str]:
    """`vm start NAME --wait-for …` in the background, as a user would run it."""
    return subprocess.Popen(
        [sys.executable, "-m", "pvmlab.cli.main", "vm", "start", name, "--accel", "tcg", *extra],
        env={**os.environ, "PVMLAB_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def test_paused_guest_is_reported_and_quit_at_once(
    tmp_path: Path, boot_assets: dict[str, BootAssets]
) -> None:
    with lab_with(tmp_path, {"tiny": boot_assets["x86_64"]}) as home:
        lab = LabHome(home)
        create(home, "hold", "tiny", HOLD)
        run_pvmlab(
            "vm", "start", "hold", "--accel", "tcg", "--wait-for", "pvmlab: holding", home=home
        )  # fmt: skip
        assert listing(home)["hold"]["state"] == "running"

        qmp.execute(lab.vm_qmp("hold"), "stop")
        row = listing(home)["hold"]
        assert row["state"] == "paused" and row["pid"] in qemu_pids(home)
        assert isinstance(row["qemu_log"], list)
        table = run_pvmlab("vm", "list", home=home)
        assert "paused" in table.stdout
        assert "hold: the guest is paused; QEMU's last words:" in table.stderr

        stopped = run_pvmlab("vm", "stop", "hold", home=home)  # default: 30 s for the button
        assert "hold: the guest is paused, it cannot react to the power button" in stopped.stdout
        assert "ACPI power button pressed" not in stopped.stdout
        assert "stopped VM hold (quit)" in stopped.stdout
        assert not qemu_pids(home) and lab.tap("hold") not in network.link_names(lab.netns)

        # --wait with a long timeout gives up when the guest is paused under it
        waiting = start_waiting(home, "hold", "--wait-for", "NEVER-PRINTED", "--timeout", "3000")
        try:
            while listing(home)["hold"]["state"] != "running":
                assert waiting.poll() is None, waiting.communicate()
                time.sleep(0.2)
            qmp.execute(lab.vm_qmp("hold"), "stop")
        finally:
            code, out, err = finish(waiting)
        assert code == 1, (out, err)
        last = err.strip().splitlines()[-1]
        assert last.startswith("pvmlab: error: VM hold is paused (QMP) after "), err
        assert "without showing 'NEVER-PRINTED' on its console" in last
        assert "console lines of hold ---" in err and "Traceback" not in err
        run_pvmlab("vm", "stop", "hold", home=home)


def test_panicked_guest_fails_the_wait_and_shows_in_the_list(
    tmp_path: Path, boot_assets: dict[str, BootAssets]
) -> None:
    panicking = build_panicking("x86_64")
    with lab_with(tmp_path, {"panic": panicking}) as home:
        lab = LabHome(home)
        create(home, "crash", "panic")
        waiting = start_waiting(home, "crash", "--wait-for", "NEVER-PRINTED", "--timeout", "3000")
        code, out, err = finish(waiting)
        assert code == 1, (out, err)
        assert "pvmlab: error: VM crash is guest-panicked (QMP) after " in err, err
        assert "console lines of crash ---" in err and "Traceback" not in err
        console = run_pvmlab("vm", "logs", "crash", home=home).stdout
        assert "Kernel panic - not syncing: sysrq triggered crash" in console

        row = listing(home)["crash"]
        assert (row["state"], row["pid"] in qemu_pids(home)) == ("guest-panicked", True)
        stopped = run_pvmlab("vm", "stop", "crash", home=home).stdout
        assert "crash: the guest is guest-panicked, it cannot react" in stopped
        assert "ACPI power button pressed" not in stopped and "(quit)" in stopped
        assert lab.tap("crash") not in network.link_names(lab.netns)


def test_tap_goes_when_the_guest_powers_itself_off(
    tmp_path: Path, boot_assets: dict[str, BootAssets]
) -> None:
    with lab_with(tmp_path, {"tiny": boot_assets["x86_64"]}) as home:
        lab = LabHome(home)
        create(home, "brief", "tiny")  # /init prints the marker and powers off
        result = json.loads(
            run_pvmlab(
                "vm", "start", "brief", "--accel", "tcg", "--wait-for", MARKER, "--json",
                home=home,
            ).stdout
        )  # fmt: skip
        assert result["outcome"] == "ready" and result["line"].startswith(MARKER)
        # --wait and `vm timeline` give the same seconds for the same boot
        timeline = json.loads(run_pvmlab("vm", "timeline", "brief", "--json", home=home).stdout)
        assert timeline["total"] == result["elapsed"]
        tap = lab.tap("brief")
        deadline = time.monotonic() + 120  # a bound for a hung test, not a measurement
        while (qemu_pids(home) or tap in network.link_names(lab.netns)) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert not qemu_pids(home)
        assert tap not in network.link_names(lab.netns)
        assert not lab.vm_pid("brief").exists() and not lab.vm_qmp("brief").exists()
        assert listing(home)["brief"]["state"] == "stopped"
        # the console record ends with the ready event before QEMU's exit
        events = [
            json.loads(line).get("event")
            for line in (lab.logs / "brief.console.jsonl").read_text().splitlines()
        ]
        assert events[0] == "start" and events[-1] == "exit" and events.count("ready") == 1


def test_vm_commands_do_not_queue_behind_a_starting_vm(
    tmp_path: Path, boot_assets: dict[str, BootAssets], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While `start_vm` waits for QEMU's monitor (holding the VM's lock), `vm create` and
    `vm list` of the same lab, run as real CLI processes, complete."""
    with lab_with(tmp_path, {"tiny": boot_assets["x86_64"]}) as home:
        lab = LabHome(home)
        create(home, "slow", "tiny", HOLD)
        seen: dict[str, Any] = {}
        real_wait = runtime.await_startup

        def wait_and_meanwhile(h: LabHome, name: str, proc: subprocess.Popen[bytes]) -> None:
            created = run_pvmlab(
                "vm", "create", "other", "--arch", "x86_64", home=home, timeout=120
            )
            seen["created"] = json.loads(
                run_pvmlab("vm", "list", "--json", home=home, timeout=120).stdout
            )
            seen["create_out"] = created.stdout
            real_wait(h, name, proc)

        monkeypatch.setattr(runtime, "await_startup", wait_and_meanwhile)
        started = runtime.start_vm(lab, "slow", requested_accel="tcg")
        try:
            assert "created VM other" in seen["create_out"]
            assert {r["name"] for r in seen["created"]} == {"slow", "other"}
            assert started.alive()
        finally:
            runtime.stop_vm(lab, "slow", force=True)


def test_a_damaged_record_is_contained(tmp_path: Path, boot_assets: dict[str, BootAssets]) -> None:
    with lab_with(tmp_path, {"tiny": boot_assets["x86_64"]}) as home:
        lab = LabHome(home)
        good = create(home, "good", "tiny", HOLD)
        bad = create(home, "bad", "tiny", HOLD)
        run_pvmlab(
            "vm", "start", "bad", "--accel", "tcg", "--wait-for", "pvmlab: holding", home=home
        )  # fmt: skip
        record = json.loads(lab.vm_file("bad").read_text())
        record["memory_mib"] = "lots"  # invalid, but the MAC and IP can still be read
        lab.vm_file("bad").write_text(json.dumps(record))

        rows = listing(home)
        assert rows["good"]["state"] == "stopped" and rows["good"]["ip"] == good["ip"]
        assert rows["bad"]["state"] == "damaged"
        assert rows["bad"]["record"] == str(lab.vm_file("bad"))
        assert "memory_mib" in rows["bad"]["problem"]
        assert "pvmlab vm clean bad" in rows["bad"]["hint"]
        assert rows["bad"]["pid"] in qemu_pids(home)  # still running, by its pid file
        table = run_pvmlab("vm", "list", home=home)
        assert f"bad: damaged record {lab.vm_file('bad')}" in table.stderr
        logs = run_pvmlab("vm", "logs", "bad", home=home).stdout
        assert "pvmlab: holding (pvmlab.hold)" in logs.splitlines()

        newer = create(home, "newer", "tiny")  # not blocked, and keeps off bad's address
        assert newer["ip"] not in (good["ip"], bad["ip"])
        refused = run_pvmlab(
            "vm", "create", "twin", "--arch", "x86_64", "--mac", bad["mac"], home=home, check=False
        )  # fmt: skip
        assert refused.returncode == 2 and "already used by VM 'bad'" in refused.stderr

        stopped = run_pvmlab("vm", "stop", "bad", "--timeout", "1", home=home).stdout
        assert "stopped VM bad" in stopped and not qemu_pids(home)
        assert lab.tap("bad") not in network.link_names(lab.netns)
        run_pvmlab("vm", "clean", "bad", home=home)
        assert not lab.vm_file("bad").exists() and "bad" not in listing(home)

        # clean --all: one VM that cannot be removed does not stop the others
        lab.vm_file("bad").write_text("{not json")
        run_pvmlab("vm", "start", "good", "--accel", "tcg", home=home)
        spawn.run(["chattr", "+i", str(lab.vm_file("newer"))])
        try:
            cleaned = run_pvmlab("vm", "clean", "--all", home=home, check=False)
        finally:
            spawn.run(["chattr", "-i", str(lab.vm_file("newer"))])
        assert cleaned.returncode == 1, cleaned
        assert "bad: removed" in cleaned.stdout and "good: removed" in cleaned.stdout
        err = cleaned.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("pvmlab: error: could not remove 1 VM(s): newer")
        assert set(listing(home)) == {"newer"} and not qemu_pids(home)


def test_boots_in_parallel_threads_report_the_timeline_s_seconds(
    tmp_path: Path, boot_assets: dict[str, BootAssets]
) -> None:
    """`start_and_wait` for two VMs at once from two threads (what a lab-file runner does):
    both ready, each with the very seconds `vm timeline` gives for that boot (one clock)."""
    import re
    from concurrent.futures import ThreadPoolExecutor

    from pvmlab.observe import timeline
    from pvmlab.vm import boot

    with lab_with(tmp_path, {"tiny": boot_assets["x86_64"]}) as home:
        lab = LabHome(home)
        names = ["p1", "p2"]
        for name in names:
            create(home, name, "tiny")
        pattern = re.compile(MARKER)

        def one(name: str) -> boot.BootResult:
            return boot.start_and_wait(lab, name, pattern=pattern, timeout=600, accel="tcg")

        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(one, names))
        for name, result in zip(names, results, strict=True):
            assert (result.name, result.outcome) == (name, "ready"), result.reason
            assert result.line.startswith(f"{MARKER} console=ttyS0")
            assert result.elapsed == timeline.timeline_of_vm(lab, name, pattern).total
        assert results[0].pid != results[1].pid
