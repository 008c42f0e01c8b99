"""The lab's optional uplink: outbound access for the targets, leaving the host's network as it is.

    attached(home, lab)   context manager for the stack's start: brings the uplink up when the lab
                          has one (``provisioner create --uplink``), takes it down again if the
                          rest of the start fails; on success it stays up (a detached daemon)
    start(home, lab)      the same without the context manager; idempotent
    preflight(lab)        its programs are installed (before the stack makes anything)
    stop(home)            the uplink process stopped, its NAT table and forwarding removed;
                          also finds the process by the lab's names when the record is lost
    status(home, lab)     what the kernel and /proc say about it (JSON-ready)

How: ``pasta`` (Debian package ``passt``) runs on the host and attaches to the lab namespace,
where it makes one tap interface (``home.uplink_link``) holding the host's address and a
default route. What the namespace sends through that tap, pasta carries over ordinary sockets
of its own on the host, so the host needs no firewall rule, no ``ip_forward`` and no bridge.
Inside the namespace (and only there) forwarding is switched on and an nftables table
masquerades the lab subnet behind the tap; a forward chain lets only the lab's outgoing
connections and their replies through. DNS: pasta relays queries sent to ``DNS_FORWARD`` to
the host's resolver; dnsmasq, answering on the lab bridge, forwards to that address.

pasta is told to map no port either way (nothing of the lab is reachable from the host's
interfaces, and the lab cannot reach services bound to the host's loopback) and not to map the
gateway address to the host. It runs as root (``--runas 0``): the Debian 12 build cannot join
an existing namespace after dropping to ``nobody``; it still confines itself (seccomp, its own
mount namespace, capabilities dropped but the one it needs).

slirp4netns was the alternative and was rejected: its 1.2.0 sandbox (``--enable-sandbox``)
lazily unmounts the old root inside a mount namespace that still shares ``/run/netns`` with
the host, which removed every named network namespace's mount on the host (observed here).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pvmlab import spawn
from pvmlab.errors import DependencyError, ProcessError
from pvmlab.home import LabHome, open_truncated, read_json, write_json
from pvmlab.network import lab as netlab
from pvmlab.records.models import LabSpec, utc_now

log = logging.getLogger(__name__)

PROGRAM = "pasta"
PACKAGE = "passt"
# Queries sent to this address inside the namespace are relayed by pasta to the host's resolver
# (link-local: never routed anywhere else, and outside any lab subnet a user can choose).
DNS_FORWARD = "169.254.53.53"
NFT_TABLE = "pvmlab_uplink"
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
RESOLV_CONF = Path("/etc/resolv.conf")


# --- what is run ---------------------------------------------------------------------------------


def pasta_argv(home: LabHome) -> list[str]:
    """pasta, attached to the lab namespace, in the foreground (its PID is the one we start)."""
    return [
        PROGRAM,
        "--foreground",
        "--quiet",
        "--ipv4-only",
        # nothing forwarded in either direction: the lab stays invisible from the host's
        # interfaces, and the host's loopback services stay out of the lab's reach
        "--tcp-ports", "none",
        "--udp-ports", "none",
        "--tcp-ns", "none",
        "--udp-ns", "none",
        "--no-map-gw",
        # the tap is configured as a plain interface; nobody on it asks pasta for DHCP or RAs
        "--no-dhcp",
        "--no-ndp",
        "--no-dhcpv6",
        "--no-ra",
        "--config-net",
        "--ns-ifname", home.uplink_link,
        "--dns-forward", DNS_FORWARD,
        "--runas", "0",
        "--netns", home.netns,
    ]  # fmt: skip


def nft_ruleset(home: LabHome, lab: LabSpec) -> str:
    """The nftables table loaded inside the lab namespace: NAT and a forward filter."""
    link, bridge, subnet = home.uplink_link, home.bridge, lab.network
    return (
        f"table ip {NFT_TABLE} {{\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    oifname "{link}" ip saddr {subnet} masquerade\n'
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy drop;\n"
        f'    iifname "{bridge}" oifname "{link}" ip saddr {subnet} accept\n'
        f'    iifname "{link}" oifname "{bridge}" ct state established,related accept\n'
        "  }\n"
        # pasta sends some segments conntrack calls invalid (a window update without the ACK
        # flag): they are not translated back and would reach the namespace's own TCP, whose
        # reset kills the target's connection. Nothing else arrives on the uplink for us.
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        f'    iifname "{link}" ct state invalid drop\n'
        "  }\n"
        "}\n"
    )


def require_programs() -> None:
    """The uplink's programs are installed (DependencyError naming the package otherwise)."""
    if shutil.which(PROGRAM) is None:
        raise DependencyError(
            f"the lab has an uplink but {PROGRAM} is not installed",
            f"install it: `apt-get install {PACKAGE}` (or create the lab with --no-uplink)",
        )
    if shutil.which("nft") is None:
        raise DependencyError(
            "the lab has an uplink but nft is not installed",
            "install it: `apt-get install nftables` (or create the lab with --no-uplink)",
        )


def preflight(lab: LabSpec) -> None:
    """Refuse a start before anything is made when the lab wants an uplink it cannot have."""
    if lab.uplink:
        require_programs()


# --- which process is ours -----------------------------------------------------------------------


def is_our_pasta(pid: int, home: LabHome) -> bool:
    """Whether ``pid`` is a pasta attached to this home's namespace."""
    cmd = spawn.pid_cmdline(pid)
    if not cmd or Path(cmd[0]).name != PROGRAM or "--netns" not in cmd:
        return False
    i = cmd.index("--netns")
    return i + 1 < len(cmd) and cmd[i + 1] == home.netns


def _recorded_pid(home: LabHome) -> int | None:
    value = read_json(home.uplink_state).get("pid")
    return value if isinstance(value, int) and value > 0 else None


def uplink_pids(home: LabHome) -> list[int]:
    """Running pasta processes of this lab: the recorded one, and any other found in /proc."""
    found: list[int] = []
    recorded = _recorded_pid(home)
    if recorded is not None and spawn.pid_alive(recorded) and is_our_pasta(recorded, home):
        found.append(recorded)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in found:
            pid = int(entry.name)
            if is_our_pasta(pid, home) and spawn.pid_alive(pid):
                found.append(pid)
    return found


# --- the kernel's view ---------------------------------------------------------------------------


def _link_address(home: LabHome) -> str | None:
    for link in netlab.ip_json(home.netns, "-4", "addr", "show", "dev", home.uplink_link):
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet":
                return f"{addr['local']}/{addr['prefixlen']}"
    return None


def _gateway(home: LabHome) -> str | None:
    for route in netlab.ip_json(home.netns, "-4", "route", "show", "default"):
        if route.get("dev") == home.uplink_link and route.get("gateway"):
            return str(route["gateway"])
    return None


def _nat_loaded(home: LabHome) -> bool:
    proc = spawn.run(["nft", "list", "table", "ip", NFT_TABLE], netns=home.netns, check=False)
    return proc.returncode == 0


def _forwarding(home: LabHome) -> bool:
    proc = spawn.run(["sysctl", "-n", "net.ipv4.ip_forward"], netns=home.netns, check=False)
    return proc.stdout.strip() == "1"


def host_resolvers(path: Path = RESOLV_CONF) -> list[str]:
    """The nameservers of the host's resolv.conf: where pasta relays the lab's DNS queries."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            out.append(parts[1])
    return out


# --- start and stop ------------------------------------------------------------------------------


def _log_tail(home: LabHome) -> str:
    try:
        lines = home.uplink_log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    useful = [ln for ln in lines if not ln.startswith("Failed to send")]  # syslog noise
    return useful[-1].strip() if useful else ""


def _wait_ready(home: LabHome, pid: int, timeout: float) -> str:
    """Wait until pasta has configured its interface (address + default route); its address."""
    deadline = time.monotonic() + timeout
    while True:
        if not spawn.pid_alive(pid):
            raise ProcessError(
                f"the uplink ({PROGRAM}) exited while starting: {_log_tail(home) or 'no output'}",
                f"see {home.uplink_log}",
            )
        address = _link_address(home)
        if address is not None and _gateway(home) is not None:
            return address
        if time.monotonic() > deadline:
            raise ProcessError(
                f"the uplink ({PROGRAM}) did not configure {home.uplink_link} "
                f"within {timeout:.0f} s",
                f"see {home.uplink_log}",
            )
        time.sleep(0.05)


def _check_no_overlap(lab: LabSpec, address: str) -> None:
    outside = ipaddress.IPv4Interface(address).network
    if outside.overlaps(lab.network):
        raise ProcessError(
            f"the lab subnet {lab.network} overlaps the host's uplink network {outside}",
            "create the lab with another --ip (or with --no-uplink)",
        )


def start(home: LabHome, lab: LabSpec) -> dict[str, Any]:
    """Bring the uplink up (nothing when the lab has none, or it is up already); its status."""
    if not lab.uplink:
        return status(home, lab)
    require_programs()
    running = uplink_pids(home)
    if not running:
        with open_truncated(home.uplink_log):  # this start's output only
            pass
        proc = spawn.start_detached(pasta_argv(home), log_file=home.uplink_log)
        write_json(home.uplink_state, {
            "pid": proc.pid, "program": PROGRAM, "argv": pasta_argv(home), "started": utc_now(),
        })  # fmt: skip
        try:
            address = _wait_ready(home, proc.pid, READY_TIMEOUT)
            _check_no_overlap(lab, address)
        except BaseException:
            stop(home)
            raise
        log.info("uplink %s (pid %d) up with %s", PROGRAM, proc.pid, address)
    try:
        spawn.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], netns=home.netns)
        spawn.run(["nft", "-f", "-"], netns=home.netns, input=_replace_table(home, lab))
    except BaseException:
        stop(home)
        raise
    return status(home, lab)


def _replace_table(home: LabHome, lab: LabSpec) -> str:
    """One nft transaction: (re)create the table empty, then fill it (idempotent)."""
    return f"table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n" + nft_ruleset(home, lab)


def stop(home: LabHome) -> list[int]:
    """Stop this lab's uplink and remove its rules; the PIDs stopped. Safe when nothing is up."""
    pids = uplink_pids(home)
    if pids:
        spawn.terminate(pids, STOP_TIMEOUT)
    made = bool(pids) or home.uplink_state.exists()
    if made and Path(f"/run/netns/{home.netns}").exists():
        if shutil.which("nft") is not None:
            spawn.run(["nft", "delete", "table", "ip", NFT_TABLE], netns=home.netns, check=False)
        spawn.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"], netns=home.netns,
                  check=False)
        spawn.run(["ip", "-n", home.netns, "link", "del", home.uplink_link], check=False)
    with contextlib.suppress(FileNotFoundError):
        home.uplink_state.unlink()
    return pids


@contextlib.contextmanager
def attached(
    home: LabHome, lab: LabSpec, undo: Callable[[LabHome], object] | None = None
) -> Iterator[dict[str, Any]]:
    """``start`` for the ``with`` block. When the start or the block fails, the uplink is
    stopped again and ``undo(home)`` runs (the caller's own undo, e.g. the network it made)."""
    try:
        yield start(home, lab)
    except BaseException:
        if lab.uplink:
            stop(home)
        if undo is not None:
            undo(home)
        raise


# --- status --------------------------------------------------------------------------------------


def status(home: LabHome, lab: LabSpec | None) -> dict[str, Any]:
    """The uplink as the kernel and /proc see it now (JSON-ready)."""
    enabled = bool(lab is not None and lab.uplink)
    pids = uplink_pids(home) if enabled else []
    ns_there = Path(f"/run/netns/{home.netns}").exists()
    up = bool(pids) and ns_there
    return {
        "enabled": enabled,
        "running": up,
        "program": PROGRAM if enabled else None,
        "pid": pids[0] if pids else None,
        "interface": home.uplink_link if enabled else None,
        "address": _link_address(home) if up else None,
        "gateway": _gateway(home) if up else None,
        "nat": _nat_loaded(home) if up else False,
        "forwarding": _forwarding(home) if up else False,
        "dns": {
            "served_on": f"{lab.ip}:53" if enabled and lab is not None else None,
            "forwarded_to": DNS_FORWARD if enabled else None,
            "host_resolvers": host_resolvers() if enabled else [],
        },
    }
