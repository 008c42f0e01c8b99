"""``distro pull``: a catalog entry fetched, verified, cached and imported.

catalog.resolve  -> URLs of the files and of the published checksum list
cache            -> cache/downloads/NAME/ARCH/METHOD/ in the lab home (files under their names)
checksum list    -> reused from the cache only when every wanted file is already there
                    and matches it (then no request at all); otherwise fetched fresh
download.fetch   -> resumable, verified against the list; a mismatch keeps nothing
import           -> "files": kernel + initrd imported as they are;
                    "image": kernel + initrd extracted from the cloud image (Method 1)
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from pvmlab.assets import catalog, distro, download
from pvmlab.assets.download import Checksum, DownloadError
from pvmlab.home import LabHome, read_json, write_atomic, write_json
from pvmlab.records import validate


@dataclass
class PullResult:
    imported: distro.ImportResult
    resolved: catalog.Resolved
    downloaded: list[str] = field(default_factory=list)  # URLs fetched (checksum list included)
    cached: list[str] = field(default_factory=list)  # files reused from the cache
    note: str = ""


def cache_dir(home: LabHome, name: str, arch: str, method: str) -> Path:
    return home.download_cache(name, arch, method)


def _file_name(key: str) -> str:
    base = posixpath.basename(key)
    return validate.file_name(base) if base else "file"


def _cached_sums(cache: Path, url: str) -> dict[str, Checksum] | None:
    meta, text = cache / "checksums.json", cache / "checksums.txt"
    if read_json(meta).get("url") != url:
        return None
    try:
        return download.parse_checksums(text.read_text())
    except (OSError, ValueError):
        return None


def _all_present(sums: dict[str, Checksum], wanted: dict[str, Path], keys: dict[str, str]) -> bool:
    for role, path in wanted.items():
        try:
            want = download.lookup(sums, keys[role], "cache")
        except DownloadError:
            return False
        if not path.is_file() or not download.hash_matches(path, want):
            return False
    return True


def pull(
    home: LabHome,
    name: str,
    arch: str,
    method: str | None = None,
    mirror: str | None = None,
    *,
    cmdline: str | None = None,
    progress: bool = False,
    refresh: bool = False,
) -> PullResult:
    """Fetch (or reuse) and import NAME for ARCH. Everything is validated before any request."""
    entry = catalog.get(home, name)
    r = catalog.resolve(entry, arch, method, mirror)
    line = validate.cmdline(cmdline if cmdline is not None else r.cmdline)
    cache = cache_dir(home, entry.name, r.arch, r.method)
    wanted = {role: cache / _file_name(key) for role, (_url, key) in r.files.items()}
    keys = {role: key for role, (_url, key) in r.files.items()}
    result_downloaded: list[str] = []

    sums = None if refresh else _cached_sums(cache, r.checksums_url)
    fresh: str | None = None
    if sums is None or not _all_present(sums, wanted, keys):
        fresh = download.fetch_text(r.checksums_url)
        result_downloaded.append(r.checksums_url)
        sums = download.parse_checksums(fresh)
        if not sums:
            raise DownloadError(
                f"{r.checksums_url} holds no checksums pvmlab can read",
                "check the mirror (--mirror) or the catalog entry",
            )
    # Every wanted entry must be there before anything is downloaded or written.
    expected = {role: download.lookup(sums, key, r.checksums_url) for role, key in keys.items()}
    if fresh is not None:
        cache.mkdir(parents=True, exist_ok=True)
        write_atomic(cache / "checksums.txt", fresh)
        write_json(cache / "checksums.json", {"url": r.checksums_url})

    cached: list[str] = []
    for role, (url, _key) in r.files.items():
        got = download.fetch(url, wanted[role], expected=expected[role], progress=progress)
        (result_downloaded if got.downloaded else cached).append(url)

    if r.spec.kind == "files":
        res = distro.import_result(
            home,
            entry.name,
            r.arch,
            wanted["kernel"],
            wanted["initrd"],
            line,
            source=r.method,
            version=entry.version,
            origin=r.files["kernel"][0],
        )
        note = ""
    else:
        from pvmlab.assets import extract

        fi = extract.import_from_image(
            home,
            entry.name,
            r.arch,
            wanted["image"],
            line,
            source=r.method,
            origin=r.files["image"][0],
            workdir=cache,
        )
        res, note = fi.imported, fi.note
    return PullResult(res, r, result_downloaded, cached, note)
