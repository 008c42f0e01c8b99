"""Unattended installs: each machine's install configuration, its kernel pointer, its status.

A VM created with an install kind (``vm create --preseed FILE | --autoinstall FILE |
--kickstart FILE | --user-data FILE``, or ``--unattended`` for the shipped default of its distro)
is served, over the lab's HTTP server (``pvmlab.stack.installroutes``):

    kind         served at                 kernel command line pointer
    preseed      /preseed/<mac>            auto=true priority=critical url=… hostname= domain=
    kickstart    /ks/<mac>                 inst.ks=…
    user-data    /nocloud/<mac>/{user-data,meta-data,vendor-data,network-config}
                                           ds=nocloud-net;s=…/nocloud/<mac>/
    autoinstall  the same NoCloud documents; the user-data holds an ``autoinstall:`` key
                                           autoinstall ds=nocloud-net;s=…

(<mac> with hyphens). iPXE splits a script line on whitespace and treats ``;`` as a command
separator only as a word of its own, so ``ds=nocloud-net;s=URL`` inside one word reaches the
kernel unchanged: no escaping is needed (the command-line check refuses a lone ``;``).

Templates are Jinja2, rendered on every request with the machine's facts (``facts``) in a
sandbox (``render.sandbox``: no Python internals, no files, ``StrictUndefined``). The user's
template file is copied into the lab home at ``vm create`` (``LabHome.vm_install_template``), so
editing the original later does not silently change a machine; ``vm reinstall NAME --preseed
FILE`` replaces the copy. ``check`` renders every document once, so a syntax error or an unknown
name is a one-line error at create, not a failure at boot.

Install status: the installer posts phases to ``/status/<mac>``; ``installed`` marks the machine
installed (``LabHome.vm_install_status``), after which its iPXE script boots the local disk
instead of the installer, until ``vm reinstall`` clears the status. Only the machine itself may
post or fetch: the peer must have the VM's reserved address and, where the kernel's neighbour
table knows it, its MAC (``peer_problem``).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2

from pvmlab.arch import architecture
from pvmlab.errors import StateError, ValidationError
from pvmlab.home import LabHome, read_json, write_atomic, write_json
from pvmlab.records import store
from pvmlab.records.models import (
    INSTALL_KINDS,
    DistroAssets,
    InstallKind,
    LabSpec,
    VMSpec,
    first_problem,
    http_url,
)
from pvmlab.stack import render

DOMAIN = "pvmlab.internal"  # the lab's DNS domain in hostnames the installers set
USER = "pvmlab"  # the account the shipped templates create (SSH key login, sudo)
DISK = "/dev/vda"  # the VM's disk (virtio-blk, pvmlab.qemu.argv)
INSTALL_DIR = render.TEMPLATES / "install"
SHIPPED: dict[InstallKind, str] = {
    "preseed": "debian-12.preseed.j2",
    "autoinstall": "ubuntu-24.04.autoinstall.j2",
    "kickstart": "fedora-42.ks.j2",
    "user-data": "cloud-image.user-data.j2",
}
NOCLOUD_DOCS = ("user-data", "meta-data", "vendor-data", "network-config")
MAX_TEMPLATE = 256 * 1024  # bytes of a user's template
MAX_OUTPUT = 1024 * 1024  # characters of a rendered document
MAX_MESSAGE = 200  # characters of a status message kept
MAX_HISTORY = 20  # status reports kept per VM
PHASE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
# An OpenSSH public key line: type, base64 blob, optional comment of plain characters (none
# that a shell's double quotes or a YAML plain scalar would interpret: no quotes, $, `, \, #).
_SSH_KEY = re.compile(
    r"(ssh-[a-z0-9-]+|ecdsa-[a-z0-9-]+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+( [\w.@+:,=/ -]+)?"
)

_SANDBOX = render.sandbox()


class InstallTemplateError(ValidationError):
    """An install template that cannot be rendered (syntax, unknown name, runtime error)."""


def url_mac(mac: str) -> str:
    """A MAC as it appears in install URLs: lower case, hyphens (as iPXE's ``:hexhyp``)."""
    return mac.lower().replace(":", "-")


def documents(kind: InstallKind) -> tuple[str, ...]:
    """The documents a machine of this kind fetches (names as ``render_document`` takes)."""
    if kind == "preseed":
        return ("preseed",)
    if kind == "kickstart":
        return ("ks",)
    return NOCLOUD_DOCS


def config_url(base_url: str, vm: VMSpec) -> str:
    """Where the machine's installer finds its configuration (the NoCloud seed is a folder)."""
    base = base_url.rstrip("/")
    mac = url_mac(vm.mac)
    if vm.install == "preseed":
        return f"{base}/preseed/{mac}"
    if vm.install == "kickstart":
        return f"{base}/ks/{mac}"
    return f"{base}/nocloud/{mac}/"


def status_url(base_url: str, vm: VMSpec) -> str:
    return f"{base_url.rstrip('/')}/status/{url_mac(vm.mac)}"


def kernel_args(vm: VMSpec, base_url: str) -> list[str]:
    """The kernel command line words that point the installer at its configuration."""
    if vm.install is None:
        return []
    url = config_url(base_url, vm)
    if vm.install == "preseed":
        return ["auto=true", "priority=critical", f"url={url}",
                f"hostname={vm.name}", f"domain={DOMAIN}"]  # fmt: skip
    if vm.install == "kickstart":
        return [f"inst.ks={url}"]
    if vm.install == "autoinstall":
        return ["autoinstall", f"ds=nocloud-net;s={url}"]
    return [f"ds=nocloud-net;s={url}"]


def check_url(value: str, what: str) -> str:
    """A mirror or proxy URL as given on the command line (ValidationError when unusable)."""
    try:
        return http_url(value)
    except ValueError as exc:
        raise ValidationError(
            f"invalid {what}: {exc}", "e.g. http://deb.debian.org/debian or http://10.0.0.1:3128"
        ) from None


def default_kind(distro: DistroAssets) -> InstallKind:
    """The shipped install kind for a distro: cloud images take cloud-init user-data; the
    installers of the catalog's distros take their own format."""
    if distro.source in ("cloud-image", "kernel"):
        return "user-data"
    family = distro.name.split("-", 1)[0]
    kinds: dict[str, InstallKind] = {
        "debian": "preseed", "ubuntu": "autoinstall", "fedora": "kickstart",
    }  # fmt: skip
    if family not in kinds:
        raise ValidationError(
            f"no shipped install configuration for distro {distro.name!r} ({distro.source})",
            "give your own with --preseed, --autoinstall, --kickstart or --user-data FILE",
        )
    return kinds[family]


# --- facts ------------------------------------------------------------------------------------


def ssh_public_key(home: LabHome) -> str:
    """The lab's SSH public key (one line), or "" when the lab has none yet.

    The key is rendered into shell commands and YAML, so a file that is not one plain OpenSSH
    key line is refused rather than passed on.
    """
    try:
        text = home.ssh_public_key.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(
            f"cannot read the lab SSH public key {home.ssh_public_key}: {exc}",
            "fix its permissions or remove it",
        ) from None
    if not _SSH_KEY.fullmatch(text):
        raise StateError(
            f"{home.ssh_public_key} is not one OpenSSH public key line",
            "replace it with a key made by ssh-keygen (or remove it)",
        )
    return text


def _mirror(url: str | None) -> dict[str, str]:
    if url is None:
        return {"url": "", "scheme": "", "host": "", "directory": ""}
    parts = urlsplit(url)
    return {
        "url": url.rstrip("/"),
        "scheme": parts.scheme,
        "host": parts.netloc,
        "directory": parts.path.rstrip("/") or "/",
    }


def facts(home: LabHome, lab: LabSpec, vm: VMSpec, base_url: str) -> dict[str, Any]:
    """Everything a template may use about the machine (plain strings, lists and dicts)."""
    key = ssh_public_key(home)
    if not lab.has_ipv4:
        raise ValidationError(
            "unattended installs need the lab's IPv4 network (the install configurations give "
            "the machine its IPv4 address, gateway and DNS), and this lab is IPv6-only",
            "use a dual-stack lab: `provisioner create --ipv6 PREFIX/64` without --no-ipv4",
        )
    net = lab.network
    return {
        "name": vm.name,
        "hostname": vm.name,
        "domain": DOMAIN,
        "fqdn": f"{vm.name}.{DOMAIN}",
        "mac": vm.mac,
        "ip": vm.ip,
        "prefixlen": net.prefixlen,
        "netmask": str(net.netmask),
        "cidr": f"{vm.ip}/{net.prefixlen}",
        "network": str(net),
        "gateway": str(lab.ip),
        "dns": [str(lab.ip)],
        "arch": vm.arch,
        "firmware": vm.firmware,
        "distro": vm.distro or "",
        "console": architecture(vm.arch).serial_console,
        "disk": DISK,
        "user": USER,
        "install": vm.install or "",
        "base_url": base_url.rstrip("/"),
        "config_url": config_url(base_url, vm),
        "status_url": status_url(base_url, vm),
        "ssh_public_key": key,
        "ssh_authorized_keys": [key] if key else [],
        "mirror": _mirror(vm.mirror),
        "proxy": vm.proxy or "",
    }


# --- templates ----------------------------------------------------------------------------------


def shipped_text(kind: InstallKind) -> str:
    return (INSTALL_DIR / SHIPPED[kind]).read_text(encoding="utf-8")


def read_user_template(path: Path) -> str:
    """A template file the user wrote (ValidationError when it cannot be used)."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_TEMPLATE + 1)
    except OSError as exc:
        raise ValidationError(
            f"cannot read install template {path}: {exc.strerror or exc}",
            "give the path of a readable file",
        ) from None
    if len(raw) > MAX_TEMPLATE:
        raise ValidationError(
            f"install template {path} is larger than {MAX_TEMPLATE // 1024} KiB",
            "an install configuration is a small text file",
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(
            f"install template {path} is not UTF-8 text", "save it as UTF-8"
        ) from None


def template_text(home: LabHome, vm: VMSpec) -> str:
    """The machine's template: its own copy, else the shipped default of its kind."""
    if vm.install is None:
        raise StateError(f"VM {vm.name} has no install configuration")
    if vm.install_template is None:
        return shipped_text(vm.install)
    path = home.vm_install_template(vm.name)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(
            f"the install template of VM {vm.name} ({path}) is unreadable: {exc}",
            f"give it again with `pvmlab vm reinstall {vm.name} --{vm.install} FILE`",
        ) from None


def _template_line(exc: BaseException) -> int | None:
    """The template line a runtime error happened on (Jinja2 puts template frames in the
    traceback under the name ``<template>``)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<template>"]
    return frames[-1].lineno if frames else None


@functools.lru_cache(maxsize=64)
def _compile(text: str) -> jinja2.Template:
    """A template compiled once per distinct text (compiling costs more than rendering)."""
    return _SANDBOX.from_string(text)


def render_text(text: str, values: dict[str, Any], origin: str) -> str:
    """Render one template in the sandbox; every failure is one InstallTemplateError line."""
    hint = f"facts a template can use: {', '.join(sorted(values))}"
    try:
        template = _compile(text)
    except jinja2.TemplateSyntaxError as exc:
        raise InstallTemplateError(
            f"install template {origin}, line {exc.lineno}: {exc.message}",
            "fix the Jinja2 syntax ({{ name }}, {% if … %}…{% endif %})",
        ) from None
    try:
        out = template.render(values)
    except (
        jinja2.TemplateError, ArithmeticError, TypeError, ValueError, LookupError, RecursionError
    ) as exc:
        line = _template_line(exc)
        where = f", line {line}" if line is not None else ""
        text_exc = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InstallTemplateError(f"install template {origin}{where}: {text_exc}", hint) from None
    if len(out) > MAX_OUTPUT:
        raise InstallTemplateError(
            f"install template {origin} renders to more than {MAX_OUTPUT} characters",
            "an install configuration is a small text file",
        )
    return out


def render_document(
    home: LabHome, lab: LabSpec, vm: VMSpec, doc: str, base_url: str, *, text: str | None = None
) -> str:
    """One document of the machine's install configuration (``documents(kind)`` names them).

    ``text`` replaces the machine's template (to check a new one before it is stored).
    """
    if vm.install is None:
        raise StateError(f"VM {vm.name} has no install configuration")
    values = facts(home, lab, vm, base_url)
    if doc in ("preseed", "ks", "user-data"):
        origin = vm.install_template or f"(shipped {SHIPPED[vm.install]})"
        source = text if text is not None else template_text(home, vm)
        return render_text(source, values, origin)
    if doc in NOCLOUD_DOCS:
        values = {**values, "phone_home": vm.install == "user-data"}
        name = f"nocloud-{doc}.j2"
        return render_text((INSTALL_DIR / name).read_text(encoding="utf-8"), values, name)
    raise StateError(f"unknown install document {doc!r}")


def check(home: LabHome, lab: LabSpec, vm: VMSpec, base_url: str, text: str | None = None) -> None:
    """Render every document the machine will fetch once; raises what a boot would hit."""
    if vm.install is None:
        return
    for doc in documents(vm.install):
        render_document(home, lab, vm, doc, base_url, text=text)


def resolve(
    home: LabHome, vm: VMSpec, kind: str | None, template: Path | None
) -> tuple[VMSpec, str | None]:
    """The VM with its install kind and template origin set, and the user's template text.

    ``kind`` is an install kind, or ``"default"`` for the shipped one of the VM's distro;
    ``template`` the user's file (None: the shipped default of the kind).
    """
    if kind is None:
        return vm, None
    if vm.distro is None:
        raise ValidationError(
            "an unattended install needs a distro to boot", "give --distro (see `pvmlab distro ls`)"
        )
    if kind == "default":
        distro = store.load_distro(home, vm.distro, vm.arch)
        if distro is None:
            raise ValidationError(f"unknown distro {vm.distro!r} for {vm.arch}")
        chosen = default_kind(distro)
    elif kind in INSTALL_KINDS:
        chosen = kind
    else:
        raise ValidationError(
            f"unknown install kind {kind!r}", f"choose one of: {', '.join(INSTALL_KINDS)}"
        )
    if chosen != "user-data" and vm.disk_bytes is None:
        raise ValidationError(
            f"VM {vm.name} has no disk for the installer ({chosen}) to install onto",
            "give it one with --disk-size, e.g. --disk-size 10G",
        )
    text = read_user_template(template) if template is not None else None
    origin = str(template.absolute()) if template is not None else None
    try:
        updated = vm.model_validate(
            {**vm.model_dump(), "install": chosen, "install_template": origin}
        )
    except ValueError as exc:
        raise ValidationError(first_problem(exc)) from None
    return updated, text


def store_template(home: LabHome, vm: VMSpec, text: str | None) -> None:
    """Keep the user's template beside the VM (or remove a stale copy for a shipped one)."""
    path = home.vm_install_template(vm.name)
    if text is None:
        path.unlink(missing_ok=True)
    else:
        write_atomic(path, text, mode=0o600)


# --- status -------------------------------------------------------------------------------------


def read_status(home: LabHome, name: str) -> dict[str, Any]:
    """The VM's install status as last posted ({} when none since create or reinstall)."""
    return read_json(home.vm_install_status(name))


def is_installed(home: LabHome, name: str) -> bool:
    return read_status(home, name).get("installed") is True


def status_summary(home: LabHome, vm: VMSpec) -> str | None:
    """One word for ``vm list``: None (no unattended install), pending, installed, or the
    last phase reported."""
    if vm.install is None:
        return None
    status = read_status(home, vm.name)
    if not status:
        return "pending"
    if status.get("installed") is True:
        return "installed"
    return str(status.get("phase") or "pending")


def clean_message(text: str) -> str:
    """A status message as stored: printable characters on one line, bounded."""
    printable = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(printable.split())[:MAX_MESSAGE]


def record_status(
    home: LabHome, vm: VMSpec, phase: str, message: str, client: str, now: datetime | None = None
) -> dict[str, Any]:
    """Store a phase the machine reported; ``installed`` stays set until ``clear_status``."""
    if not PHASE.fullmatch(phase):
        raise ValidationError(
            f"invalid install phase {phase[:40]!r}", "use 1-32 of a-z, 0-9, '.', '_', '-'"
        )
    when = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    old = read_status(home, vm.name)
    entry = {"time": when, "phase": phase, "message": clean_message(message)}
    history = [e for e in old.get("history", []) if isinstance(e, dict)]
    status = {
        "vm": vm.name,
        **entry,
        "client": client,
        "installed": phase == "installed" or old.get("installed") is True,
        "history": [*history, entry][-MAX_HISTORY:],
    }
    write_json(home.vm_install_status(vm.name), status)
    return status


def clear_status(home: LabHome, name: str) -> None:
    home.vm_install_status(name).unlink(missing_ok=True)


# --- who may ask --------------------------------------------------------------------------------


def neighbour_macs(table: Path = Path("/proc/net/arp")) -> dict[str, str]:
    """IPv4 address → MAC of the complete entries in the kernel's neighbour table (of the
    network namespace the caller runs in: the HTTP server runs in the lab's)."""
    out: dict[str, str] = {}
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and int(fields[2], 16) & 0x2:  # ATF_COM: resolved
            out[fields[0]] = fields[3].lower()
    return out


def peer_problem(vm: VMSpec, peer: str | None, neighbours: dict[str, str]) -> str | None:
    """Why ``peer`` may not act for ``vm`` (None: it may). The peer must use the VM's reserved
    address; when the neighbour table knows that address (any peer on the lab bridge: the
    server had to resolve it to answer), its MAC must be the VM's, so a lab client that took
    another machine's address is still refused."""
    if peer is None:
        return "the peer address is unknown"
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return f"the peer address {peer!r} is not an IP address"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if str(addr) not in (vm.ip, vm.ipv6):
        return f"{addr} is not the address of VM {vm.name}"
    mac = neighbours.get(str(addr))
    if mac is not None and mac != vm.mac:
        return f"{addr} answers from MAC {mac}, not VM {vm.name}'s"
    return None


def find_vm(vms: Iterable[VMSpec], mac: str) -> VMSpec | None:
    return next((vm for vm in vms if vm.mac == mac), None)
