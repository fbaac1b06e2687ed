"""Errors a user can act on: one line naming what is wrong, never a traceback."""
from __future__ import annotations

import errno


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
