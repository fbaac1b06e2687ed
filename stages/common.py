"""What every stage shares: one-line errors for user mistakes, atomic file writes, logging."""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class UserError(Exception):
    """A mistake in what the user gave us (params, data, paths): reported as one line, exit 2."""


def fail(message: str) -> None:
    raise UserError(message)


# A write the disk refused: full, over a quota, or past the size limit of a file (ulimit -f).
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (200 characters), for a one-line error."""
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS


def out_of_memory(err: BaseException) -> str | None:
    """"GPU", "MPS" or "CPU" when `err` is torch (or Python) running out of that device's memory, else
    None. Judged by type name and message, so that this module needs no torch."""
    if not isinstance(err, (RuntimeError, MemoryError)):
        return None
    text = str(err)
    if "MPS backend out of memory" in text:
        return "MPS"
    if isinstance(err, MemoryError) or "DefaultCPUAllocator: can't allocate memory" in text \
            or "DefaultCPUAllocator: not enough memory" in text:
        return "CPU"
    return "GPU" if type(err).__name__ == "OutOfMemoryError" or "CUDA out of memory" in text else None


def _raise_interrupt(signum, frame):  # SIGTERM behaves like Ctrl-C: unwind, clean up, exit
    raise KeyboardInterrupt


INTERRUPTED = "interrupted; nothing was half-written, the next run starts over"
INTERRUPTED_RESUMABLE = "interrupted; finished work is kept, the next run resumes"


def _stage_name(main: Callable[..., Any]) -> str:
    module = main.__module__
    if module == "__main__":  # run as `python -m stages.x`: the real name is in the module's spec
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec else Path(sys.argv[0]).stem
    return module.rsplit(".", 1)[-1]


def run_main(main: Callable[..., Any] | None = None, *, resumes: bool = False) -> Callable[..., Any]:
    """Wrap a stage's main: user errors become one line on stderr and a non-zero exit, no traceback.
    `@run_main(resumes=True)` for a stage whose next run continues an interrupted one (train)."""
    if main is None:
        return functools.partial(run_main, resumes=resumes)

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        signal.signal(signal.SIGTERM, _raise_interrupt)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # replaces stages/__init__.py's start-up one
            signal.signal(signal.SIGINT, signal.default_int_handler)
        name = _stage_name(main)
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"{name}: error: {err}", file=sys.stderr)
            sys.exit(2)
        except (RuntimeError, MemoryError) as err:
            if not out_of_memory(err):
                raise
            print(f"{name}: error: out of {out_of_memory(err)} memory; close other programs or use a smaller "
                  "batch (train.batch_size)", file=sys.stderr)
            sys.exit(2)
        except OSError as err:
            if not disk_full(err):
                raise
            where = f" writing {err.filename}" if err.filename else ""
            print(f"{name}: error: the disk refused a write{where} ({err.strerror}); free some space and "
                  "re-run (nothing half-written is kept)", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print(f"{name}: {INTERRUPTED_RESUMABLE if resumes else INTERRUPTED}", file=sys.stderr)
            sys.exit(130)

    return wrapper


def check_no_links(path: str | os.PathLike) -> Path:
    """`path`, relative to the project root, with no symbolic link at it or on the way to it (checked
    without following any): a checkout of an untrusted branch may commit links, and the pipeline
    never writes or deletes through one, which could lead outside the project. Absolute paths (a
    user's own --output) are the user's to choose and are returned as they are."""
    path = Path(path)
    if path.is_absolute():
        return path
    for depth in range(1, len(path.parts) + 1):
        step = Path(*path.parts[:depth])
        if step.is_symlink():
            fail(f"{step}: a symbolic link where the pipeline writes (it could lead outside the project); "
                 "remove it and run again")
    return path


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
        fail(f"{path}: missing; run the stage that writes it first (dvc repro)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        fail(f"{path}: not valid JSON ({err})")
