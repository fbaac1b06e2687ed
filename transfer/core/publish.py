"""A stage's outputs published whole: each output is either the old one or the new one, never
half-written, and a failed run changes none of them.

A stage writes every output into its staging folder, .publish/<stage>/ (in the project root: one file
system, so that a rename moves a file or a folder whole), then swaps each one in with a single rename
(an exchange of the two paths where the system has one, so no output is ever missing). A kill between
two of those renames leaves some outputs new and some old: dvc.lock vouches for neither mix, so
`dvc status` shows the stage changed and `dvc repro` runs it again.

Nothing found in the working tree is trusted: a checkout of an untrusted branch can commit files under
.publish/ (git ignores the folder, `git add -f` does not) or symbolic links anywhere. So there is no
journal to replay and nothing is recovered at start-up: a stage touches only its own staging folder,
which it empties without following links before it starts, and it never writes through a link
(common.check_no_links). While a stage publishes it holds an flock on its staging folder, so that a
second run of the same stage waits for it or stops with one line."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from transfer.core.errors import UserError
from transfer.core.files import check_no_links
from transfer.core.paths import PUBLISH_DIR

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

SCRATCH = "scratch"  # staged(SCRATCH): a folder for temporary files (a downloaded archive), removed after
LOCK_WAIT_SECONDS = 5  # a second run of the same stage waits this long for the first to finish publishing


def remove(path: Path) -> None:
    """Remove a file, a link (never what it points to) or a folder (its links too, not their targets:
    shutil.rmtree works on file descriptors and does not follow them). Missing is fine."""
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _open_lock(root: Path) -> int | None:
    """A descriptor of `root` locked for this process, or None while another process holds it."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if os.stat(root, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:  # removed by its holder just now
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def _held(root: Path, wait: float) -> Iterator[bool]:
    """Hold the lock of the staging folder `root` (made if missing), waiting up to `wait` seconds;
    yields False if another process holds it. The folder is removed on release."""
    if fcntl is None:
        root.mkdir(parents=True, exist_ok=True)
        yield True
        return
    deadline = time.monotonic() + wait
    fd = None
    try:
        while fd is None:
            with contextlib.suppress(FileExistsError):
                root.mkdir(parents=True)
            with contextlib.suppress(FileNotFoundError):  # removed by its last holder just now: again
                fd = _open_lock(root)
            if fd is None:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.05)
        yield True
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.rmdir(root)
            os.close(fd)


def _exchange(staged: Path, target: Path) -> bool:
    """Swap the two paths in one step (Linux's renameat2 RENAME_EXCHANGE); False where the system or
    the file system has no such call, and the caller moves the old one aside first."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if os.name == "posix" else None
    if renameat2 is None:
        return False
    at_cwd = -100
    rename_exchange = 2
    sys.audit("os.rename", staged, target, None, None)  # a rename, for audit hooks as os.replace raises it
    if renameat2(at_cwd, os.fsencode(staged), at_cwd, os.fsencode(target), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(target))


def _swap_in(staged: Path, target: Path, aside: Path) -> None:
    """Put `staged` in place of `target`: a file (or a link) is replaced by one rename; an existing
    folder is exchanged with it, or moved aside first. What was there ends up in `aside`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.isdir(target) or os.path.islink(target):
        if os.path.isdir(staged) and os.path.lexists(target):  # a folder in place of a file or a link
            os.replace(target, aside)
        os.replace(staged, target)
    elif _exchange(staged, target):
        os.replace(staged, aside)  # `staged` now holds the old folder
    else:
        os.replace(target, aside)
        os.replace(staged, target)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Ctrl-C or SIGTERM during the swap takes effect after it: the set is swapped in whole."""
    caught: list[int] = []
    handlers = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if caught:
            raise KeyboardInterrupt


def _checked_outputs(stage: str, paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The outputs as relative paths inside the project with no link on the way to them."""
    outputs = [Path(path) for path in paths]
    for path in outputs:
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise ValueError(f"{stage}: {path} is not a path inside the project")
        check_no_links(path.parent)
    return outputs


def _remove_left_aside(outputs: list[Path]) -> None:
    """What older versions of the stages wrote beside an output (common.atomic_path's .<name>.*.tmp)."""
    for path in outputs:
        for leftover in path.parent.glob(f".{path.name}.*.tmp"):
            remove(leftover)


@contextlib.contextmanager
def outputs(stage: str, paths: Iterable[str | os.PathLike]) -> Iterator[Callable[[str | os.PathLike], Path]]:
    """Publish `paths` (files or folders, relative to the project root) as one set:

        with publish.outputs("evaluate@frozen", [a, b]) as staged:
            write_json(staged(a), ...)      # staged(path): where to write `path`; it does not exist yet
            save_figure(fig, staged(b))

    When the block ends, every path has been written and each replaces its old one; when it fails,
    none is touched. staged(SCRATCH) is a folder for the stage's own temporary files."""
    outputs = _checked_outputs(stage, paths)
    check_no_links(PUBLISH_DIR)
    root = PUBLISH_DIR / stage
    if os.path.islink(root) or os.path.isfile(root):  # not ours: the checkout brought it
        os.unlink(root)
    check_no_links(root)  # and .publish a folder: a regular file there would end in mkdir's traceback
    try:
        with _held(root, wait=LOCK_WAIT_SECONDS) as held:
            if not held:
                raise UserError(f"{root}: another run of {stage} is publishing its outputs; wait for it to end")
            yield from _publish(stage, root, outputs)
    finally:
        with contextlib.suppress(OSError):  # nothing left to publish: no empty folder either
            PUBLISH_DIR.rmdir()


def _publish(stage: str, root: Path, outputs: list[Path]) -> Iterator[Callable[[str | os.PathLike], Path]]:
    """outputs()'s work, with the lock of `root` held."""
    names = {path.as_posix() for path in outputs}
    for entry in list(root.iterdir()):  # a killed run's, or the checkout's: emptied, links not followed
        remove(entry)
    _remove_left_aside(outputs)
    new = root / "new"
    aside = root / "old"

    def staged(path: str | os.PathLike) -> Path:
        if Path(path).as_posix() == SCRATCH:
            (root / SCRATCH).mkdir(exist_ok=True)
            return root / SCRATCH
        if Path(path).as_posix() not in names:
            raise ValueError(f"{path} is not an output of {stage}")
        (new / path).parent.mkdir(parents=True, exist_ok=True)
        return new / path

    try:
        yield staged
        missing = [path.as_posix() for path in outputs if not os.path.lexists(new / path)]
        if missing:
            raise RuntimeError(f"{stage} did not write {', '.join(missing)}")
        aside.mkdir()
        with _interrupts_deferred():
            for index, path in enumerate(outputs):
                _swap_in(new / path, path, aside / str(index))
    finally:
        for entry in list(root.iterdir()):
            remove(entry)
