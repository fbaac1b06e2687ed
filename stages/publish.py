"""A stage's outputs published as one set: after a kill at any moment they are all the old ones or
all the new ones.

A stage writes every output into its staging folder, .publish/<stage>/new/ (beside the outputs, in
the project root: one file system, so that a rename moves a file or a folder whole), then swaps
them in by renames. A journal written before the first rename is the commit point: a run killed
before it left every output as it was, and its staging folder is discarded; a run killed after it,
between two renames, is rolled forward. Either happens when the next stage starts (run_main calls
`recover`), before it reads anything. While a stage runs, it holds an flock on its staging folder,
so that another stage starting beside it leaves a live publish alone."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from stages.common import fail, read_json, write_json
from stages.paths import PUBLISH_DIR

try:
    import fcntl
except ImportError:  # Windows: no flock; there a leftover publish is recovered by its own stage only
    fcntl = None

JOURNAL = "journal.json"  # {"outputs": [...]}: every staged output is complete, swap them in
SCRATCH = "scratch"  # staged(SCRATCH): a folder for temporary files (a downloaded archive), removed after
LOCK_WAIT_SECONDS = 5  # another stage recovering a leftover holds the lock for milliseconds


@contextlib.contextmanager
def _held(root: Path, wait: float = 0.0) -> Iterator[bool]:
    """Hold the lock of the staging folder `root` (made if missing), waiting up to `wait` seconds;
    yields False if another process holds it. The folder is removed on release when it is empty."""
    if fcntl is None:
        root.mkdir(parents=True, exist_ok=True)
        yield True
        return
    deadline, fd = time.monotonic() + wait, None
    try:
        while fd is None:
            root.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):  # removed by its last holder just now: again
                fd = os.open(root, os.O_RDONLY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    fd = None
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.05)
                    continue
                if os.stat(root).st_ino != os.fstat(fd).st_ino:  # locked a folder since removed: again
                    os.close(fd)
                    fd = None
        yield True
        with contextlib.suppress(OSError):  # not empty: a failed swap left its journal for the next run
            os.rmdir(root)
    finally:
        if fd is not None:
            os.close(fd)


def _roll_forward(root: Path) -> None:
    """Swap in every staged output the journal lists; each step can be repeated after a kill."""
    for index, output in enumerate(read_json(root / JOURNAL)["outputs"]):
        target, staged = Path(output), root / "new" / output
        if not os.path.lexists(staged):  # swapped in already
            continue
        if os.path.lexists(target):
            (root / "old").mkdir(exist_ok=True)
            os.replace(target, root / "old" / str(index))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)


def _finish(root: Path) -> None:
    """A leftover publish rolled forward (journal written) or discarded (not), then its folder emptied."""
    if (root / JOURNAL).exists():
        _roll_forward(root)
        (root / JOURNAL).unlink()
    for entry in os.scandir(root):
        shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)


def recover() -> None:
    """Finish or discard every publish a killed stage left behind, except those of running stages."""
    if not PUBLISH_DIR.is_dir():
        return
    for root in sorted(PUBLISH_DIR.iterdir()):
        if root.is_dir():
            with _held(root) as held:
                if held:
                    _finish(root)
    with contextlib.suppress(OSError):
        PUBLISH_DIR.rmdir()


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


@contextlib.contextmanager
def outputs(stage: str, paths: Iterable[str | os.PathLike]) -> Iterator[Callable[[str | os.PathLike], Path]]:
    """Publish `paths` (files or folders, relative to the project root) as one set:

        with publish.outputs("evaluate@frozen", [a, b]) as staged:
            write_json(staged(a), ...)      # staged(path): where to write `path`; it does not exist yet
            save_figure(fig, staged(b))

    When the block ends, every path has been written and they replace the old ones together; when it
    fails, none is touched. staged(SCRATCH) is a folder for the stage's own temporary files."""
    paths = [Path(path).as_posix() for path in paths]
    root = PUBLISH_DIR / stage
    with _held(root, wait=LOCK_WAIT_SECONDS) as held:
        if not held:
            fail(f"{root}: another run of {stage} is publishing its outputs; wait for it to end")
        _finish(root)  # a leftover of a killed run of this stage, if any
        for path in map(Path, paths):  # and what older versions wrote aside (common.atomic_path) and left
            for leftover in path.parent.glob(f".{path.name}.*.tmp"):
                shutil.rmtree(leftover, ignore_errors=True)

        def staged(path: str | os.PathLike) -> Path:
            if Path(path).as_posix() == SCRATCH:
                (root / SCRATCH).mkdir(exist_ok=True)
                return root / SCRATCH
            if Path(path).as_posix() not in paths:
                raise ValueError(f"{path} is not an output of {stage}")
            (root / "new" / path).parent.mkdir(parents=True, exist_ok=True)
            return root / "new" / path

        try:
            yield staged
            missing = [path for path in paths if not os.path.lexists(root / "new" / path)]
            if missing:
                raise RuntimeError(f"{stage} did not write {', '.join(missing)}")
            with _interrupts_deferred():
                write_json(root / JOURNAL, {"outputs": paths})
                _finish(root)
        except BaseException:
            if not (root / JOURNAL).exists():
                _finish(root)  # discard what was staged
            raise
        finally:
            with contextlib.suppress(OSError):  # nothing left to publish: no empty folder either
                root.rmdir()
                PUBLISH_DIR.rmdir()

