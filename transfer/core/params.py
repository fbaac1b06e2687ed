"""Load params.yaml as DVC reads it, and check all of it before any work starts.

Every problem is collected and reported at once, one line each, naming the key (transfer.core.param_checks): a
typo in a key name is an error, not a silently ignored setting. A stage then reads only the params it
declares (`declared`), the same list dvc.yaml gives it, so that DVC re-runs it when one changes."""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from transfer.core.errors import UserError, first_line
from transfer.core.param_checks import (
    TRAIN_KEYS,
    Checker,
    check_audit,
    check_compare,
    check_data,
    check_export,
    check_mode,
    check_pack,
    check_train,
)
from transfer.core.paths import PARAMS_FILE

AUTO_MODE = "auto"  # `mode: auto`: export publishes the mode compare recommends
SECTIONS = {"mode", "data", "pack", "audit", "model", "train", "modes", "export", "compare"}

MAX_EXPANDED_VALUES = 100_000  # a params.yaml is a few hundred; aliases nested a few deep reach billions


def parse_yaml(text: str, where: str) -> Any:
    """params.yaml as DVC reads it (dvc.utils.serialize.parse_yaml: ruamel.yaml, typ="safe", YAML 1.2), so
    that what a stage runs is what dvc.lock and `dvc exp show` record: `seed: 017` is 17, `1:30` and
    `yes` are strings, `1e-05` a float; a duplicate key is an error, as for DVC. Aliases (*name) work,
    but a file whose aliases would expand it past MAX_EXPANDED_VALUES is refused before it is expanded."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    reader = YAML(typ="safe")
    try:
        if expanded_size(reader.compose(text), {}, set(), where) > MAX_EXPANDED_VALUES:
            raise UserError(f"{where}: its aliases (*name) expand it past {MAX_EXPANDED_VALUES:,} values; "
                            "write the values out")
        return reader.load(text)
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{where}: not valid YAML{at} ({first_line(getattr(err, 'problem', None) or err)})") from None
    except ValueError as err:  # a number past Python's int/str conversion limit (4300 digits), a bad date
        said = first_line(err).split("; use sys.")[0]  # not Python's own advice to raise the limit
        raise UserError(f"{where}: holds a value that cannot be read ({said})") from None


def expanded_size(node, sizes: dict[int, int], open_nodes: set[int], where: str) -> int:
    """How many values the composed YAML `node` holds once every alias is expanded, counted without
    expanding: an alias is the node it names, whose size is computed once."""
    if node is None or id(node) in sizes:
        return sizes.get(id(node), 0)
    if id(node) in open_nodes:
        raise UserError(f"{where}: an alias (*name) inside the value it names; write the values out")
    open_nodes.add(id(node))
    children = node.value if isinstance(node.value, list) else []
    pairs = [item for child in children for item in (child if isinstance(child, tuple) else (child,))]
    sizes[id(node)] = 1 + sum(expanded_size(child, sizes, open_nodes, where) for child in pairs)
    open_nodes.discard(id(node))
    return sizes[id(node)]


def check(params: Any, arch_check: Callable[[Checker, str, str, list], None] | None = None) -> dict:
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
    check_compare(c, top.get("compare"))
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
    if arch_check is not None:
        for key, arch, sizes in backbones_named(c, top, modes):
            arch_check(c, arch, key, sizes)
    if c.problems:
        raise UserError("\n".join(c.problems) if len(c.problems) == 1 else
                        f"{len(c.problems)} problems in params.yaml:\n" + "\n".join(c.problems))
    return params


def backbones_named(c: Checker, top: dict, modes: dict) -> list[tuple[str, str, list[tuple[str, int]]]]:
    """(key, backbone name, the image sizes it must take) of every backbone params.yaml names: a row's
    `arch` takes the row's sizes and train's, model.arch every other size but the audit's, audit.arch the audit's."""
    own = {f"modes.{name}.": row["arch"] for name, row in modes.items()
           if isinstance(row, dict) and isinstance(row.get("arch"), str)}
    named = [(f"{prefix}arch", arch, [(k, s) for k, s in c.image_sizes if k.startswith((prefix, "train."))])
             for prefix, arch in own.items()]
    model_arch = (top.get("model") or {}).get("arch") if isinstance(top.get("model"), dict) else None
    if isinstance(model_arch, str):
        named.append(("model.arch", model_arch, [(k, s) for k, s in c.image_sizes
                                                 if not k.startswith(("audit.", *own))]))
    audit_arch = (top.get("audit") or {}).get("arch") if isinstance(top.get("audit"), dict) else None
    if isinstance(audit_arch, str):
        named.append(("audit.arch", audit_arch, [(k, s) for k, s in c.image_sizes if k.startswith("audit.")]))
    return named


def load(path: str | Path = PARAMS_FILE, arch_check: Callable[[Checker, str, str, list], None] | None = None) -> dict:
    return check(read(path), arch_check)


def read(path: str | Path = PARAMS_FILE) -> Any:
    """params.yaml parsed as DVC parses it (parse_yaml), not yet checked."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: missing (run from the project root)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror})") from None
    return parse_yaml(text, str(path))


def declared(params: dict, keys: Iterable[str], mode: str | None = None) -> dict:
    """Only the params a stage declares in dvc.yaml (`data.url`, `modes.{mode}`, ...): reading any
    other one fails at once, so a stage cannot depend on a param DVC does not know it reads."""
    if mode is not None and mode not in params["modes"]:
        raise UserError(f"unknown mode {mode!r} (known: {', '.join(params['modes'])})")
    view: dict = {}
    for key in keys:
        *parents, last = key.format(mode=mode).split(".")
        source = params
        target = view
        for name in parents:
            source = source[name]
            target = target.setdefault(name, {})
        target[last] = copy.deepcopy(source[last])
    return view


def mode_value(params: dict, mode: str, key: str):
    """One `train` setting as the mode sees it: the row's own, else the shared default."""
    return params["modes"][mode].get(key, params["train"][key])


def mode_key(params: dict, mode: str, key: str) -> str:
    """The params key mode_value(params, mode, key) reads: `modes.<mode>.<key>`, else `train.<key>`."""
    return f"modes.{mode}.{key}" if key in params["modes"][mode] else f"train.{key}"
