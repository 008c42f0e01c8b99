"""Downloads done right: resumable, verified, cached, with a progress bar.

``fetch`` writes to ``NAME.part`` beside the final name. When a ``.part`` is already there the
download resumes with an HTTP Range request (a server that ignores Range gets a fresh start). A
connection cut mid-file is resumed the same way, up to ``retries`` times, within one call. The
finished file is hashed and, when a checksum is expected, compared with it: a mismatch deletes the
``.part`` and raises, so nothing unverified ever sits under the final name. A final file that is
present and matches its expected checksum is not fetched again.

Published checksum lists are parsed by ``parse_checksums``: GNU ``sha256sum`` output (Ubuntu's
``SHA256SUMS``, Debian's ``SHA256SUMS``/``SHA512SUMS`` with ``./`` paths), BSD-style lines
(Fedora's ``CHECKSUM``: ``SHA256 (name) = hex``) and the ``[checksums]`` section of a
``.treeinfo`` (``images/pxeboot/vmlinuz = sha256:hex``).

urllib from the standard library is enough here (one file at a time, no new dependency).
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pvmlab import __version__
from pvmlab.assets.files import CHUNK, digests
from pvmlab.errors import PvmlabError

TIMEOUT = 30.0
USER_AGENT = f"pvmlab/{__version__}"


class DownloadError(PvmlabError):
    """A download failed: unreachable server, HTTP error, checksum mismatch, cut transfer."""


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # hashlib name: sha256, sha512
    digest: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.digest}"


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    size: int
    downloaded: bool  # False when the cached file was already present and verified


# --- checksum lists --------------------------------------------------------------------------

_ALGO_BY_LEN = {32: "md5", 40: "sha1", 64: "sha256", 96: "sha384", 128: "sha512"}
_GNU = re.compile(r"^([0-9a-fA-F]{32,128})\s+\*?(.+)$")
_BSD = re.compile(r"^(SHA256|SHA512|SHA384|SHA1|MD5)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)$")


def _norm(name: str) -> str:
    name = name.strip()
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("*")


def parse_checksums(text: str) -> dict[str, Checksum]:
    """Map each file named in a checksum list (relative to the list's directory) to its sum."""
    out: dict[str, Checksum] = {}
    if re.search(r"^\[checksums\]\s*$", text, re.MULTILINE):
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            parser.read_string(text)
        except configparser.Error:
            return out
        for key, value in parser.items("checksums"):
            algo, _, digest = value.partition(":")
            if digest and algo.lower() in hashlib.algorithms_guaranteed:
                out[_norm(key)] = Checksum(algo.lower(), digest.strip().lower())
        return out
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "-----", "Hash:")):
            continue
        m = _BSD.match(line)
        if m:
            out[_norm(m.group(2))] = Checksum(m.group(1).lower(), m.group(3).lower())
            continue
        m = _GNU.match(line)
        if m and len(m.group(1)) in _ALGO_BY_LEN:
            out[_norm(m.group(2))] = Checksum(_ALGO_BY_LEN[len(m.group(1))], m.group(1).lower())
    return out


def lookup(sums: dict[str, Checksum], name: str, source: str) -> Checksum:
    key = _norm(name)
    if key in sums:
        return sums[key]
    raise DownloadError(
        f"checksum list {source} has no entry for {key!r}",
        "the mirror may be out of date or the catalog entry wrong; check the list",
    )


# --- transfer --------------------------------------------------------------------------------


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _offline(url: str, reason: object) -> DownloadError:
    return DownloadError(
        f"cannot download {url}: {reason}",
        f"check that {_host(url)} is reachable (offline?) or use a local mirror "
        "(--mirror URL or PVMLAB_MIRROR_<DISTRO>)",
    )


def _check_scheme(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise DownloadError(f"unsupported URL {url!r}", "use an http:// or https:// URL")


@contextlib.contextmanager
def _open(url: str, start: int) -> Iterator[http.client.HTTPResponse]:
    _check_scheme(url)
    headers = {"User-Agent": USER_AGENT}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    req = urllib.request.Request(url, headers=headers)  # noqa: S310 - scheme checked above
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT)  # noqa: S310
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start > 0:
            raise _RangeNotSatisfiable from None
        raise DownloadError(
            f"cannot download {url}: HTTP {exc.code} {exc.reason}",
            "check the URL or the mirror (--mirror)",
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise _offline(url, reason) from None
    try:
        yield resp
    finally:
        resp.close()


class _RangeNotSatisfiable(Exception):
    pass


ProgressHook = Callable[[int, int | None], None]  # (bytes so far, total or None)


def _transfer(url: str, part: Path, hook: ProgressHook | None) -> None:
    """Bring ``part`` to the full size of ``url``, resuming what is there."""
    start = part.stat().st_size if part.exists() else 0
    try:
        with _open(url, start) as resp:
            status = resp.status
            if start > 0 and status == 206:
                mode = "ab"
            else:
                start, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            done = start
            if hook:
                hook(done, total)
            with part.open(mode) as fh:
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise _Cut(str(exc) or type(exc).__name__) from None
                    if not chunk:
                        break
                    fh.write(chunk)
                    done += len(chunk)
                    if hook:
                        hook(done, total)
                fh.flush()
                os.fsync(fh.fileno())
            if total is not None and done < total:
                raise _Cut(f"connection closed after {done} of {total} bytes")
    except _RangeNotSatisfiable:
        return  # the part already holds the whole file


class _Cut(Exception):
    pass


def hash_matches(path: Path, expected: Checksum) -> bool:
    """Whether ``path`` has the expected checksum (False when it cannot be read)."""
    try:
        return digests(path, expected.algorithm)[1] == expected.digest
    except OSError:
        return False


def fetch(
    url: str,
    dest: Path,
    *,
    expected: Checksum | None = None,
    progress: bool = False,
    retries: int = 3,
    label: str | None = None,
) -> Fetched:
    """Download ``url`` to ``dest`` (resumable through ``dest.part``, verified when expected).

    A ``dest`` already present and matching ``expected`` is returned without any request.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    algorithm = expected.algorithm if expected else "sha256"
    if expected is not None and dest.is_file():
        sha, digest, size = digests(dest, algorithm)
        if digest == expected.digest:
            return Fetched(dest, sha, size, downloaded=False)
    part = dest.with_name(dest.name + ".part")
    with _progress(label or dest.name, progress) as hook:
        attempt = 0
        while True:
            try:
                _transfer(url, part, hook)
                break
            except _Cut as cut:
                attempt += 1
                if attempt > retries:
                    raise DownloadError(
                        f"download of {url} was cut ({cut}) {attempt} times",
                        "run the command again: it resumes where it stopped",
                    ) from None
    sha, digest, size = digests(part, algorithm)
    if expected is not None and digest != expected.digest:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{url} does not match its published checksum "
            f"({algorithm} {digest[:16]}… instead of {expected.digest[:16]}…); file discarded",
            "the mirror may be corrupt or mid-update; try again later or another mirror",
        )
    part.replace(dest)
    return Fetched(dest, sha, size, downloaded=True)


def fetch_text(url: str) -> str:
    """A small text file (a checksum list), read into memory."""
    with _open(url, 0) as resp:
        try:
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise _offline(url, exc) from None
    return data.decode("utf-8", errors="replace")


@contextlib.contextmanager
def _progress(label: str, enabled: bool) -> Iterator[ProgressHook | None]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task(label, total=None)

        def hook(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield hook
