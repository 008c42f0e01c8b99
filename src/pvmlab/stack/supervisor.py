"""The stack's background process: owns dnsmasq and the HTTP server of one lab.

    python -m pvmlab.stack.supervisor --home H

It is started detached by ``pvmlab.stack.control.start`` inside the lab's network namespace and
runs one asyncio loop:

1. stages the iPXE first stages into the TFTP root and renders dnsmasq's configuration;
2. starts the HTTP server where ``stack.endpoint`` says (the provisioner address, port 80);
3. runs dnsmasq in the foreground and waits until its DHCP and TFTP sockets are bound;
4. only then writes ``stack/state.json`` (atomically): that file is the readiness signal the
   starter waits for. A start-up failure is written to ``stack/start-error.json`` instead
   (problem + hint) and the process exits 1, so ``provisioner start`` can report it in one line.

While running: if dnsmasq dies it is started again at once (same lease file, so leases are
kept; back-off only when it keeps dying right after start), and state.json gets the new PID.
SIGHUP re-renders the configuration and forwards SIGHUP to dnsmasq (which re-reads the
reservations). SIGTERM or SIGINT stop dnsmasq and the HTTP server; the process then exits 0.
Its log is ``logs/supervisor.log`` (also its stderr; bounded and rotated: ``stack.logfiles``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pvmlab import spawn
from pvmlab.errors import PvmlabError, StateError
from pvmlab.home import LabHome, read_json, write_atomic, write_json
from pvmlab.records import store
from pvmlab.records.models import LabSpec, utc_now
from pvmlab.stack import dnsmasq, logfiles
from pvmlab.stack.endpoint import lab_endpoint

log = logging.getLogger("pvmlab.supervisor")

READY_TIMEOUT = 15.0
DHCP_PORT, TFTP_PORT = 67, 69


def state_path(home: LabHome) -> Path:
    return home.stack / "state.json"


def error_path(home: LabHome) -> Path:
    return home.stack / "start-error.json"


def pid_file(home: LabHome) -> Path:
    return home.pids / "supervisor.pid"


def stderr_path(home: LabHome) -> Path:
    return home.stack / "dnsmasq.stderr"


def bound_udp_ports() -> set[int]:
    """UDP ports with a bound socket in this process's network namespace."""
    ports: set[int] = set()
    for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 1 and ":" in fields[1]:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class Supervisor:
    def __init__(self, home: LabHome, lab: LabSpec) -> None:
        self.home = home
        self.lab = lab
        self.stopping = asyncio.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.started = utc_now()
        self.dnsmasq_started = ""

    # --- state ------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "home": str(self.home.root),
            "supervisor_pid": os.getpid(),
            "dnsmasq_pid": self.proc.pid if self.proc is not None else None,
            "netns": self.home.netns,
            "bridge": self.home.bridge,
            "address": self.lab.address,
            "ip": str(self.lab.ip),
            "http_url": lab_endpoint(self.lab).url("/"),
            "boot_url": lab_endpoint(self.lab).boot_url,
            "started": self.started,
            "dnsmasq_started": self.dnsmasq_started,
            "dnsmasq_restarts": self.restarts,
        }

    def write_state(self) -> None:
        write_json(state_path(self.home), self.state())

    # --- dnsmasq ----------------------------------------------------------------------------

    def _stderr_tail(self) -> str:
        try:
            lines = stderr_path(self.home).read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""

    async def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        """Return when dnsmasq's DHCP and TFTP sockets are bound; raise if it exits first."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            code = proc.poll()
            if code is not None:
                detail = self._stderr_tail() or "see logs/dnsmasq.log"
                raise StateError(
                    f"dnsmasq exited with code {code} while starting: {detail}",
                    "see `pvmlab provisioner logs --service supervisor`",
                )
            if {DHCP_PORT, TFTP_PORT} <= bound_udp_ports():
                return
            if time.monotonic() > deadline:
                raise StateError(
                    f"dnsmasq did not bind its DHCP and TFTP ports within {READY_TIMEOUT:.0f} s",
                    "see `pvmlab provisioner logs --service dnsmasq`",
                )
            await asyncio.sleep(0.02)

    def _render(self) -> None:
        dnsmasq.write_configs(self.home, self.lab)

    async def _exited(self, proc: subprocess.Popen[bytes]) -> None:
        """Wait for the process to exit: woken by its pidfd, or polling where there is none."""
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # kernel before 5.3, or not Linux
            while proc.poll() is None:
                await asyncio.sleep(0.1)
            return
        done = loop.create_future()

        def wake() -> None:
            if not done.done():
                done.set_result(None)

        loop.add_reader(fd, wake)
        try:
            if proc.poll() is None:
                await done
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        proc.wait()

    async def run_dnsmasq(self, ready: asyncio.Future[None]) -> None:
        """Keep dnsmasq running until stopping is set; the first readiness resolves ``ready``.

        Before readiness every failure is handed to ``ready`` (the start fails); afterwards
        failures are logged and dnsmasq is started again.
        """
        try:
            await self._keep_dnsmasq(ready)
        except BaseException as exc:
            if ready.done():
                raise
            ready.set_exception(exc)
        finally:
            self.proc = None

    async def _keep_dnsmasq(self, ready: asyncio.Future[None]) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                self._render()
            except PvmlabError as exc:
                if not ready.done():
                    raise
                log.error("configuration not re-rendered, the previous one is used: %s", exc)
            began = time.monotonic()
            with stderr_path(self.home).open("wb") as err, spawn.spawn(
                dnsmasq.argv(self.home), stderr=err, grace=5.0
            ) as proc:
                self.proc = proc
                try:
                    await self._wait_ready(proc)
                except PvmlabError as exc:
                    if not ready.done():
                        raise
                    log.error("dnsmasq failed to come back: %s", exc)
                else:
                    self.dnsmasq_started = utc_now()
                    self.write_state()
                    log.info("dnsmasq serving (pid %d)", proc.pid)
                    if not ready.done():
                        ready.set_result(None)
                    await self._until_exit_or_stop(proc)
                    if self.stopping.is_set():
                        log.info("stopping dnsmasq (pid %d)", proc.pid)
                        break  # leaving the with block terminates it
                    log.warning(
                        "dnsmasq (pid %d) exited with code %s: %s; restarting it (leases kept)",
                        proc.pid,
                        proc.returncode,
                        self._stderr_tail() or "no error output",
                    )
            self.restarts += 1
            # restart at once; back off only when it keeps dying right after each start
            failures = failures + 1 if time.monotonic() - began < 2 else 0
            if failures >= 3:
                delay = min(5.0, 0.25 * 2 ** (failures - 2))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)

    async def _until_exit_or_stop(self, proc: subprocess.Popen[bytes]) -> None:
        exited = asyncio.ensure_future(self._exited(proc))
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (exited, stop):
                task.cancel()
            await asyncio.gather(exited, stop, return_exceptions=True)

    def reload(self) -> None:
        """SIGHUP: re-render the configuration and have dnsmasq re-read its reservations."""
        try:
            self._render()
        except PvmlabError as exc:
            log.error("reload refused, configuration kept as it was: %s", exc)
            return
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGHUP)
            log.info("reservations reloaded (SIGHUP sent to dnsmasq pid %d)", proc.pid)

    # --- main -------------------------------------------------------------------------------

    async def run(self) -> int:
        from pvmlab.assets import ipxe
        from pvmlab.stack import autoexec
        from pvmlab.stack.http import start_http

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        logfiles.quiet_loop_errors(loop, logfiles.Notes(log))  # no traceback per failed accept

        if not Path(f"/sys/class/net/{self.home.bridge}").exists():
            raise StateError(
                f"bridge {self.home.bridge} is not in this network namespace",
                "start the stack with `pvmlab provisioner start`",
            )
        staged = ipxe.stage_into(self.home)
        autoexec.write(self.home, self.lab)  # UEFI iPXE runs it at once: no 2 s Ctrl-B prompt
        for b in staged:
            log.info("TFTP %s <- %s (%s)", b.tftp_name, b.path, b.source)
        runner = await start_http(self.home, self.lab, lab_endpoint(self.lab))
        try:
            ready: asyncio.Future[None] = loop.create_future()
            keeper = asyncio.ensure_future(self.run_dnsmasq(ready))
            try:
                await ready
                self.write_state()
                write_atomic(pid_file(self.home), f"{os.getpid()}\n")
                log.info("stack ready: %s", json.dumps(self.state()))
                await keeper
            finally:
                self.stopping.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
        finally:
            await runner.cleanup()
            log.info("HTTP server stopped")
        return 0

    def cleanup_files(self) -> None:
        """Remove state.json and the pid file, if they are still this process's."""
        if read_json(state_path(self.home)).get("supervisor_pid") == os.getpid():
            state_path(self.home).unlink(missing_ok=True)
        if spawn.read_pid_file(pid_file(self.home)) == os.getpid():
            pid_file(self.home).unlink(missing_ok=True)


def report_failure(home: LabHome, exc: BaseException) -> None:
    if isinstance(exc, PvmlabError):
        record = {"type": type(exc).__name__, "problem": exc.problem, "hint": exc.hint}
    else:
        record = {
            "type": "ProcessError",
            "problem": f"the stack supervisor failed: {type(exc).__name__}: {exc}",
            "hint": "see `pvmlab provisioner logs --service supervisor`",
        }
    write_json(error_path(home), record)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pvmlab.stack.supervisor",
        description="Run a lab's dnsmasq and HTTP server (started by `pvmlab provisioner start`).",
    )
    parser.add_argument("--home", required=True, type=Path, help="the lab home")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s[%(process)d] %(levelname)s: %(message)s",
    )
    home = LabHome(args.home.absolute())
    log.info("supervisor starting for %s in namespace %s", home.root, home.netns)
    sup: Supervisor | None = None
    try:
        # bounded and rotated (stack.logfiles); stdout/stderr follow the current file
        logfiles.log_to(home.logs / "supervisor.log", logfiles.LogBounds.from_env())
        lab = store.load_lab(home)
        sup = Supervisor(home, lab)
        code = asyncio.run(sup.run())
    except Exception as exc:
        if isinstance(exc, PvmlabError):
            log.error("%s", exc)
        else:
            log.exception("supervisor failed")
        report_failure(home, exc)
        code = 1
    finally:
        if sup is not None:
            sup.cleanup_files()
    log.info("supervisor exiting with code %d", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
