"""Errors a user can act on: one line naming what is wrong, never a traceback."""
from __future__ import annotations

import errno


class UserError(Exception):
    """A mistake in what the user gave us (params, data, paths): reported as one line, exit 2."""


# A value from a file or params longer than this is cut in a message: a hostile file's 100,000-character
# name would otherwise fill the terminal.
SHOWN_CHARS = 80

# A write the disk refused: full, over a quota, or past the size limit of a file (ulimit -f).
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (200 characters), for a one-line error."""
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def cut(text: str) -> str:
    """`text` for a one-line message, cut to SHOWN_CHARS with an ellipsis."""
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 1] + "…"


def shown(value) -> str:
    """A value from a file or params as a message shows it: its repr, cut."""
    return cut(repr(value))


def printable(name) -> str:
    """A class name or path from a dataset or model file for a log line, an error line or predict's text:
    as it is when every character prints, else its repr (newlines and other control characters escaped), so
    that no name splits a line or forges one."""
    text = str(name)
    return text if text.isprintable() else repr(text)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def name_count(count: int) -> str:
    return plural(count, "name")


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
