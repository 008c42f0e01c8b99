"""SSH access to the lab's VMs: the lab's key pair and known hosts, `vm ssh`, `vm cp`, readiness.

    ensure_key(home)                    the lab's ed25519 key pair (``home.ssh_key``), made once
    forget_host(home, ip)               drop a machine's recorded host key (VM recreated or
                                        reinstalled: its new key is accepted on first contact)
    target(home, name)                  the VM to reach, refused in one line when it is not running
    ssh_argv / scp_argv                 OpenSSH's client with the lab's options
    run_client(home, vm, argv)          ssh or scp inside the lab namespace, on this terminal;
                                        the remote command's exit code, or a one-line error when
                                        the connection itself failed
    ssh_ready(home, vm, timeout)        True once the VM accepts the lab key, else why not

The client runs inside the lab namespace (the VMs' addresses exist only there), with the lab's
own key and a known_hosts file of the lab (``StrictHostKeyChecking=accept-new``: a machine's key
is recorded on first contact and checked ever after; host-key checking is never switched off).
The user's own ``~/.ssh/config`` does not apply (``-F /dev/null``), so the lab behaves the same
for everyone. Password prompts are off (``BatchMode``): the lab key is the way in.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from pvmlab import spawn
from pvmlab.errors import DependencyError, ProcessError, StateError, ValidationError
from pvmlab.home import LabHome, file_lock
from pvmlab.records import store, validate
from pvmlab.records.models import VMSpec

# Cloud images log in as their distro's user (debian, ubuntu, fedora) with the key cloud-init put
# there; the lab's unattended installs put the lab key into root's authorized_keys.
DEFAULT_USER = "root"
SSH_PORT = 22
CONNECT_TIMEOUT = 10
SSH_FAILED = 255  # ssh's own exit code when it, not the remote command, failed
HOSTKEY_CHANGED = "is not the one recorded for it"  # in that failure's message: no retry helps

_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}\$?")
_REMOTE = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]{0,62}):(.*)", re.S)


# --- the key pair and the known hosts -----------------------------------------------------------


def _require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise DependencyError(
            f"{program} is not installed", "install it: `apt-get install openssh-client`"
        )
    return path


def require_client() -> None:
    """OpenSSH's client is installed (DependencyError with the package to install if not)."""
    _require("ssh")


def public_key_path(home: LabHome) -> Path:
    return home.ssh_public_key


def ensure_key(home: LabHome) -> Path:
    """The lab's private key, generated (ed25519, no passphrase, mode 0600) when missing."""
    key = home.ssh_key
    if key.is_file() and public_key_path(home).is_file():
        return key
    _require("ssh-keygen")
    home.ssh_dir.mkdir(parents=True, exist_ok=True)
    home.ssh_dir.chmod(0o700)
    with file_lock(home.ssh_dir / ".lock"):
        if not (key.is_file() and public_key_path(home).is_file()):
            for stale in (key, public_key_path(home)):
                stale.unlink(missing_ok=True)
            spawn.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                       f"pvmlab-{home.lab_id}", "-f", str(key)])  # fmt: skip
    key.chmod(0o600)
    return key


def public_key(home: LabHome) -> str:
    """The lab's public key, one ``authorized_keys`` line (made first when missing)."""
    ensure_key(home)
    return public_key_path(home).read_text().strip()


def forget_host(home: LabHome, ip: str) -> bool:
    """Drop the host key recorded for ``ip`` (the machine was recreated or reinstalled).

    Returns whether one was recorded. Called by ``vm create`` and ``vm clean``; an install that
    replaces a machine's system calls it too.
    """
    known = home.ssh_known_hosts
    if not known.is_file() or shutil.which("ssh-keygen") is None:
        return False
    with file_lock(home.ssh_dir / ".lock"):
        proc = spawn.run(["ssh-keygen", "-R", ip, "-f", str(known)], check=False)
        known.with_name(known.name + ".old").unlink(missing_ok=True)
    return proc.returncode == 0 and "found" in proc.stdout


# --- what is run ---------------------------------------------------------------------------------


def client_options(home: LabHome) -> list[str]:
    """The options ssh and scp share: the lab's key and known hosts, nothing of the user's."""
    return [
        "-F", "/dev/null",
        "-i", str(home.ssh_key),
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
        "-o", f'UserKnownHostsFile="{home.ssh_known_hosts}"',
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
        "-o", "LogLevel=ERROR",
    ]  # fmt: skip


def check_user(user: str) -> str:
    if not _USER.fullmatch(user):
        raise ValidationError(
            f"invalid user name {user!r}", "use a login name such as root, debian or ubuntu"
        )
    return user


def ssh_argv(home: LabHome, vm: VMSpec, user: str, command: list[str]) -> list[str]:
    """``ssh`` to the VM's reserved address; a shell when ``command`` is empty."""
    return ["ssh", *client_options(home), "-l", check_user(user), vm.address, *command]


@dataclass(frozen=True)
class CopyPlan:
    vm: VMSpec
    argv: list[str]


def _split_remote(home: LabHome, arg: str) -> tuple[VMSpec, str] | None:
    match = _REMOTE.fullmatch(arg)  # "./a:b" and "/a:b" never match: local paths
    if match is None:
        return None
    name, path = match.groups()
    if not home.vm_file(name).exists():
        raise StateError(
            f"no VM named {name!r} (in {arg!r})",
            f"see `pvmlab vm list`; for a local file whose name has a ':', write ./{arg}",
        )
    return store.load_vm(home, validate.vm_name(name)), path or "."


def scp_argv(home: LabHome, src: str, dst: str, user: str, recursive: bool) -> CopyPlan:
    """``scp`` between this machine and one VM; ``NAME:path`` marks the VM's side."""
    remote_src, remote_dst = _split_remote(home, src), _split_remote(home, dst)
    if (remote_src is None) == (remote_dst is None):
        raise ValidationError(
            "give exactly one side as NAME:path (a VM) and the other as a local path",
            "e.g. `pvmlab vm cp ./file t1:/tmp/` or `pvmlab vm cp t1:/etc/hostname .`",
        )
    vm, path = remote_src or remote_dst  # type: ignore[misc]
    host = vm.address if vm.ip is not None else f"[{vm.address}]"  # scp: IPv6 in brackets
    remote = f"{check_user(user)}@{host}:{path}"
    pair = [remote, dst] if remote_src is not None else [src, remote]
    return CopyPlan(vm=vm, argv=["scp", *client_options(home), *(["-r"] if recursive else []),
                                 *pair])  # fmt: skip


# --- which VM, and is it there -------------------------------------------------------------------


def target(home: LabHome, name: str) -> VMSpec:
    """The VM ``name``, known and running (StateError in one line otherwise)."""
    from pvmlab.vm import state

    home.require()
    vm = store.load_vm(home, validate.vm_name(name))
    if state.running_pid(home, vm.name) is None:
        raise StateError(
            f"VM {vm.name} is not running",
            f"start it with `pvmlab vm start {vm.name}` and wait for it to boot",
        )
    _require("ssh")
    ensure_key(home)
    return vm


# --- running the client --------------------------------------------------------------------------

# ssh's own complaints (at LogLevel=ERROR), told apart from what the remote command prints
_DIAGNOSTICS = (
    ("refused", re.compile(r"^ssh: connect to host \S+ port \d+: Connection refused")),
    ("unreachable", re.compile(r"^ssh: connect to host \S+ port \d+: (No route to host|"
                               r"Connection timed out|Network is unreachable)")),
    ("denied", re.compile(r"^(\S+@\S+: )?Permission denied \(")),
    ("closed", re.compile(r"^(scp: Connection closed|lost connection)$")),  # scp's echo of them
    # the whole "REMOTE HOST IDENTIFICATION HAS CHANGED" banner, printed before any login
    ("hostkey", re.compile(
        r"^(Host key verification failed\.|@+$|@ +WARNING: REMOTE HOST|IT IS POSSIBLE THAT "
        r"SOMEONE|Someone could be eavesdropping|It is also possible that a host key|The "
        r"fingerprint for the \S+ key sent|SHA256:\S+\.$|Please contact your system admin|Add "
        r"correct host key in|Offending \S+ key in|  remove with:$|  ssh-keygen -f |Host key for "
        r"\S+ has changed|\S+ host key for \S+ has changed|Password authentication is disabled "
        r"to avoid|Keyboard-interactive authentication is disabled to avoid)"
    )),
)


def classify(stderr_line: str) -> str | None:
    """Which connection failure an ssh error line reports (None: not one of ssh's own)."""
    for kind, pattern in _DIAGNOSTICS:
        if pattern.search(stderr_line):
            return kind
    return None


def failure(home: LabHome, vm: VMSpec, user: str, kinds: list[str], last: str) -> StateError:
    """The one-line error for a connection that failed."""
    where = f"{vm.address}:{SSH_PORT}" if vm.ip else f"[{vm.address}]:{SSH_PORT}"
    if "hostkey" in kinds:
        return StateError(
            f"the SSH host key of VM {vm.name} ({vm.address}) {HOSTKEY_CHANGED}",
            f"if {vm.name} was reinstalled, forget the old key: `ssh-keygen -R {vm.address} -f "
            f"{home.ssh_known_hosts}`",
        )
    if "refused" in kinds:
        return StateError(
            f"no SSH server answers on {where} (connection refused)",
            f"VM {vm.name} runs but has no SSH server listening (yet): wait for its boot to "
            f"finish, see `pvmlab vm logs {vm.name}`",
        )
    if "unreachable" in kinds:
        return StateError(
            f"nothing answers on {where} (no route or timed out)",
            f"VM {vm.name} has no network (yet): see `pvmlab vm logs {vm.name}`",
        )
    if "denied" in kinds:
        return StateError(
            f"VM {vm.name} refused the lab's SSH key for user {user}",
            f"the guest needs {public_key_path(home)} in ~{user}/.ssh/authorized_keys; "
            "another login user is chosen with --user",
        )
    return StateError(
        f"SSH to VM {vm.name} ({vm.address}) failed: {last or 'no error output'}",
        f"see `pvmlab vm logs {vm.name}`",
    )


def _relay(stream: IO[bytes], held: list[str]) -> None:
    """Copy the client's stderr to ours, holding back ssh's own connection diagnostics."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        if classify(line.rstrip("\r\n")) is not None:  # ssh ends its own lines with CRLF
            held.append(line.rstrip("\r\n"))
            continue
        sys.stderr.write(line)
        sys.stderr.flush()


def run_client(home: LabHome, vm: VMSpec, user: str, argv: list[str]) -> int:
    """Run ssh or scp in the lab namespace on this terminal; the remote side's exit code.

    A failure of the connection itself (ssh's exit code 255 with one of its own diagnostics)
    raises the one-line error instead.
    """
    held: list[str] = []
    with spawn.spawn(argv, netns=home.netns, stdin=None, stdout=None,
                     stderr=subprocess.PIPE) as proc:  # fmt: skip
        stream = proc.stderr
        if stream is None:  # stderr=PIPE always gives one
            raise ProcessError("no stderr pipe from the SSH client")
        relay = threading.Thread(target=_relay, args=(stream, held), daemon=True)
        relay.start()
        code = proc.wait()
        relay.join(5)
    kinds = [kind for line in held if (kind := classify(line)) is not None]
    if kinds and (code == SSH_FAILED or argv[0] == "scp"):
        raise failure(home, vm, user, kinds, held[-1])
    for line in held:  # not a connection failure after all: show them as they were
        sys.stderr.write(line + "\n")
    if code == SSH_FAILED and argv[0] == "ssh":
        raise failure(home, vm, user, [], "")
    return code


# --- readiness ------------------------------------------------------------------------------------


def probe(home: LabHome, vm: VMSpec, user: str = DEFAULT_USER) -> Literal[True] | str:
    """One login attempt that runs ``true``: True, or why it did not work (one line)."""
    argv = ssh_argv(home, vm, user, ["true"])
    try:
        proc = spawn.run(argv, netns=home.netns, check=False, timeout=CONNECT_TIMEOUT + 20)
    except ProcessError as exc:
        return exc.problem
    if proc.returncode == 0:
        return True
    lines = [ln.rstrip("\r") for ln in proc.stderr.strip().splitlines()]
    kinds = [kind for line in lines if (kind := classify(line)) is not None]
    return str(failure(home, vm, user, kinds, lines[-1] if lines else ""))


def ssh_ready(
    home: LabHome, vm: VMSpec | str, timeout: float, user: str = DEFAULT_USER
) -> Literal[True] | str:
    """Wait until the VM accepts the lab key (True), or return why it did not within ``timeout``.

    For ``vm start --wait-ssh``: tries once a second; stops early when the VM is no longer
    running.
    """
    from pvmlab.vm import state

    spec = vm if isinstance(vm, VMSpec) else store.load_vm(home, validate.vm_name(vm))
    _require("ssh")
    ensure_key(home)
    deadline = time.monotonic() + timeout
    reason = "not tried"
    while True:
        if state.running_pid(home, spec.name) is None:
            return f"VM {spec.name} is not running"
        result = probe(home, spec, user)
        if result is True:
            return True
        reason = result
        if time.monotonic() >= deadline:
            return f"{reason} (waited {timeout:.0f} s)"
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
