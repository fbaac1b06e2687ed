"""Stage `source`: what params data.url names, as a digest, so that `dvc repro` notices a change to a
local dataset.

DVC watches only the files a stage declares, and a folder or archive that a param names is none of
them. So this stage runs on every `dvc repro` (always_changed in dvc.yaml) and writes
data/source.json, which `download` depends on: download runs again exactly when that file changes.
For a local folder or archive it holds a sha256 of every file's path and bytes (a link as what it
points to, as download copies it, and no link out of the folder); touching a file changes nothing,
adding, removing or editing one does. For an http(s) URL it holds the URL alone, so that online and
offline (DATASET_MIRROR) runs write the same file and the same dvc.lock.

Each file is hashed once: its sha256 is reused while its size, mtime and inode are those recorded in
.source_hashes.json (scratch, ignored by git), as git and DVC reuse theirs."""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from transfer.core import params
from transfer.core.files import write_json
from transfer.core.paths import RAW_DIR, SOURCE_HASHES, SOURCE_JSON
from transfer.core.stage import log, run_main
from transfer.data.archives import is_url, link_leaving

PARAMS = ("data.url",)  # as dvc.yaml's source stage declares it
SETTLE_NS = 2 * 10**9  # a file changed this recently may change again within its mtime's tick: not reused


def tree_files(folder: Path) -> Iterator[tuple[str, Path | str]]:
    """(path relative to `folder`, the file) for each file under it, links followed but no loop and
    none out of `folder`, in name order; (path, why) for what download would skip instead (a loop, a
    dangling link or one leading outside, a FIFO): nothing outside the dataset is read."""
    root = folder.resolve()

    def walk(current: Path, holders: frozenset[Path]) -> Iterator[tuple[str, Path | str]]:
        for entry in sorted(os.scandir(current), key=lambda e: e.name):
            path = Path(entry.path)
            relative = path.relative_to(folder).as_posix()
            try:
                leaving = link_leaving(path, root) if entry.is_symlink() else None
                if leaving:
                    yield relative, leaving
                elif entry.is_dir() and path.resolve() in holders:
                    yield relative, "loop"
                elif entry.is_dir():
                    yield from walk(path, holders | {path.resolve()})
                else:
                    yield relative, path if entry.is_file() else "not a file"
            except OSError as err:
                yield relative, f"unreadable: {err.strerror or err}"

    yield from walk(folder, frozenset({root}))


class Hasher:
    """sha256 of files, reusing the digests of files unchanged since they were last hashed."""

    def __init__(self, known: dict):
        self.known = known
        self.seen: dict[str, list] = {}

    def sha256(self, path: Path) -> str:
        stat = path.stat()
        key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        entry = self.known.get(key)
        if isinstance(entry, list) and entry[:3] == stamp:
            digest = entry[3]
        else:
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        if time.time_ns() - stat.st_mtime_ns > SETTLE_NS:
            self.seen[key] = [*stamp, digest]
        return digest


def folder_digest(folder: Path, hasher: Hasher) -> dict:
    digest, files, size = hashlib.sha256(), 0, 0
    for relative, item in tree_files(folder):
        if isinstance(item, Path):
            try:
                value, files, size = hasher.sha256(item), files + 1, size + item.stat().st_size
            except OSError as err:  # vanished or unreadable since listed: download will say so
                value = f"unreadable: {err.strerror or err}"
        else:
            value = item
        digest.update(f"{relative}\0{value}\n".encode("utf-8", "surrogateescape"))
    return {"files": files, "bytes": size, "sha256": digest.hexdigest()}


def holds_or_inside_raw(path: Path) -> bool:
    """A folder download refuses (it holds data/raw or lies in it): nothing worth hashing."""
    src, raw = path.resolve(), RAW_DIR.resolve()
    return src == raw or src in raw.parents or raw in src.parents


def source_record(url: str, hasher: Hasher) -> dict:
    """What data/source.json holds for data.url. A path that is missing or refused is recorded as
    such; download then stops with the reason."""
    path = Path(url).expanduser()
    if is_url(url) or "://" in url:
        return {"url": url}
    if path.is_dir():
        return {"url": url, "folder": {} if holds_or_inside_raw(path) else folder_digest(path, hasher)}
    if path.is_file():
        return {"url": url, "archive": {"bytes": path.stat().st_size, "sha256": hasher.sha256(path)}}
    return {"url": url, "missing": True}


def read_known() -> dict:
    try:
        known = json.loads(SOURCE_HASHES.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or damaged: everything is hashed again
        return {}
    return known if isinstance(known, dict) else {}


@run_main
def main() -> None:
    url = params.declared(params.load(), PARAMS)["data"]["url"]
    hasher = Hasher(read_known())
    record = source_record(url, hasher)
    write_json(SOURCE_JSON, record)
    if hasher.seen != hasher.known and not is_url(url):
        write_json(SOURCE_HASHES, hasher.seen)
    contents = record.get("folder") or record.get("archive")
    if contents:
        log(f"{SOURCE_JSON}: {url}: " + (f"{contents['files']} files, " if "files" in contents else "")
            + f"{contents['bytes']} bytes, sha256 {contents['sha256'][:12]}")


if __name__ == "__main__":
    main()
