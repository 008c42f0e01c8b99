"""What the lab keeps to save time, who still uses it, and dropping the rest (``image prune``).

Two caches grow whenever their inputs change, and nothing else removes them:

    rootfs   ``cache/rootfs/KEY.tar`` (+ ``KEY.json``, its recipe): mmdebstrap's output for one
             recipe (``pvmlab.image.build``). Used while a built image's record names its KEY
             (a rebuild of that image reuses it), and while a build holds the KEY's lock.
    deploy   ``deploy/images/SHA256.raw``: an image converted to raw for ``vm create --image``
             (``pvmlab.deploy.image``; ``sources.json`` maps source files to them). Used while
             a VM record names that SHA-256: its next deploy streams it.

Leftovers of killed runs (a ``.KEY.tar.partial`` no build holds, a ``.convert-*.raw``) are
listed as ``leftover`` and always removable. A damaged VM record that cannot be read as JSON
could name any deploy image, so then every deploy image is kept and the record is named.

Sizes are what the files occupy on disk (raw images are sparse), with their apparent size.
The deploy images are scanned and removed under the lab's state lock, which ``vm create`` and
``vm reinstall`` hold from converting an image until the VM's record names it; a tarball is
removed only under its KEY's lock, taken without waiting (a build holding it keeps it), and
after checking again that no image record names it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pvmlab.home import LabHome, try_file_lock, write_atomic
from pvmlab.image.store import list_images

Kind = Literal["rootfs", "deploy", "leftover"]
_KEY = re.compile(r"[0-9a-f]{16}")
_SHA = re.compile(r"[0-9a-f]{64}")


@dataclass
class Entry:
    kind: Kind
    name: str  # the rootfs KEY, the image's SHA-256, or the leftover's file name
    paths: list[Path]
    bytes: int  # on disk
    apparent_bytes: int
    used_by: list[str] = field(default_factory=list)  # "image NAME", "vm NAME", why kept
    about: str = ""  # what it is (a rootfs's recipe, a deploy image's sources)
    removed: bool = False

    @property
    def unused(self) -> bool:
        return not self.used_by

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["paths"] = [str(p) for p in self.paths]
        out["unused"] = self.unused
        return out


@dataclass
class PruneReport:
    entries: list[Entry]
    dry_run: bool

    @property
    def freed_bytes(self) -> int:
        return sum(e.bytes for e in self.entries if e.removed or (self.dry_run and e.unused))

    @property
    def kept_bytes(self) -> int:
        return sum(e.bytes for e in self.entries if not e.unused)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "freed_bytes": self.freed_bytes,
            "kept_bytes": self.kept_bytes,
            "entries": [e.as_dict() for e in self.entries],
        }


def _sizes(paths: list[Path]) -> tuple[int, int]:
    used = apparent = 0
    for path in paths:
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        used += st.st_blocks * 512
        apparent += st.st_size
    return used, apparent


def _files(folder: Path) -> Iterator[Path]:
    if folder.is_dir() and not folder.is_symlink():
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.is_symlink():
                yield path


# --- rootfs tarballs ------------------------------------------------------------------------------


def _image_keys(home: LabHome) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for info in list_images(home):
        keys.setdefault(info.recipe_key, []).append(f"image {info.name}")
    return keys


def _recipe_about(path: Path) -> str:
    try:
        recipe = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    if not isinstance(recipe, dict):
        return ""
    return f"{recipe.get('distro', '?')} {recipe.get('arch', '?')}, " + (
        f"{len(recipe.get('packages') or [])} packages, {recipe.get('mirror', '?')}"
    )


def _rootfs_entries(home: LabHome) -> list[Entry]:
    used = _image_keys(home)
    out: list[Entry] = []
    for path in _files(home.rootfs_cache):
        key = path.name.removesuffix(".tar")
        if path.name.endswith(".tar") and _KEY.fullmatch(key):
            paths = [path, home.rootfs_recipe(key)]
            size, apparent = _sizes(paths)
            out.append(Entry("rootfs", key, paths, size, apparent, list(used.get(key, [])),
                             _recipe_about(home.rootfs_recipe(key))))  # fmt: skip
        elif path.name.endswith(".tar.partial"):
            size, apparent = _sizes([path])
            out.append(Entry("leftover", path.name, [path], size, apparent,
                             about="a root filesystem build that did not finish"))  # fmt: skip
    return out


def _settle_rootfs(home: LabHome, entry: Entry, *, dry_run: bool) -> None:
    """Remove an unused tarball (or a build's leftover) unless a build holds its KEY's lock or
    an image record came to name it since the scan; with ``dry_run`` only say which."""
    key = entry.name if entry.kind == "rootfs" else entry.name[1:].removesuffix(".tar.partial")
    if not _KEY.fullmatch(key):
        return
    with try_file_lock(home.rootfs_lock(key)) as held:
        if not held:
            entry.used_by.append("a build of this recipe is running")
            return
        users = _image_keys(home).get(key, [])
        if entry.kind == "rootfs" and users:
            entry.used_by.extend(users)
            return
        if not dry_run:
            for path in entry.paths:
                path.unlink(missing_ok=True)
            entry.removed = True


# --- deploy images --------------------------------------------------------------------------------


def _vm_images(home: LabHome) -> tuple[dict[str, list[str]], str | None]:
    """SHA-256 → the VMs whose record names it; and, when a damaged record cannot be read,
    why every deploy image has to stay."""
    from pvmlab.records import store

    healthy, damaged = store.scan_vms(home)
    users: dict[str, list[str]] = {}
    for vm in healthy:
        if vm.image_sha256 is not None:
            users.setdefault(vm.image_sha256, []).append(f"vm {vm.name}")
    unknown = None
    for bad in damaged:
        try:
            raw: Any = json.loads(bad.path.read_text())
        except (OSError, ValueError):
            raw = None
        sha = raw.get("image_sha256") if isinstance(raw, dict) else None
        if isinstance(sha, str) and _SHA.fullmatch(sha):
            users.setdefault(sha, []).append(f"vm {bad.name} (damaged record)")
        elif not isinstance(raw, dict) or sha is not None:  # unreadable, or an odd image field
            unknown = (
                f"vm {bad.name}'s record {bad.path} is damaged: it may name any image "
                f"(fix it or `pvmlab vm clean {bad.name}`)"
            )
    return users, unknown


def _sources_about(home: LabHome) -> dict[str, list[str]]:
    from pvmlab.deploy.image import sources_index

    about: dict[str, list[str]] = {}
    for source, sha in sources_index(home).items():
        about.setdefault(sha, []).append(source.split("|", 1)[0])
    return about


def _deploy_entries(home: LabHome) -> list[Entry]:
    users, unknown = _vm_images(home)
    about = _sources_about(home)
    out: list[Entry] = []
    for path in _files(home.deploy_images):
        sha = path.name.removesuffix(".raw")
        if path.name.endswith(".raw") and _SHA.fullmatch(sha):
            who = list(users.get(sha, [])) or ([unknown] if unknown else [])
            size, apparent = _sizes([path])
            out.append(Entry("deploy", sha, [path], size, apparent, who,
                             ", ".join(sorted(about.get(sha, [])))))  # fmt: skip
        elif path.name.startswith(".convert-") and path.name.endswith(".raw"):
            size, apparent = _sizes([path])  # under the state lock no conversion runs
            out.append(Entry("leftover", path.name, [path], size, apparent,
                             about="an image conversion that did not finish"))  # fmt: skip
    return out


def _forget_sources(home: LabHome, removed: set[str]) -> None:
    from pvmlab.deploy.image import sources_index

    index = sources_index(home)
    kept = {source: sha for source, sha in index.items() if sha not in removed}
    if kept != index:
        write_atomic(home.deploy_sources, json.dumps(kept, indent=2) + "\n")


# --- together -------------------------------------------------------------------------------------


def prune(home: LabHome, *, dry_run: bool) -> PruneReport:
    """List every cache entry with its size and users; remove the unused ones unless
    ``dry_run``. Never removes a deploy image a VM record names, nor a tarball an image
    record names or a running build holds."""
    home.require()
    with home.locked():
        deploy = _deploy_entries(home)
        if not dry_run:
            for entry in deploy:
                if entry.unused:
                    for path in entry.paths:
                        path.unlink(missing_ok=True)
                    entry.removed = True
            _forget_sources(home, {e.name for e in deploy if e.removed and e.kind == "deploy"})
    rootfs = _rootfs_entries(home)
    for entry in rootfs:
        if entry.unused:
            _settle_rootfs(home, entry, dry_run=dry_run)
    return PruneReport([*rootfs, *deploy], dry_run)
