"""What git says of the working tree the pipeline runs in: the files it tracks where a checkout should
hold none (scratch space, staging folders, DVC's cached outputs), and a secret of this working tree
that git never carries, so that what a run left for its next run (train's resume state) can be told
from what a branch committed or a download placed there."""
from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from transfer.core.errors import UserError
from transfer.core.paths import RESUME_DIR

KEY_FILE = "transfer-resume.key"  # in the git folder of this working tree (.git/ or .git/worktrees/<name>/)
KEY_BYTES = 32


def _git(*args: str) -> str | None:
    """git's output, or None where there is no git or no repository (then nothing is tracked)."""
    try:
        proc = subprocess.run(["git", "--literal-pathspecs", *args], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def tracked(paths: Iterable[str | os.PathLike]) -> list[str]:
    """The files git tracks at or under `paths` (relative to the project root)."""
    listed = _git("ls-files", "-z", "--", *(str(path) for path in paths)) or ""
    return [name for name in listed.split("\0") if name]


def tracked_ignored() -> list[str]:
    """The files git tracks although .gitignore ignores them: committed with `git add -f`."""
    listed = _git("ls-files", "-z", "--cached", "--ignored", "--exclude-standard") or ""
    return [name for name in listed.split("\0") if name]


def refuse_tracked(paths: Iterable[str | os.PathLike], why: str) -> None:
    """One line naming the first file git tracks under `paths`, which no commit should hold (`why`)."""
    found = [name for name in tracked(paths) if Path(name).name != ".gitignore"]  # DVC writes those: committed
    if found:
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        raise UserError(f"{found[0]}{more}: committed to git, where {why}; remove {'them' if more else 'it'} from the "
                        "branch (git rm -r --cached) and run again")


def _key_dir() -> Path:
    """This working tree's own git folder (never part of a commit); without git, the scratch folder."""
    git_dir = _git("rev-parse", "--absolute-git-dir")
    return Path(git_dir.strip()) if git_dir else RESUME_DIR


def working_tree_key() -> bytes:
    """A random secret made once per working tree and kept where git never carries it: a state keyed
    with it was written by a run in this working tree, not computed in advance by someone else."""
    path = _key_dir() / KEY_FILE
    key = _read_key(path)
    if key is None:
        _write_key(path)
        key = _read_key(path)
    if key is None:
        raise UserError(f"{path}: cannot keep this working tree's key there (a resume state is checked with it)")
    return key


def _read_key(path: Path) -> bytes | None:
    """The key at `path`; None when missing, a link or of the wrong size."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        key = file.read(KEY_BYTES + 1)
    return key if len(key) == KEY_BYTES else None


def _write_key(path: Path) -> None:
    """A new key at `path`, made whole or not at all; of processes making it at once, the first wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{KEY_FILE}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(secrets.token_bytes(KEY_BYTES))
        try:
            os.link(tmp, path)
        except FileExistsError:
            if _read_key(path) is None:  # a damaged one, or a link: replaced, never followed
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
