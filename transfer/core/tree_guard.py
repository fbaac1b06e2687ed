"""The check of a checkout before any DVC command touches it (`python -m stages.check_tree`).

`dvc repro` deletes a stage's outputs before the stage runs, and `dvc pull`/`dvc checkout` write them
back from the cache, both following whatever links a branch committed on the way (DVC's own issue
treeverse/dvc#11101): a stage's refusal comes too late. So, before DVC runs: no symbolic link or
special file at, above or inside any output of dvc.yaml, nor in the pipeline's scratch and staging
folders or DVC's cache and temporary folders; and no file committed where only DVC or a run writes
(cached outputs, those folders, or anything git ignores, such as .dvc/config.local)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import yaml

from transfer.core import params
from transfer.core.errors import UserError
from transfer.core.files import check_no_links, check_plain_tree, kind_of
from transfer.core.git_tree import refuse_tracked, tracked_ignored
from transfer.core.param_checks import Checker, check_local, check_url
from transfer.core.paths import PARAMS_FILE, PUBLISH_DIR, RESUME_DIR

DVC_YAML = Path("dvc.yaml")
# Where DVC itself writes, and its settings of this machine alone (cache.dir there could lead outside).
DVC_PRIVATE = (Path(".dvc/cache"), Path(".dvc/tmp"), Path(".dvc/config.local"))
OUTPUT_KINDS = ("outs", "metrics", "plots")


def declared_outputs(dvc_yaml: Path = DVC_YAML) -> Iterator[tuple[Path, bool]]:
    """(path, cached) of every output of every stage in dvc.yaml; a path with a `${...}` (foreach) cut to
    the folder before it, which holds every mode's."""
    try:
        stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages") or {}
        bodies = [stage.get("do", stage) for stage in stages.values()]
        for body in bodies:
            for kind in OUTPUT_KINDS:
                for item in body.get(kind) or []:
                    path, options = (item, {}) if isinstance(item, str) else next(iter(item.items()))
                    yield Path(str(path).split("${")[0] or "."), (options or {}).get("cache", True)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError, StopIteration) as err:
        raise UserError(f"{dvc_yaml}: cannot read its stages' outputs ({type(err).__name__})") from None


def check_plain(path: Path) -> None:
    """No link at or above `path`, and at it or under it only folders and regular files."""
    check_no_links(path)
    if os.path.isdir(path):
        check_plain_tree(path)
    elif os.path.lexists(path) and kind_of(os.lstat(path).st_mode):
        raise UserError(f"{path}: {kind_of(os.lstat(path).st_mode)} where the pipeline writes (only files and folders "
                        "belong there); remove it and run again")


def check_data_paths(params_file: Path = PARAMS_FILE) -> None:
    """data.url and data.watch of params.yaml, read as DVC reads it: a FIFO or a device there hangs a plain
    `dvc status` (DVC hashes data.watch) before any stage can refuse it."""
    if not params_file.exists():  # DVC reports it; nothing of ours to hash
        return
    settings = params.read(params_file)
    data = settings.get("data") if isinstance(settings, dict) else None
    data = data if isinstance(data, dict) else {}
    c = Checker()
    if isinstance(data.get("url"), str):
        check_url(c, data["url"])
    if isinstance(data.get("watch"), str) and data["watch"]:
        check_local(c, "data.watch", data["watch"])
    if c.problems:
        raise UserError(c.problems[0])


def check_tree(dvc_yaml: Path = DVC_YAML) -> list[Path]:
    """Refuse, in one line, what would let a DVC command or a stage reach outside the project; the
    paths checked."""
    outputs = list(declared_outputs(dvc_yaml))
    working = [RESUME_DIR, PUBLISH_DIR, *DVC_PRIVATE]
    checked = sorted(({path for path, _ in outputs} | set(working)) - {Path(".")})
    for path in checked:
        check_plain(path)
    cached = sorted({path for path, is_cached in outputs if is_cached})
    refuse_tracked([*cached, *working], "only DVC or a run of the pipeline writes (cached outputs, scratch "
                                        "and staging folders, DVC's cache)")
    check_data_paths()
    ignored = tracked_ignored()
    if ignored:
        raise UserError(f"{ignored[0]}: committed to git although .gitignore ignores it (git add -f); a branch "
                        "must not bring files the pipeline or DVC keep to themselves: remove it (git rm --cached) and "
                        "run again")
    return checked
