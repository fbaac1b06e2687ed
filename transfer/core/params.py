"""Load params.yaml, check all of it before any work starts, and resolve a mode into its phases.

Every problem is collected and reported at once, one line each, naming the key (transfer.core.param_checks): a
typo in a key name is an error, not a silently ignored setting. A stage then reads only the params it
declares (`declared`), the same list dvc.yaml gives it, so that DVC re-runs it when one changes."""
from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from transfer.core.errors import UserError
from transfer.core.param_checks import (
    TRAIN_KEYS,
    Checker,
    check_audit,
    check_data,
    check_export,
    check_mode,
    check_pack,
    check_train,
)
from transfer.core.paths import PARAMS_FILE

AUTO_MODE = "auto"  # `mode: auto`: export publishes the mode compare recommends
SECTIONS = {"mode", "data", "pack", "audit", "model", "train", "modes", "export"}


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats, as DVC reads and writes them: `1e-05` (what `dvc exp run -S x=1e-5` writes)
    is a number, not the string PyYAML's YAML 1.1 rules make of it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def check(params: Any, arch_check: Callable[[Checker, str], None] | None = None) -> dict:
    """Return the params if they are valid; raise UserError listing every problem otherwise.

    `arch_check` (transfer.models.backbones.check_arch, for the stages that build a model) also checks
    model.arch and the image sizes against that backbone."""
    c = Checker()
    if not isinstance(params, dict):
        raise UserError(f"params.yaml: must be a mapping of sections (mode, data, model, train, modes), "
                        f"got {type(params).__name__}")
    top = c.section(params, "", SECTIONS)
    check_data(c, top.get("data"))
    check_pack(c, top.get("pack"))
    check_audit(c, top.get("audit"))
    check_export(c, top.get("export"))
    model = c.section(top.get("model"), "model", {"arch"})
    train = c.section(top.get("train"), "train", TRAIN_KEYS)
    check_train(c, train, "train", partial=False)
    modes = top.get("modes")
    if not isinstance(modes, dict) or not modes:
        c.bad("modes", "must map at least one mode name to its settings")
        modes = {}
    for name, row in modes.items():
        check_mode(c, name, row, train)
    if not isinstance(top.get("mode"), str) or top["mode"] not in (*modes, AUTO_MODE):  # [frozen] is no dict key
        c.bad("mode", f"unknown mode {top.get('mode')!r} (known: {AUTO_MODE}, {', '.join(map(str, modes))})")
    if AUTO_MODE in modes:
        c.bad(f"modes.{AUTO_MODE}", f"'{AUTO_MODE}' is the name of `mode: {AUTO_MODE}`, not a mode's; rename the row")
    if not isinstance(model.get("arch"), str):
        c.bad("model.arch", f"must be a backbone name, got {model.get('arch')!r}")
    elif arch_check is not None:
        arch_check(c, model["arch"])
    audit_arch = (top.get("audit") or {}).get("arch") if isinstance(top.get("audit"), dict) else None
    if isinstance(audit_arch, str) and arch_check is not None:
        arch_check(c, audit_arch, "audit.arch")
    if c.problems:
        raise UserError("\n".join(c.problems) if len(c.problems) == 1 else
                        f"{len(c.problems)} problems in params.yaml:\n" + "\n".join(c.problems))
    return params


def load(path: str | Path = PARAMS_FILE, arch_check: Callable[[Checker, str], None] | None = None) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: missing (run from the project root)")
    try:
        params = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return check(params, arch_check)


def declared(params: dict, keys: Iterable[str], mode: str | None = None) -> dict:
    """Only the params a stage declares in dvc.yaml (`data.url`, `modes.{mode}`, ...): reading any
    other one fails at once, so a stage cannot depend on a param DVC does not know it reads."""
    if mode is not None and mode not in params["modes"]:
        raise UserError(f"unknown mode {mode!r} (known: {', '.join(params['modes'])})")
    view: dict = {}
    for key in keys:
        *parents, last = key.format(mode=mode).split(".")
        source, target = params, view
        for name in parents:
            source, target = source[name], target.setdefault(name, {})
        target[last] = copy.deepcopy(source[last])
    return view


def mode_value(params: dict, mode: str, key: str):
    """One `train` setting as the mode sees it: the row's own, else the shared default."""
    return params["modes"][mode].get(key, params["train"][key])


def mode_settings(params: dict, mode: str) -> dict:
    """The complete settings of one mode: the shared `train` defaults overlaid with the mode's row,
    and its phases, each complete too: the mode's settings overlaid with the phase's own."""
    if mode not in params["modes"]:
        raise UserError(f"unknown mode {mode!r} (known: {', '.join(params['modes'])})")
    row = params["modes"][mode]
    settings = overlay(params["train"], {k: v for k, v in row.items() if k != "phases"})
    settings.setdefault("top_blocks", 0)
    settings.setdefault("backbone_lr_scale", 1.0)
    settings["mode"] = mode
    settings["arch"] = params["model"]["arch"]
    phases = row.get("phases") or shorthand_phases(settings)
    for name in ("head_epochs", "head_lr"):
        settings.pop(name, None)
    base = {k: v for k, v in settings.items() if k not in ("trainable", "epochs")}
    settings["phases"] = [overlay(base, phase) for phase in phases]
    settings["trainable"] = settings["phases"][-1]["trainable"]
    settings["epochs"] = sum(phase["epochs"] for phase in settings["phases"])
    return settings


def shorthand_phases(settings: dict) -> list[dict]:
    """`head_epochs` > 0: the head alone first, at `head_lr` (fastai's fine_tune); then what `trainable` names."""
    main = {"trainable": settings["trainable"], "top_blocks": settings["top_blocks"], "epochs": settings["epochs"],
            "lr": settings["lr"]}
    if not settings.get("head_epochs"):
        return [main]
    head = {"trainable": "head", "epochs": settings["head_epochs"], "lr": settings.get("head_lr", settings["lr"])}
    return [head, main]


def overlay(base: dict, row: dict) -> dict:
    """A deep copy of `base` with `row`'s keys set over it (`augment` merged key by key)."""
    settings = copy.deepcopy(base)
    for key, value in row.items():
        if key == "augment":
            settings["augment"] = {**settings.get("augment", {}), **copy.deepcopy(value)}
        else:
            settings[key] = copy.deepcopy(value)
    return settings
