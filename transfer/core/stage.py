"""What every stage's main shares: user errors as one line and an exit status, Ctrl-C and SIGTERM as a
clean stop, and logging to stderr."""
from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transfer.core.errors import UserError, disk_full, out_of_memory


def _raise_interrupt(signum, frame):  # SIGTERM behaves like Ctrl-C: unwind, clean up, exit
    raise KeyboardInterrupt


INTERRUPTED = "interrupted; nothing was half-written, the next run starts over"
INTERRUPTED_RESUMABLE = "interrupted; finished work is kept, the next run resumes"


def _stage_name(main: Callable[..., Any]) -> str:
    module = main.__module__
    if module == "__main__":  # run as `python -m stages.<name>`: the real name is in the module's spec
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


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
