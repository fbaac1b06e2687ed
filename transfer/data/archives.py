"""Getting a dataset archive onto disk (local mirror, or HTTP with retries and resume) and unpacking
it safely: nothing is written outside the target, and nothing past a size limit."""
from __future__ import annotations

import hashlib
import http.client
import lzma
import os
import posixpath
import re
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm import tqdm

from transfer.core.errors import UserError, disk_full
from transfer.core.files import what_is
from transfer.core.paths import RAW_DIR
from transfer.core.stage import log

MIRROR_ENV = "DATASET_MIRROR"
TRIES = 5
RETRY_DELAY = 1.0  # seconds before the first retry; doubles before each further one
TIMEOUT = 60       # seconds of silence after which a connection counts as dropped
CHUNK = 1 << 20
RETRY_STATUS = {408, 429}  # client-side codes that mean "try again later", besides every 5xx
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)
CORRUPT_ERRORS = (zipfile.BadZipFile, tarfile.TarError, zlib.error, lzma.LZMAError, EOFError, OSError)


class _Transient(Exception):
    """A network failure worth retrying: dropped connection, timeout, server error."""


def is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https")


def fetch(source: str, scratch: Path) -> tuple[Path, str]:
    """The archive that data.url names as a local file, and how to name it in messages.

    A URL is served from the $DATASET_MIRROR folder when that holds a file of the URL's name, else
    downloaded into `scratch`."""
    if not is_url(source):
        if "://" in source:
            raise UserError(f"data.url: {source}: unsupported scheme (use http(s)://, an archive path or a folder)")
        path = Path(source).expanduser()
        if not path.is_file():
            kind = what_is(path)
            raise UserError(f"data.url: {source}: {kind}" + ("" if kind == "no such file or folder" else
                                                            ", not an archive or a folder"))
        return path, str(path)
    name = posixpath.basename(urllib.parse.unquote(urllib.parse.urlsplit(source).path)) or "download"
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        copy = Path(mirror) / name
        if copy.is_file():
            log(f"using {copy} (${MIRROR_ENV}) instead of downloading {source}")
            return copy, str(copy)
        log(f"no {name} in ${MIRROR_ENV} ({mirror}): downloading it")
    dest = scratch / name
    download(source, dest)
    return dest, source


def download(url: str, dest: Path) -> None:
    """Download `url` to `dest`, retrying transient failures with exponential back-off."""
    for attempt in range(1, TRIES + 1):
        try:
            return _download_once(url, dest)
        except _Transient as err:
            if attempt == TRIES:
                raise UserError(f"data.url: {url}: download failed after {TRIES} tries ({err})") from None
            delay = RETRY_DELAY * 2 ** (attempt - 1)
            log(f"{url}: {err}; retry {attempt} of {TRIES - 1} in {delay:g} s")
            time.sleep(delay)


def _download_once(url: str, dest: Path) -> None:
    """One request; continues a partial `dest` with an HTTP Range request when the server allows."""
    have = dest.stat().st_size if dest.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416:  # the partial file does not fit what the server has now
            dest.unlink(missing_ok=True)
            raise _Transient("server refused to resume") from None
        if err.code >= 500 or err.code in RETRY_STATUS:
            raise _Transient(f"HTTP {err.code} {err.reason}") from None
        raise UserError(f"data.url: {url}: HTTP {err.code} {err.reason}") from None
    except NETWORK_ERRORS as err:
        raise _Transient(str(getattr(err, "reason", err)) or type(err).__name__) from None
    with response:
        resumed = have > 0 and response.status == 206 and \
            response.headers.get("Content-Range", "").startswith(f"bytes {have}-")
        if response.status == 206 and not resumed:
            dest.unlink()
            raise _Transient("the server sent another range than asked for; starting over")
        if resumed:
            log(f"{url}: resuming at byte {have}")
        else:
            have = 0  # the server ignored the Range header: start over
        length = response.headers.get("Content-Length", "")
        total = have + int(length) if length.isdigit() else None
        try:
            with open(dest, "ab" if resumed else "wb") as out, \
                    tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=dest.name, file=sys.stderr, mininterval=1) as progress:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    progress.update(len(chunk))
        except NETWORK_ERRORS as err:
            raise _Transient(f"connection dropped ({err or type(err).__name__})") from None
    size = dest.stat().st_size
    if total is not None and size < total:
        raise _Transient(f"connection dropped after {size} of {total} bytes")


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def link_leaving(link: Path, root: Path) -> str | None:
    """Why download and source follow no link `link` in a dataset folder whose real path is `root`: it
    dangles, or leads out of the folder (to /etc, the project...); None when it stays inside."""
    real = Path(os.path.realpath(link))  # unlike Path.resolve, no error on a loop of links: it dangles
    if not real.exists():
        return f"dangling link to {os.readlink(link)}"
    return None if real == root or root in real.parents else f"link to {os.readlink(link)}, outside the dataset folder"


def archive_kind(path: Path) -> str | None:
    """"zip", "tar:" plus its compression ("tar:gz", ...; tarfile's mode) or None, judged by the content
    rather than the name."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    for magic, compression in TAR_COMPRESSIONS.items():
        if head.startswith(magic):
            return f"tar:{compression}"
    if head[257:262] == b"ustar":
        return "tar:"
    return "zip" if zipfile.is_zipfile(path) else None


TAR_COMPRESSIONS = {b"\x1f\x8b": "gz", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}  # by magic bytes


@dataclass
class _Member:
    name: str          # as stored in the archive
    kind: str          # "dir", "file", "link" or "other"
    info: object       # the archive module's own record of it
    size: int = 0      # declared unpacked size of a file
    link: str = ""     # what a link points to, relative to the archive's root; "" when outside it


def unpack(archive: Path, target: Path, max_mb: float, label: str) -> list[dict]:
    """Unpack a zip or tar archive into the folder `target` (created here).

    Refuses members that would land outside `target`, and archives that unpack to more than
    `max_mb` MiB (data.max_unpacked_mb). Hidden files and macOS `__MACOSX/` metadata are left out.
    A link becomes a copy of the file it points to, so that no link on disk leads anywhere else.
    Returns {"path", "reason"} for each member skipped (devices, FIFOs, links to no file)."""
    kind = archive_kind(archive)
    if kind is None:
        raise UserError(f"{label}: not a zip or tar archive")
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                members = [_zip_member(zf, info, label) for info in zf.infolist()]
                return _extract(members, zf.open, target, max_mb, label)
        with tarfile.open(archive, f"r{kind.removeprefix('tar')}") as tf:
            return _extract([_tar_member(info) for info in tf.getmembers()], tf.extractfile, target, max_mb, label)
    except CORRUPT_ERRORS as err:
        if disk_full(err):  # the disk, not the archive: run_main names it
            raise
        said = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"{label}: truncated or corrupt archive ({said})") from None


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> _Member:
    if info.flag_bits & 0x1:
        raise UserError(f"{label}: member {info.filename!r} is encrypted")
    if info.is_dir():
        return _Member(info.filename, "dir", info)
    if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symlink (Info-ZIP): its data is the target
        target = zf.read(info).decode("utf-8", "surrogateescape")
        return _Member(info.filename, "link", info, link=_link_target(info.filename, target))
    return _Member(info.filename, "file", info, info.file_size)


def _tar_member(info: tarfile.TarInfo) -> _Member:
    if info.isdir():
        return _Member(info.name, "dir", info)
    if info.isfile():
        return _Member(info.name, "file", info, info.size)
    if info.issym():
        return _Member(info.name, "link", info, link=_link_target(info.name, info.linkname))
    if info.islnk():  # a hard link names its target from the archive's root
        return _Member(info.name, "link", info, link=_link_target("", info.linkname))
    return _Member(info.name, "other", info)


def _link_target(name: str, link: str) -> str:
    link = link.replace("\\", "/")
    if link.startswith("/") or re.match(r"[A-Za-z]:", link):
        return ""
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name.replace("\\", "/")), link))
    return "" if resolved == ".." or resolved.startswith("../") else resolved


def _parts(name: str, label: str) -> list[str]:
    """A member name's path parts, refused when the name could reach outside the target folder."""
    name = name.replace("\\", "/")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if name.startswith("/") or re.match(r"[A-Za-z]:", name) or ".." in parts:
        raise UserError(f"{label}: member {name!r} would unpack outside {RAW_DIR} (absolute path or '..'); "
                        f"refusing the archive")
    return parts


def _extract(members: list[_Member], open_member: Callable[[object], IO[bytes]], target: Path,
             max_mb: float, label: str) -> list[dict]:
    limit = _Limit(max_mb * 2**20, f"data.max_unpacked_mb = {max_mb:g}")
    skipped: list[dict] = []
    by_name, wanted = _plan(members, target, limit, label, skipped)
    target.mkdir(parents=True)
    _write(wanted, by_name, open_member, limit, label, skipped)
    return skipped


def _skip(skipped: list[dict], label: str, name: str, reason: str) -> None:
    log(f"{label}: skipping {name!r}: {reason}")
    skipped.append({"path": name, "reason": reason})


@dataclass
class _Limit:
    max_bytes: float
    text: str  # how messages name it


def _plan(members: list[_Member], target: Path, limit: _Limit, label: str,
          skipped: list[dict]) -> tuple[dict[str, _Member], list[tuple[_Member, Path]]]:
    """Every member by its normalised name (links resolve through it), and the members to unpack with
    their paths under `target`: the whole archive is checked before anything is written."""
    by_name = {}
    wanted = []
    declared = 0
    for member in members:
        parts = _parts(member.name, label)
        by_name["/".join(parts)] = member
        if member.kind == "link" and not member.link:
            raise UserError(f"{label}: link {member.name!r} points outside the archive; refusing the archive")
        if not parts or any(part.startswith(".") or part == "__MACOSX" for part in parts):
            continue
        if member.kind == "other":
            _skip(skipped, label, member.name, "not a regular file, folder or link (a device or FIFO)")
            continue
        declared += member.size
        if declared > limit.max_bytes:
            raise UserError(f"{label}: member {member.name!r} takes the declared unpacked size past {limit.text}; "
                            "refusing a possible archive bomb")
        wanted.append((member, target.joinpath(*parts)))
    return by_name, wanted


def _write(wanted: list[tuple[_Member, Path]], by_name: dict[str, _Member],
           open_member: Callable[[object], IO[bytes]], limit: _Limit, label: str, skipped: list[dict]) -> None:
    """Create the folders and write the files; a link is written as a copy of the file it points to."""
    written = 0
    for member, path in wanted:
        if member.kind == "dir":
            path.mkdir(parents=True, exist_ok=True)
            continue
        source = by_name.get(member.link) if member.kind == "link" else member
        if source is None or source.kind != "file":
            _skip(skipped, label, member.name, f"link to {member.link!r}, which is not a file in the archive")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with open_member(source.info) as data, open(path, "wb") as out:
            while chunk := data.read(CHUNK):
                written += len(chunk)  # the bytes really written: a header may understate its size
                if written > limit.max_bytes:
                    raise UserError(f"{label}: member {member.name!r} takes the unpacked size past {limit.text} "
                                    "(more than its header declares); refusing a possible archive bomb")
                try:
                    out.write(chunk)
                except OSError as err:  # name the file: a disk-full error carries none
                    raise OSError(err.errno, err.strerror, str(path)) from None
