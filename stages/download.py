"""Stage `download`: bring the dataset that params data.url names into data/raw.

data.url is an http(s) URL, a local archive or a local folder (copied; a link inside it is followed as a
copy only where it leads to somewhere inside that folder, never out of it, into the project or round a loop). An
archive is checked against data.sha256 when given, then unpacked. data/raw appears only complete: a
failed or interrupted run leaves none. What was skipped (dangling links, unreadable files, devices and FIFOs)
(links out of the folder among them) is listed in data/raw/.skipped.json, which split reports in
metrics/data.json."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from transfer.core import params, publish
from transfer.core.errors import UserError, disk_full, printable
from transfer.core.paths import RAW_DIR, RAW_SKIPPED
from transfer.core.settings import SourceSettings, section
from transfer.core.stage import log, run_main
from transfer.data.archives import fetch, file_sha256, is_url, link_leaving, unpack

PARAMS = ("data.url", "data.watch", "data.sha256", "data.max_unpacked_mb")  # as dvc.yaml's download stage declares them

def unwatched(url: str, watch: str) -> str | None:
    """A warning when a local data.url is not what data.watch names: DVC hashes only data.watch, so a
    change to that folder's files would go unseen; None when they agree or the url is http(s)."""
    if is_url(url) or os.path.normpath(watch) == os.path.normpath(url):
        return None
    return (f"warning: data.watch ({watch}) does not name data.url ({url}): DVC will not see its files change; "
            f"set data.watch: {url}")


def check_source_folder(folder: Path, source: str) -> None:
    """Refuse a folder that holds data/raw (it would copy itself into itself) or lies inside it (the
    copy replaces it)."""
    src = folder.resolve()
    raw = RAW_DIR.resolve()
    if src == raw or src in raw.parents:
        raise UserError(f"data.url: {source}: holds the output folder {RAW_DIR}; name a dataset folder outside it")
    if raw in src.parents:
        raise UserError(f"data.url: {source}: lies inside the output folder {RAW_DIR}, which this stage replaces")


class CappedCopy:
    """Copies files of the folder `source` until they come to more than `max_mb` MiB, then fails."""

    def __init__(self, source: Path, max_mb: float) -> None:
        self.source = source
        self.max_mb = max_mb
        self.left = max_mb * 2**20  # bytes

    def __call__(self, path: Path, dest: Path) -> None:
        self.left -= path.stat().st_size
        if self.left < 0:
            raise UserError(f"data.url: {self.source}: its files take more than data.max_unpacked_mb = "
                            f"{self.max_mb:g} MiB "
                            f"(at {path.relative_to(self.source).as_posix()}); raise it if the folder is meant")
        shutil.copy2(path, dest)


def copy_folder(source: Path, target: Path, max_mb: float) -> list[dict]:
    """Copy the folder `source` to `target` (created here), a link as a copy of what it points to.

    A link that leads outside `source`, or to a folder that holds it (it would nest copies without
    end), is not followed; a dangling link, a file that cannot be read (or vanishes while copied) and
    anything not a file or folder are skipped; a full disk, or files past `max_mb` MiB in all
    (data.max_unpacked_mb, as for an archive), stop the copy. Returns {"path", "reason"} for each thing
    skipped, paths relative to `source`."""
    skipped: list[dict] = []
    root = source.resolve()
    copy_file = CappedCopy(source, max_mb)

    def skip(relative: str, reason: str) -> None:
        skipped.append({"path": relative, "reason": reason})

    def copy_tree(folder: Path, dest: Path, holders: frozenset[Path]) -> None:
        dest.mkdir()
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            path = Path(entry.path)
            relative = Path(entry.path).relative_to(source).as_posix()
            try:
                leaving = link_leaving(path, root) if entry.is_symlink() else None
                if leaving:
                    skip(relative, leaving)
                elif entry.is_dir():
                    real = path.resolve()
                    if real in holders:
                        skip(relative, "link to a folder that holds it (a loop)")
                    else:
                        copy_tree(path, dest / entry.name, holders | {real})
                elif entry.is_file():
                    copy_file(path, dest / entry.name)
                else:
                    skip(relative, "not a regular file or folder (a device or FIFO)")
            except OSError as err:
                if disk_full(err):
                    raise
                skip(relative, err.strerror or str(err))

    copy_tree(source, target, frozenset({root}))
    return skipped


@run_main
def main() -> None:
    data = section(params.declared(params.load(), PARAMS), "data", SourceSettings)
    source = data.url
    expected = data.sha256
    if unwatched(source, data.watch):
        log(unwatched(source, data.watch))
    folder = None if is_url(source) else Path(source).expanduser()
    is_folder = folder is not None and folder.is_dir()
    if is_folder:
        check_source_folder(folder, source)
        if expected:
            raise UserError(f"data.sha256: {source} is a folder; a checksum applies to an archive only")
    skipped = []
    with publish.outputs("download", (RAW_DIR,)) as staged:
        raw = staged(RAW_DIR)
        if is_folder:
            skipped = copy_folder(folder, raw, data.max_unpacked_mb)
        else:
            archive, label = fetch(source, staged(publish.SCRATCH))
            if expected:
                actual = file_sha256(archive)
                if actual != expected.lower():
                    raise UserError(f"data.sha256: {label}: expected {expected.lower()}, got {actual}")
            skipped = unpack(archive, raw, data.max_unpacked_mb, label)
        record = raw / RAW_SKIPPED.name
        record.unlink(missing_ok=True)  # a source's own file of that name is no record of this run
        if skipped:  # hidden, so no layout sees it; split reports it
            record.write_text(json.dumps(skipped, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for item in skipped if is_folder else ():
        log(f"warning: skipped {printable(Path(source) / item['path'])}: {item['reason']}")
    files = sum(1 for path in RAW_DIR.rglob("*") if path.is_file() and path != RAW_SKIPPED)
    log(f"{RAW_DIR}: {files} files from {source}" + (f" ({len(skipped)} skipped)" if skipped else ""))


if __name__ == "__main__":
    main()
