"""Test helpers for the lab network: client namespaces joined to a lab bridge, real DHCP/TFTP/HTTP
clients (busybox), and checks that nothing is left behind.

Every name is derived from a seed the test passes (its tmp path), so tests running at the same
time on one machine never clash. Everything a helper creates is removed when its ``with`` block
ends, pass or fail (``checked_cleanup``: what was left behind fails a passing test and is a note
on a failing one). Programs run through ``pvmlab.spawn``.

    with client_on_bridge(lab_netns, bridge, seed=str(tmp_path)) as client:
        lease = udhcpc(client, tmp_path, arch=7)        # env of udhcpc's "bound" event
        client.add_address("192.168.105.250/24")
        data = tftp_get(client, "192.168.105.1", "ipxe-x86_64.efi", tmp_path / "out")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvmlab import spawn

NETNS_DIR = Path("/run/netns")
BUSYBOX = "busybox"


def short_hash(*parts: str, n: int = 8) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:n]


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def netns_pids(name: str) -> list[int]:
    if not netns_exists(name):
        return []
    proc = spawn.run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def links(netns: str | None = None) -> list[str]:
    argv = ["ip", "-j", "link", "show"]
    proc = spawn.run(argv if netns is None else ["ip", "-n", netns, *argv[1:]], check=False)
    if proc.returncode != 0:
        return []
    return [str(link["ifname"]) for link in json.loads(proc.stdout or "[]")]


def kill_pid(pid: int, grace: float = 5.0) -> None:
    """SIGTERM then SIGKILL one process (started by the test or found in its own namespace)."""
    spawn.terminate([pid], grace)


def remove_netns(name: str) -> None:
    """Stop whatever still runs inside a namespace this test created, then delete it."""
    for pid in netns_pids(name):
        kill_pid(pid)
    if netns_exists(name):
        spawn.run(["ip", "netns", "del", name], check=False)


@contextlib.contextmanager
def checked_cleanup(cleanup: Callable[[], list[str]]) -> Iterator[None]:
    """Run ``cleanup`` when the block ends, pass or fail; it returns what it found left behind
    (and forced away), as sentences. That fails a test that passed; a test that failed keeps
    its own failure as the one reported, with the leftovers (or the cleanup's own error) added
    to it as a note, so a leftover check never hides why the test failed."""
    try:
        yield
    except BaseException as exc:
        try:
            problems = cleanup()
        except Exception as err:  # the test's failure stays the one reported
            exc.add_note(f"and the cleanup failed too: {err!r}")
        else:
            for problem in problems:
                exc.add_note(f"and after it: {problem}")
        raise
    problems = cleanup()
    if problems:
        raise AssertionError("; ".join(problems))


@dataclass
class Client:
    """A namespace with one veth end; the other end is enslaved to a lab bridge."""

    ns: str
    ifname: str
    peer: str
    lab_netns: str
    extra: dict[str, Any] = field(default_factory=dict)

    def run(self, argv: list[str], *, check: bool = True, timeout: float = 60) -> Any:
        return spawn.run(argv, netns=self.ns, check=check, timeout=timeout)

    def set_mac(self, mac: str) -> None:
        """Give the client NIC another MAC (a new "machine" on the same wire)."""
        self.run(["ip", "link", "set", self.ifname, "down"])
        self.run(["ip", "link", "set", self.ifname, "address", mac])
        self.run(["ip", "link", "set", self.ifname, "up"])

    def add_address(self, cidr: str) -> None:
        self.run(["ip", "addr", "replace", cidr, "dev", self.ifname])

    @property
    def mac(self) -> str:
        out = self.run(["ip", "-j", "link", "show", self.ifname]).stdout
        return str(json.loads(out)[0]["address"])


@contextlib.contextmanager
def client_on_bridge(
    lab_netns: str, bridge: str, seed: str, mac: str | None = None
) -> Iterator[Client]:
    """A fresh client namespace joined by a veth pair to ``bridge`` inside ``lab_netns``."""
    tag = short_hash(seed, lab_netns)
    ns, near, far = f"pvtest-{tag}", f"pvc{tag}a", f"pvc{tag}b"
    if netns_exists(ns):
        remove_netns(ns)
    client = Client(ns=ns, ifname=far, peer=near, lab_netns=lab_netns)

    def remove() -> list[str]:
        if netns_exists(lab_netns) and near in links(lab_netns):
            spawn.run(["ip", "-n", lab_netns, "link", "del", near], check=False)
        remove_netns(ns)
        left = leftovers([ns], [], [near, far])
        if netns_exists(lab_netns):
            left += [f"link {near} in {lab_netns}"] if near in links(lab_netns) else []
        return [f"client network left behind: {left}"] if left else []

    with checked_cleanup(remove):
        spawn.run(["ip", "netns", "add", ns])
        spawn.run(["ip", "-n", lab_netns, "link", "add", near, "type", "veth",
                   "peer", "name", far, "netns", ns])
        spawn.run(["ip", "-n", lab_netns, "link", "set", near, "master", bridge])
        spawn.run(["ip", "-n", lab_netns, "link", "set", near, "up"])
        spawn.run(["ip", "-n", ns, "link", "set", "lo", "up"])
        if mac is not None:
            spawn.run(["ip", "-n", ns, "link", "set", far, "address", mac])
        spawn.run(["ip", "-n", ns, "link", "set", far, "up"])
        yield client


# --- busybox clients ----------------------------------------------------------------------------

_DUMP = """#!/bin/sh
env > "{out}.$1"
"""

USER_CLASS_IPXE = "0x4d:69505845"  # option 77, "iPXE" as iPXE sends it


def udhcpc(
    client: Client,
    workdir: Path,
    *,
    arch: int | None = None,
    ipxe: bool = False,
    extra: tuple[str, ...] = (),
    tries: int = 5,
) -> dict[str, str]:
    """Ask for a lease with busybox udhcpc; return the variables of its ``bound`` event.

    ``arch`` sends option 93 (client system architecture, 2 bytes) with a PXE vendor class,
    as firmware does; ``ipxe`` sends user class "iPXE" (option 77) as iPXE does. Option 175 is
    requested so iPXE's encapsulated options come back. Raises AssertionError with udhcpc's
    output when no lease is obtained.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / f"udhcpc-{short_hash(str(time.monotonic_ns()))}.sh"
    out = script.with_suffix(".env")
    script.write_text(_DUMP.format(out=out))
    script.chmod(0o755)
    argv = [BUSYBOX, "udhcpc", "-i", client.ifname, "-f", "-q", "-n",
            "-t", str(tries), "-T", "1", "-A", "1", "-s", str(script), "-O", "175"]
    if arch is not None:
        argv += ["-x", f"0x5d:{arch:04x}", "-V", f"PXEClient:Arch:{arch:05d}:UNDI:003016"]
    if ipxe:
        argv += ["-x", USER_CLASS_IPXE]
    argv += list(extra)
    proc = client.run(argv, check=False, timeout=30 + 2 * tries)
    bound = Path(f"{out}.bound")
    if proc.returncode != 0 or not bound.exists():
        raise AssertionError(
            f"udhcpc got no lease (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    env: dict[str, str] = {}
    for line in bound.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key] = value
    return env


def tftp_get(client: Client, server: str, name: str, dest: Path) -> bytes:
    """Fetch ``name`` from ``server`` with busybox tftp (the client needs an address first)."""
    client.run([BUSYBOX, "tftp", "-g", "-b", "1468", "-r", name, "-l", str(dest), server])
    return dest.read_bytes()


def http_get(client: Client, url: str, dest: Path) -> bytes:
    """Fetch ``url`` with busybox wget from inside the client namespace."""
    # (no -T: busybox 1.35 wget crashes with it; the run timeout bounds the fetch)
    client.run([BUSYBOX, "wget", "-q", "-O", str(dest), url], timeout=30)
    return dest.read_bytes()


# --- leftovers ---------------------------------------------------------------------------------


def leftovers(
    netns_names: list[str], pids: list[int], link_names: list[str], marker: str | None = None
) -> list[str]:
    """Anything from these lists still present on the host (empty when all is clean).

    A PID counts only while it is alive, not a zombie and (with ``marker``) its command line
    still contains ``marker``, so a PID reused by an unrelated process is not taken for ours.
    """
    found = [f"netns {n}" for n in netns_names if netns_exists(n)]
    found += [f"pid {p}" for p in pids if is_ours(p, marker)]
    host_links = set(links())
    found += [f"link {name}" for name in link_names if name in host_links]
    return found


def is_ours(pid: int, marker: str | None = None) -> bool:
    if not spawn.pid_alive(pid):
        return False
    if marker is not None and marker not in " ".join(spawn.pid_cmdline(pid)):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --- a lab made with the real CLI -----------------------------------------------------------------


@dataclass
class Lab:
    """A lab created and started with ``pvmlab provisioner`` in its own home."""

    home: Path
    status: dict[str, Any]
    seen_pids: set[int] = field(default_factory=set)

    @property
    def netns(self) -> str:
        return str(self.status["netns"])

    @property
    def bridge(self) -> str:
        return str(self.status["bridge"])

    @property
    def ip(self) -> str:
        return str(self.status["address"]).split("/")[0]

    def pid(self, service: str) -> int | None:
        for svc in self.status["services"]:
            if svc["name"] == service:
                return int(svc["pid"]) if svc["pid"] else None
        return None

    def refresh(self) -> dict[str, Any]:
        from conftest import run_pvmlab

        out = run_pvmlab("provisioner", "status", "--json", home=self.home).stdout
        self.status = json.loads(out)
        self.seen_pids.update(s["pid"] for s in self.status["services"] if s["pid"])
        return self.status


@contextlib.contextmanager
def running_lab(home: Path, *create_args: str) -> Iterator[Lab]:
    """``provisioner create`` + ``start`` in ``home``; on the way out ``provisioner stop`` and a
    check that no namespace or process of the lab is left (forced away, then the test fails)."""
    from conftest import run_pvmlab

    run_pvmlab("provisioner", "create", *create_args, home=home)
    seen: set[int] = set()

    def stop_and_check() -> list[str]:
        netns = f"pvmlab-{_lab_id(home)}"
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((home / "stack" / "state.json").read_text())
            seen.update(
                p for p in (state.get("supervisor_pid"), state.get("dnsmasq_pid"))
                if isinstance(p, int)
            )
        # --force: a VM the test left running is stopped too (stop refuses otherwise)
        stop = run_pvmlab("provisioner", "stop", "--force", home=home, check=False)
        bridge = f"pvbr{_lab_id(home)}"
        left = leftovers([netns], sorted(seen), [bridge], marker=str(home))
        if left:
            remove_netns(netns)
            for pid in seen:
                if is_ours(pid, str(home)):
                    kill_pid(pid)
            return [f"left behind after `provisioner stop`: {left}"]
        if stop.returncode != 0:
            return [f"provisioner stop failed: {stop.stderr}"]
        return []

    with checked_cleanup(stop_and_check):
        started = json.loads(run_pvmlab("provisioner", "start", "--json", home=home).stdout)
        lab = Lab(home=home, status=started, seen_pids=seen)
        seen.update(s["pid"] for s in started["services"] if s["pid"])
        yield lab


def _lab_id(home: Path) -> str:
    from pvmlab.home import LabHome

    return LabHome(home.absolute()).lab_id
