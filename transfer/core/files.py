"""Files written whole or not at all, never through a link, and JSON read with one-line errors."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transfer.core.errors import UserError

# Where no dataset lives: pseudo-filesystems (reading /proc/self or /dev/zero never ends), the system's
# own folders, and a user's private ones (caches, keys, settings). A local path resolving into any is refused.
SYSTEM_ROOTS = tuple(map(Path, ("/proc", "/sys", "/dev", "/run", "/etc", "/usr", "/boot", "/bin", "/sbin", "/lib",
                                "/lib32", "/lib64", "/snap", "/var/run")))
PRIVATE_IN_HOME = (".cache", ".ssh", ".gnupg", ".config", ".local", ".aws")
LINK_REFUSED = "a symbolic link where the pipeline writes (it could lead outside the project); remove it and run again"


def check_no_links(path: str | os.PathLike) -> Path:
    """`path`, relative to the project root, with no symbolic link at it or on the way to it (checked
    without following any), and a folder at each step on the way: a checkout of an untrusted branch may
    commit links, and the pipeline never writes or deletes through one, which could lead outside the
    project. Absolute paths (a user's own --output) are the user's to choose and are returned as they are."""
    path = Path(path)
    if path.is_absolute():
        return path
    for depth in range(1, len(path.parts) + 1):
        step = Path(*path.parts[:depth])
        if step.is_symlink():
            raise UserError(f"{step}: {LINK_REFUSED}")
        if depth < len(path.parts) and step.exists() and not step.is_dir():
            raise UserError(f"{step}: not a folder, where the pipeline keeps one; remove it and run again")
    return path


def kind_of(mode: int) -> str | None:
    """What a file of this st_mode is, when not a folder or a regular file (the only kinds the pipeline
    writes); None for those two."""
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def what_is(path: str | os.PathLike) -> str:
    """What stands at `path`, for a message where a regular file or a folder was wanted: "no such
    file or folder", "a loop of symbolic links", "a dangling symbolic link", "a FIFO", ..."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a loop of symbolic links"
        if os.path.islink(path):
            return "a dangling symbolic link"
        return "no such file or folder" if err.errno == errno.ENOENT else f"cannot be read ({err.strerror})"
    return kind_of(mode) or ("a folder" if stat.S_ISDIR(mode) else "a regular file")


def system_folder(path: str | os.PathLike) -> Path | None:
    """The system or private folder (SYSTEM_ROOTS, PRIVATE_IN_HOME, / or the home folder itself) that
    `path`, links resolved, lies in; None when it lies in none."""
    real = Path(os.path.realpath(os.path.expanduser(path)))
    home = Path.home()
    if real in (Path("/"), home):
        return real
    roots = (*SYSTEM_ROOTS, *(home / name for name in PRIVATE_IN_HOME))
    return next((root for root in roots if real == root or root in real.parents), None)


def check_plain_tree(path: str | os.PathLike) -> Path:
    """`path`, a folder relative to the project root that the pipeline fills and empties (.resume/<mode>),
    with no link on the way to it and nothing at it or inside it, at any depth, but folders and regular
    files: a link deep inside could make a library clearing its own folder (DVCLive) delete or write
    outside the project. Walked without following anything; missing is fine."""
    path = check_no_links(path)
    for folder, dirs, files in os.walk(path, onerror=_walk_error):
        for name in dirs + files:
            entry = Path(folder, name)
            kind = kind_of(os.lstat(entry).st_mode)
            if kind == "a symbolic link":
                raise UserError(f"{entry}: {LINK_REFUSED}")
            if kind:
                raise UserError(f"{entry}: {kind} where the pipeline writes (only files and folders belong there); "
                                "remove it and run again")
    return path


def _walk_error(err: OSError) -> None:
    if isinstance(err, NotADirectoryError) or os.path.lexists(err.filename):
        raise UserError(f"{err.filename}: not a folder, where the pipeline keeps one; remove it and run again")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it is renamed onto `path` only if the block succeeds.

    Works for files and folders, so a killed stage never leaves a half-written output. A link at
    `path` is replaced, never followed; one on the way to it is refused (check_no_links)."""
    path = Path(path)
    check_no_links(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def save_figure(fig, path: str | os.PathLike, **kwargs) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", **kwargs)


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: missing; run the stage that writes it first (dvc repro)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
