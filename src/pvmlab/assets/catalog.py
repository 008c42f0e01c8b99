"""The distro catalog: the packaged ``catalog.toml`` merged with the lab home's ``catalog.toml``.

Entries are pydantic records (unknown fields are refused, so a typo in the user file is an
error, not a silent default). ``resolve`` turns an entry, an arch and a method into concrete URLs:
the mirror (catalog, ``PVMLAB_MIRROR_<NAME>_<METHOD>``, ``PVMLAB_MIRROR_<NAME>``, or ``--mirror``,
the later winning), the files below it and the checksum list with the key each file has in it.
"""

from __future__ import annotations

import os
import posixpath
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticError

from pvmlab.arch import architecture
from pvmlab.errors import StateError, ValidationError
from pvmlab.home import LabHome
from pvmlab.records import validate
from pvmlab.records.models import Arch, first_problem

USER_FILE = "catalog.toml"


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["image", "files"]
    mirror: str
    image: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    checksums: str
    cmdline: str = ""
    note: str = ""
    arches: list[Arch] | None = None


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    version: str | None = None
    arches: list[Arch]
    arch_names: dict[str, str] = Field(default_factory=dict)
    cmdline: str = "console={console}"
    methods: dict[str, Method]

    def methods_for(self, arch: str) -> list[str]:
        return [m for m, spec in self.methods.items() if spec.arches is None or arch in spec.arches]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _packaged() -> dict[str, Any]:
    text = resources.files("pvmlab.assets").joinpath("catalog.toml").read_text()
    return tomllib.loads(text)


def user_file(home: LabHome) -> Path:
    return home.user_catalog


def load(home: LabHome | None = None) -> dict[str, Entry]:
    data = _packaged()
    if home is not None:
        path = user_file(home)
        if path.is_file():
            try:
                data = _merge(data, tomllib.loads(path.read_text()))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise StateError(f"{path} is unreadable: {exc}", "fix the TOML") from None
    out: dict[str, Entry] = {}
    for name, raw in (data.get("distros") or {}).items():
        try:
            validate.distro_name(name)
            out[name] = Entry.model_validate({"name": name, **raw})
        except (PydanticError, ValidationError) as exc:
            raise StateError(
                f"catalog entry {name!r} is invalid: {first_problem(exc)}",
                f"fix it in {user_file(home) if home else 'the packaged catalog'}",
            ) from None
    return out


def get(home: LabHome | None, name: str) -> Entry:
    name = validate.distro_name(name)
    entries = load(home)
    if name not in entries:
        raise ValidationError(
            f"distro {name!r} is not in the catalog",
            f"known: {', '.join(sorted(entries))} (add others in the lab home's {USER_FILE})",
        )
    return entries[name]


@dataclass(frozen=True)
class Resolved:
    """One entry + arch + method made concrete."""

    entry: Entry
    arch: str
    method: str
    spec: Method
    mirror: str
    checksums_url: str
    files: dict[str, tuple[str, str]]  # role ("image" | "kernel" | "initrd") -> (URL, key)
    cmdline: str

    @property
    def version(self) -> str | None:
        return self.entry.version


def env_names(name: str, method: str) -> list[str]:
    stem = "PVMLAB_MIRROR_" + re.sub(r"[^A-Z0-9]", "_", name.upper())
    return [f"{stem}_{re.sub(r'[^A-Z0-9]', '_', method.upper())}", stem]


def _check_url(url: str, what: str) -> str:
    if not re.fullmatch(r"https?://[^\s]+", url):
        raise ValidationError(f"invalid {what} {url!r}", "give an http:// or https:// URL")
    return url.rstrip("/")


def _fill(template: str, values: dict[str, str], entry: Entry, what: str) -> str:
    """``template`` with its ``{placeholders}`` filled; a catalog typo is a one-line error."""
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        known = ", ".join("{" + name + "}" for name in values)
        raise StateError(
            f"catalog entry {entry.name}: cannot fill in the {what} {template!r} "
            f"({type(exc).__name__}: {exc})",
            f"its placeholders can be {known}; fix the catalog ({USER_FILE} in the lab home)",
        ) from None


def resolve(
    entry: Entry, arch: str, method: str | None = None, mirror: str | None = None
) -> Resolved:
    arch = validate.arch(arch)
    if arch not in entry.arches:
        raise ValidationError(
            f"{entry.name} has no {arch} build in the catalog",
            f"available: {', '.join(entry.arches)}",
        )
    choices = entry.methods_for(arch)
    chosen = method or (choices[0] if choices else None)
    if chosen is None or chosen not in choices:
        raise ValidationError(
            f"{entry.name} ({arch}) has no method {chosen!r}",
            f"choose one of: {', '.join(choices)}",
        )
    spec = entry.methods[chosen]
    fields = {
        "darch": entry.arch_names.get(arch, arch),
        "version": entry.version or "",
        "arch": arch,
    }
    base = spec.mirror
    for var in env_names(entry.name, chosen):
        if os.environ.get(var):
            base = _check_url(os.environ[var], var)
            break
    if mirror:
        base = _check_url(mirror, "mirror URL")
    base = _fill(base, fields, entry, "mirror").rstrip("/")
    sums_rel = _fill(spec.checksums, fields, entry, "checksum list").lstrip("/")
    sums_dir = posixpath.dirname(sums_rel)

    roles = ("image",) if spec.kind == "image" else ("kernel", "initrd")
    files: dict[str, tuple[str, str]] = {}
    for role in roles:
        rel = getattr(spec, role)
        if not rel:
            raise StateError(
                f"catalog entry {entry.name} method {chosen} lacks {role!r}", "fix the catalog"
            )
        path = _fill(rel, fields, entry, role).lstrip("/")
        files[role] = (f"{base}/{path}", posixpath.relpath(path, sums_dir) if sums_dir else path)
    console = {**fields, "console": architecture(arch).serial_console}
    parts = [
        _fill(entry.cmdline, console, entry, "command line"),
        _fill(spec.cmdline, {**console, "mirror": base}, entry, "command line"),
    ]
    return Resolved(
        entry=entry,
        arch=arch,
        method=chosen,
        spec=spec,
        mirror=base,
        checksums_url=f"{base}/{sums_rel}",
        files=files,
        cmdline=" ".join(p for p in parts if p).strip(),
    )
