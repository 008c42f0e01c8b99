"""The stack's background process: owns dnsmasq and the HTTP server of one lab.

    python -m pvmlab.stack.supervisor --home H --ready-fd N

It is started detached by ``pvmlab.stack.control.start_stack`` inside the lab's network
namespace and runs one asyncio loop:

1. stages the iPXE first stages into the TFTP root and renders dnsmasq's configuration;
2. starts the HTTP server where ``stack.endpoint`` says (the provisioner address, port 80);
3. runs dnsmasq in the foreground and waits until its DHCP and TFTP sockets are bound;
4. opens its control socket (``LabHome.supervisor_socket``), writes ``stack/state.json`` (the
   record ``provisioner status`` shows: start time, restarts) and only then tells its starter
   ``READY`` on the pipe it inherited as fd N. A start-up failure is written on that pipe
   instead, as one JSON line (error class, problem, hint), and the process exits 1, so
   ``provisioner start`` reports it in one line. The starter blocks on the pipe: no file is
   polled, and a supervisor that dies without a word closes the pipe (end of file).

While running: if dnsmasq dies it is started again at once (same lease file, so leases are
kept; back-off only when it keeps dying right after start), and state.json gets the new PID.
dnsmasq runs under ``setpriv --pdeathsig TERM``: if the supervisor is killed (even with
SIGKILL) the kernel stops dnsmasq too, so no orphan keeps answering DHCP.

Reloading has one path, ``Supervisor.reload_reservations``: render the configuration, SIGHUP
dnsmasq, and wait until dnsmasq logs that it re-read the reservations. A ``reload`` request on
the control socket gets the answer only then (``provisioner reload`` returns after dnsmasq
re-read the file); SIGHUP to the supervisor runs the same path with nobody waiting.
SIGTERM or SIGINT stop dnsmasq and the HTTP server; the process then exits 0.
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
from pvmlab.home import LabHome, open_truncated, read_json, write_atomic, write_json
from pvmlab.records import store
from pvmlab.records.models import LabSpec, utc_now
from pvmlab.stack import dnsmasq, logfiles
from pvmlab.stack.endpoint import lab_endpoint

log = logging.getLogger("pvmlab.supervisor")

READY_TIMEOUT = 15.0
RELOAD_TIMEOUT = 10.0
REQUEST_TIMEOUT = 5.0
DHCP_PORT, TFTP_PORT = 67, 69
DHCPV6_PORT = 547


def served_udp_ports(lab: LabSpec) -> set[int]:
    """The UDP ports dnsmasq binds for this lab: TFTP, DHCP for IPv4, DHCPv6 for IPv6."""
    return {TFTP_PORT} | ({DHCP_PORT} if lab.has_ipv4 else set()) | (
        {DHCPV6_PORT} if lab.has_ipv6 else set()
    )
READY = "READY"
# the kernel stops dnsmasq when the supervisor dies, however it dies (util-linux's setpriv)
PDEATHSIG_PREFIX = ("setpriv", "--pdeathsig", "TERM")


def bound_udp_ports(pid: int | str = "self") -> set[int]:
    """UDP ports with a bound socket in the network namespace of process ``pid``."""
    ports: set[int] = set()
    for table in (f"/proc/{pid}/net/udp", f"/proc/{pid}/net/udp6"):
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
        self.serving = asyncio.Event()  # set while a dnsmasq has bound its ports
        self.reload_lock = asyncio.Lock()
        self.reloads: set[asyncio.Task[None]] = set()
        self.socket_inode: int | None = None

    # --- state ------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "home": str(self.home.root),
            "supervisor_pid": os.getpid(),
            "dnsmasq_pid": self.proc.pid if self.proc is not None else None,
            "netns": self.home.netns,
            "bridge": self.home.bridge,
            "address": self.lab.address,
            "ip": str(self.lab.ip) if self.lab.has_ipv4 else None,
            "ipv6": self.lab.ipv6,
            "http_url": lab_endpoint(self.lab).url("/"),
            "boot_url": lab_endpoint(self.lab).boot_url,
            "started": self.started,
            "dnsmasq_started": self.dnsmasq_started,
            "dnsmasq_restarts": self.restarts,
        }

    def write_state(self) -> None:
        write_json(self.home.stack_state, self.state())

    # --- dnsmasq ----------------------------------------------------------------------------

    def _stderr_tail(self) -> str:
        try:
            lines = self.home.dnsmasq_stderr.read_text(errors="replace").strip().splitlines()
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
            if served_udp_ports(self.lab) <= bound_udp_ports():
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
            with open_truncated(self.home.dnsmasq_stderr) as err, spawn.spawn(
                [*PDEATHSIG_PREFIX, *dnsmasq.argv(self.home)], stderr=err, grace=5.0
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
                    self.serving.set()
                    log.info("dnsmasq serving (pid %d)", proc.pid)
                    if not ready.done():
                        ready.set_result(None)
                    try:
                        await self._until_exit_or_stop(proc)
                    finally:
                        self.serving.clear()
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

    # --- dnsmasq.log: bounded like the logs written here (stack.logfiles) -------------------

    async def bound_dnsmasq_log(self, bounds: logfiles.LogBounds) -> None:
        """Until stopping: rotate dnsmasq.log once it reaches ``bounds.max_bytes`` and have
        dnsmasq reopen it (SIGUSR2)."""
        path = self.home.dnsmasq_log
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), logfiles.DNSMASQ_LOG_CHECK)
            try:
                if path.stat().st_size < bounds.max_bytes:
                    continue
            except FileNotFoundError:
                continue
            # under the reload lock: a reload reads the log from a byte offset
            async with self.reload_lock:
                logfiles.rotate(path, bounds.backups)
                proc = self.proc
                # only a dnsmasq that serves has its handlers (SIGUSR2 would end it before);
                # one being started opens the new file anyway
                if proc is not None and self.serving.is_set():
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGUSR2)
                log.info("dnsmasq.log rotated at %d bytes", bounds.max_bytes)

    # --- reload: the one path ---------------------------------------------------------------

    async def reload_reservations(self) -> int:
        """Render the configuration and return once dnsmasq has re-read the reservations.

        Returns the PID of the dnsmasq that read them. A dnsmasq being restarted reads the new
        file when it starts, so then the reload waits for it to serve again. Raises
        PvmlabError when the records cannot be rendered (the old configuration stays) or
        dnsmasq does not confirm within RELOAD_TIMEOUT.
        """
        async with self.reload_lock:
            self._render()
            deadline = time.monotonic() + RELOAD_TIMEOUT
            while True:
                remaining = deadline - time.monotonic()
                try:
                    await asyncio.wait_for(self.serving.wait(), max(remaining, 0.0))
                except TimeoutError:
                    raise StateError(
                        f"dnsmasq is not serving, so it did not re-read the reservations "
                        f"within {RELOAD_TIMEOUT:.0f} s",
                        "see `pvmlab provisioner logs --service supervisor`",
                    ) from None
                proc = self.proc
                if proc is not None and await self._hup_and_confirm(proc, deadline):
                    log.info("reservations reloaded (dnsmasq pid %d re-read them)", proc.pid)
                    return proc.pid
                # dnsmasq exited meanwhile: the restarted one reads the new file at start,
                # and is asked again once it serves
                await asyncio.sleep(0.05)

    async def _hup_and_confirm(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        """SIGHUP dnsmasq and wait for its "read <hosts file>" log line (False: it exited)."""
        log_file = self.home.dnsmasq_log
        hosts = self.home.dhcp_hosts.absolute()
        offset = log_file.stat().st_size if log_file.exists() else 0
        try:
            proc.send_signal(signal.SIGHUP)
        except ProcessLookupError:
            return False
        while time.monotonic() < deadline:
            if _hosts_read_since(log_file, offset, hosts):
                return True
            if proc.poll() is not None:
                return False
            await asyncio.sleep(0.01)
        raise StateError(
            f"dnsmasq (pid {proc.pid}) did not confirm re-reading {hosts} "
            f"within {RELOAD_TIMEOUT:.0f} s",
            "see `pvmlab provisioner logs --service dnsmasq`",
        )

    def reload_on_signal(self) -> None:
        """SIGHUP to the supervisor: the same reload, with nobody waiting for the answer."""

        async def reload() -> None:
            try:
                await self.reload_reservations()
            except PvmlabError as exc:
                log.error("reload refused, configuration kept as it was: %s", exc)

        task = asyncio.ensure_future(reload())
        self.reloads.add(task)
        task.add_done_callback(self.reloads.discard)

    # --- the control socket --------------------------------------------------------------------

    async def serve_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One JSON request line in, one JSON answer line out (``reload`` or ``ping``)."""
        answer: dict[str, Any]
        try:
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
            request = json.loads(line or b"{}")
            command = request.get("command") if isinstance(request, dict) else None
            if command == "reload":
                answer = {"ok": True, "dnsmasq_pid": await self.reload_reservations()}
            elif command == "ping":
                answer = {"ok": True, **self.state()}
            else:
                answer = failure_record(
                    StateError(f"unknown request {command!r}", "this is a bug in pvmlab")
                )
        except PvmlabError as exc:
            answer = failure_record(exc)
        except (TimeoutError, ValueError, ConnectionError) as exc:
            answer = failure_record(
                StateError(f"bad request on the control socket: {exc}", "this is a bug")
            )
        with contextlib.suppress(ConnectionError):
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def open_control_socket(self) -> asyncio.AbstractServer:
        """Listen on the home's control socket, readable and writable by root only."""
        path = self.home.supervisor_socket
        path.unlink(missing_ok=True)  # a previous supervisor's, which is gone (start stops it)
        old_umask = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(self.serve_request, path=str(path))
        except OSError as exc:
            raise StateError(
                f"cannot open the stack's control socket {path}: {exc.strerror or exc}",
                "choose a lab home with a shorter path (PVMLAB_HOME)",
            ) from None
        finally:
            os.umask(old_umask)
        self.socket_inode = path.stat().st_ino
        return server

    # --- main -------------------------------------------------------------------------------

    async def run(self, notify: ReadyPipe) -> int:
        from pvmlab.assets import ipxe
        from pvmlab.stack import autoexec
        from pvmlab.stack.http import start_http

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_on_signal)
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
            bounder = asyncio.ensure_future(self.bound_dnsmasq_log(logfiles.LogBounds.from_env()))
            server: asyncio.AbstractServer | None = None
            try:
                await ready
                server = await self.open_control_socket()
                self.write_state()
                write_atomic(self.home.supervisor_pid, f"{os.getpid()}\n")
                log.info("stack ready: %s", json.dumps(self.state()))
                notify.ready()
                await keeper
            finally:
                self.stopping.set()
                if server is not None:
                    server.close()
                for task in list(self.reloads):
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
                bounder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await bounder
        finally:
            await runner.cleanup()
            log.info("HTTP server stopped")
        return 0

    def cleanup_files(self) -> None:
        """Remove state.json, the pid file and the control socket, if still this process's."""
        if read_json(self.home.stack_state).get("supervisor_pid") == os.getpid():
            self.home.stack_state.unlink(missing_ok=True)
        if spawn.read_pid_file(self.home.supervisor_pid) == os.getpid():
            self.home.supervisor_pid.unlink(missing_ok=True)
        sock = self.home.supervisor_socket
        with contextlib.suppress(OSError):
            if self.socket_inode is not None and sock.stat().st_ino == self.socket_inode:
                sock.unlink()


def _hosts_read_since(log_file: Path, offset: int, hosts: Path) -> bool:
    """Whether dnsmasq logged re-reading ``hosts`` after byte ``offset`` of its log."""
    try:
        with log_file.open("rb") as fh:
            fh.seek(offset)
            new = fh.read().decode(errors="replace")
    except OSError:
        return False
    return f"read {hosts}" in new


def failure_record(exc: BaseException) -> dict[str, Any]:
    """An error as one JSON-ready record: the starter or a client rebuilds it with its class."""
    if isinstance(exc, PvmlabError):
        return {"ok": False, "type": type(exc).__name__, "problem": exc.problem, "hint": exc.hint}
    return {
        "ok": False,
        "type": "ProcessError",
        "problem": f"the stack supervisor failed: {type(exc).__name__}: {exc}",
        "hint": "see `pvmlab provisioner logs --service supervisor`",
    }


class ReadyPipe:
    """The write end of the starter's readiness pipe: one line, READY or a JSON error, once."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        if fd is not None:
            os.set_inheritable(fd, False)  # dnsmasq must not hold the starter's pipe open

    def _say(self, line: str) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.write(fd, line.encode() + b"\n")
        except OSError as exc:  # the starter gave up waiting: nobody to tell
            log.warning("could not tell the starter: %s", exc)
        finally:
            os.close(fd)

    def ready(self) -> None:
        self._say(READY)

    def failed(self, exc: BaseException) -> None:
        self._say(json.dumps(failure_record(exc)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pvmlab.stack.supervisor",
        description="Run a lab's dnsmasq and HTTP server (started by `pvmlab provisioner start`).",
    )
    parser.add_argument("--home", required=True, type=Path, help="the lab home")
    parser.add_argument(
        "--ready-fd", type=int, default=None,
        help="an inherited pipe: READY or a JSON error is written on it once",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s[%(process)d] %(levelname)s: %(message)s",
    )
    home = LabHome(args.home.absolute())
    log.info("supervisor starting for %s in namespace %s", home.root, home.netns)
    sup: Supervisor | None = None
    notify = ReadyPipe(args.ready_fd)
    try:
        # bounded and rotated (stack.logfiles); stdout/stderr follow the current file
        logfiles.log_to(home.logs / "supervisor.log", logfiles.LogBounds.from_env())
        lab = store.load_lab(home)
        sup = Supervisor(home, lab)
        code = asyncio.run(sup.run(notify))
    except Exception as exc:
        if isinstance(exc, PvmlabError):
            log.error("%s", exc)
        else:
            log.exception("supervisor failed")
        notify.failed(exc)
        code = 1
    finally:
        notify.failed(StateError("the stack supervisor stopped before it was ready"))
        if sup is not None:
            sup.cleanup_files()
    log.info("supervisor exiting with code %d", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
