"""Load params.yaml and check all of it before any work starts.

Every problem is collected and reported at once, one line each, naming the key: a typo in a key name
is an error, not a silently ignored setting. A mode's settings are resolved here too, so that the
training loop only ever sees complete, checked rows."""
from __future__ import annotations

import copy
import difflib
import math
import re
from pathlib import Path
from typing import Any

import yaml

from stages.common import UserError

PARAMS_FILE = Path("params.yaml")


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats, as DVC reads and writes them: `1e-05` (what `dvc exp run -S x=1e-5` writes)
    is a number, not the string PyYAML's YAML 1.1 rules make of it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("cosine", "step", "onecycle", "none")
LAYOUTS = ("auto", "imagefolder", "prefix", "random")
TRAINABLE = ("head", "top", "all")
MIN_IMAGE_SIZE = 32  # every supported backbone downsamples 32x
MAX_SEED = 2**32 - 1  # seeds are combined with the epoch number into a 64-bit torch seed
MODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # it names files and the DVC stage train@<mode>

# Settings only a mode row may hold; every key of `train` may appear in a row as an override.
MODE_KEYS = {"pretrained", "trainable", "top_blocks", "head_epochs", "head_lr", "backbone_lr_scale"}
AUGMENT_KEYS = {"crop_scale", "crop_size", "hflip", "vflip", "rotation", "color_jitter", "grayscale"}


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.image_sizes: list[tuple[str, int]] = []  # (key, size): checked against the backbone last

    def bad(self, key: str, why: str) -> None:
        self.problems.append(f"params.yaml: {key}: {why}")

    def section(self, node: Any, key: str, allowed: set[str]) -> dict:
        if not isinstance(node, dict):
            self.bad(key, f"must be a mapping, got {node!r}")
            return {}
        for name in sorted(set(node) - allowed, key=str):
            close = difflib.get_close_matches(str(name), sorted(allowed), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            self.bad(f"{key}.{name}" if key else str(name),
                     f"unknown setting ({hint}known: {', '.join(sorted(allowed))})")
        return node

    def number(self, node: dict, key: str, name: str, *, kind=float, low=None, high=None,
               low_open=False, high_open=False, optional=False) -> None:
        if name not in node:
            if not optional:
                self.bad(f"{key}.{name}", "missing")
            return
        value = node[name]
        if value is None and optional:
            return
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            ok_type = isinstance(value, int) and not isinstance(value, bool)
        if not ok_type:
            self.bad(f"{key}.{name}", f"must be {'a whole number' if kind is int else 'a number'}, got {value!r}")
            return
        if not math.isfinite(value):
            self.bad(f"{key}.{name}", f"must be a finite number, got {value!r}")
            return
        if low is not None and (value <= low if low_open else value < low):
            self.bad(f"{key}.{name}", f"must be {'>' if low_open else '>='} {low}, got {value!r}")
        if high is not None and (value >= high if high_open else value > high):
            self.bad(f"{key}.{name}", f"must be {'<' if high_open else '<='} {high}, got {value!r}")

    def choice(self, node: dict, key: str, name: str, choices, optional=False) -> None:
        if name not in node:
            if not optional:
                self.bad(f"{key}.{name}", "missing")
            return
        if node[name] not in choices:
            self.bad(f"{key}.{name}", f"unknown value {node[name]!r} (known: {', '.join(map(str, choices))})")

    def boolean(self, node: dict, key: str, name: str, optional=False) -> None:
        if name not in node:
            if not optional:
                self.bad(f"{key}.{name}", "missing")
        elif not isinstance(node[name], bool):
            self.bad(f"{key}.{name}", f"must be true or false, got {node[name]!r}")


TRAIN_KEYS = {"seed", "device", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
              "scheduler", "warmup_epochs", "step_size", "gamma", "label_smoothing", "image_size", "augment",
              "cached_views", "workers", "keep_bn_stats"}


def _check_train(c: _Checker, node: dict, key: str, partial: bool) -> None:
    """Check a full `train` section, or (partial=True) the overrides a mode row holds."""
    opt = partial
    c.number(node, key, "seed", kind=int, low=0, high=MAX_SEED, optional=opt)
    if "device" in node or not partial:
        device = node.get("device")
        if not isinstance(device, str) or not (device in ("auto", "cpu", "mps", "cuda") or
                                               (device.startswith("cuda:") and device[5:].isdigit())):
            c.bad(f"{key}.device", f"must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    c.number(node, key, "epochs", kind=int, low=1, optional=opt)
    c.number(node, key, "batch_size", kind=int, low=1, optional=opt)
    c.choice(node, key, "optimizer", OPTIMIZERS, optional=opt)
    c.number(node, key, "lr", low=0, low_open=True, optional=opt)
    c.number(node, key, "momentum", low=0, high=1, high_open=True, optional=opt)
    c.number(node, key, "weight_decay", low=0, optional=opt)
    c.choice(node, key, "scheduler", SCHEDULERS, optional=opt)
    c.number(node, key, "warmup_epochs", low=0, optional=opt)
    c.number(node, key, "step_size", kind=int, low=1, optional=opt)
    c.number(node, key, "gamma", low=0, low_open=True, high=1, optional=opt)
    c.number(node, key, "label_smoothing", low=0, high=1, high_open=True, optional=opt)
    if "image_size" in node or not partial:
        size = node.get("image_size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < MIN_IMAGE_SIZE):
            c.bad(f"{key}.image_size", f"must be null or a whole number >= {MIN_IMAGE_SIZE} "
                                       f"(the backbones downsample 32x), got {size!r}")
        elif size is not None:
            c.image_sizes.append((f"{key}.image_size", size))
    c.number(node, key, "cached_views", kind=int, low=1, optional=opt)
    c.boolean(node, key, "keep_bn_stats", optional=opt)
    if "workers" in node or not partial:
        workers = node.get("workers")
        if workers != "auto" and not (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0):
            c.bad(f"{key}.workers", f"must be auto or a whole number >= 0, got {workers!r}")
    if "augment" in node or not partial:
        aug = c.section(node.get("augment"), f"{key}.augment", AUGMENT_KEYS)
        akey = f"{key}.augment"
        for name in ("hflip", "vflip", "grayscale"):
            c.number(aug, akey, name, low=0, high=1, optional=partial)
        c.number(aug, akey, "rotation", low=0, high=180, optional=partial)
        c.number(aug, akey, "color_jitter", low=0, high=1, optional=partial)
        if "crop_scale" in aug or not partial:
            scale = aug.get("crop_scale")
            if scale is not None and not (isinstance(scale, list) and len(scale) == 2 and
                                          all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scale)
                                          and 0 < scale[0] <= scale[1] <= 1):
                c.bad(f"{akey}.crop_scale", f"must be null or [low, high] with 0 < low <= high <= 1, got {scale!r}")
        size = aug.get("crop_size")  # optional everywhere: null, the image size, when left out
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < MIN_IMAGE_SIZE):
            c.bad(f"{akey}.crop_size", f"must be null or a whole number >= {MIN_IMAGE_SIZE}, got {size!r}")
        elif size is not None:
            c.image_sizes.append((f"{akey}.crop_size", size))


def _check_mode(c: _Checker, name: str, row: Any, train: dict) -> None:
    key = f"modes.{name}"
    row = c.section(row, key, MODE_KEYS | TRAIN_KEYS)
    c.boolean(row, key, "pretrained")
    c.choice(row, key, "trainable", TRAINABLE)
    if row.get("trainable") == "top":
        c.number(row, key, "top_blocks", kind=int, low=1)
    elif "top_blocks" in row:
        c.bad(f"{key}.top_blocks", "only means something with trainable: top")
    c.number(row, key, "head_epochs", kind=int, low=0, optional=True)
    c.number(row, key, "head_lr", low=0, low_open=True, optional=True)
    c.number(row, key, "backbone_lr_scale", low=0, low_open=True, optional=True)
    if row.get("head_epochs") and row.get("pretrained") is False:
        c.bad(f"{key}.head_epochs", "a head-only phase needs a pretrained backbone (pretrained: true)")
    if row.get("keep_bn_stats", train.get("keep_bn_stats")) is True and row.get("pretrained") is False:
        c.bad(f"{key}.keep_bn_stats", "a randomly initialised network has no BatchNorm statistics worth keeping; "
                                      "use pretrained: true or keep_bn_stats: false")
    if row.get("trainable") in ("head", "top") and row.get("pretrained") is False:
        c.bad(f"{key}.trainable", "freezing a randomly initialised backbone trains nothing useful; "
                                  "use pretrained: true or trainable: all")
    _check_train(c, {k: v for k, v in row.items() if k in TRAIN_KEYS}, key, partial=True)


def backbone_sizes(arch: str) -> tuple[int, bool]:
    """(the smallest image size `arch` takes, whether that is the only size it takes).

    The minimum is torchvision's, from the weights' metadata (`min_size`): AlexNet 63 px, Inception v3
    75 px, Swin 224 px, ...; a ViT (fixed position embeddings) and MaxViT (fixed attention windows)
    take that size only."""
    from stages.backbones import OFFLINE_ARCH

    if arch == OFFLINE_ARCH:
        return MIN_IMAGE_SIZE, False
    import torchvision

    try:
        low = max(torchvision.models.get_model_weights(arch).DEFAULT.meta.get("min_size", (1, 1)))
    except (ValueError, KeyError, AttributeError):  # a model without published weights: no known limit
        return MIN_IMAGE_SIZE, False
    return max(MIN_IMAGE_SIZE, low), arch.startswith(("vit_", "maxvit"))


def _check_image_sizes(c: _Checker, arch: str) -> None:
    low, only = backbone_sizes(arch)
    for key, size in c.image_sizes:
        if only and size != low:
            c.bad(key, f"{size} does not fit model.arch {arch}: it takes {low} px images only (use {low} or null)")
        elif size < low:
            c.bad(key, f"{size} is too small for model.arch {arch}: its minimum input size is {low} px "
                       f"(or null: its own size)")


def check(params: Any) -> dict:
    """Return the params if they are valid; raise UserError listing every problem otherwise."""
    c = _Checker()
    if not isinstance(params, dict):
        raise UserError(f"params.yaml: must be a mapping of sections (mode, data, model, train, modes), "
                        f"got {type(params).__name__}")
    top = c.section(params, "", {"mode", "data", "model", "train", "modes"})
    data = c.section(top.get("data"), "data", {"url", "sha256", "max_unpacked_mb", "layout", "val_every",
                                                "val_fraction", "split_seed", "class_names"})
    if not isinstance(data.get("url"), str) or not data.get("url"):
        c.bad("data.url", f"must be a URL, an archive path or a folder path, got {data.get('url')!r}")
    sha = data.get("sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and
                                all(ch in "0123456789abcdefABCDEF" for ch in sha)):
        c.bad("data.sha256", f"must be null or 64 hex digits, got {sha!r}")
    c.number(data, "data", "max_unpacked_mb", low=0, low_open=True)
    c.choice(data, "data", "layout", LAYOUTS)
    c.number(data, "data", "val_every", kind=int, low=2)
    c.number(data, "data", "val_fraction", low=0, high=1, low_open=True, high_open=True)
    c.number(data, "data", "split_seed", kind=int)
    if data.get("class_names") is not None and not isinstance(data["class_names"], str):
        c.bad("data.class_names", f"must be null or the path of a JSON file, got {data['class_names']!r}")

    model = c.section(top.get("model"), "model", {"arch"})
    arch = model.get("arch")
    arch_known = False
    if not isinstance(arch, str):
        c.bad("model.arch", f"must be a backbone name, got {arch!r}")
    else:
        # imported late: keeps torch out of the data stages' start-up
        from stages.backbones import known_archs

        known = known_archs()
        arch_known = arch in known
        if not arch_known:
            close = difflib.get_close_matches(arch, known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            c.bad("model.arch", f"unknown backbone {arch!r} ({hint}known: {', '.join(known)})")

    train = c.section(top.get("train"), "train", TRAIN_KEYS)
    _check_train(c, train, "train", partial=False)

    modes = top.get("modes")
    if not isinstance(modes, dict) or not modes:
        c.bad("modes", "must map at least one mode name to its settings")
        modes = {}
    for name, row in modes.items():
        if not isinstance(name, str) or not MODE_NAME.fullmatch(name):
            c.bad(f"modes.{name}", "a mode name must be letters, digits, _, - or . (it names the stage "
                                   "train@<mode> and its files)")
        _check_mode(c, str(name), row, train)
    if top.get("mode") not in modes:
        c.bad("mode", f"unknown mode {top.get('mode')!r} (known: {', '.join(map(str, modes))})")
    if arch_known:
        _check_image_sizes(c, arch)

    if c.problems:
        raise UserError("\n".join(c.problems) if len(c.problems) == 1 else
                        f"{len(c.problems)} problems in params.yaml:\n" + "\n".join(c.problems))
    return params


def load(path: str | Path = PARAMS_FILE) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: missing (run from the project root)")
    try:
        params = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return check(params)


def mode_settings(params: dict, mode: str) -> dict:
    """The complete settings of one mode: the shared `train` defaults overlaid with the mode's row.

    The result also lists the mode's phases: a head-only warm-up (when head_epochs > 0), then the
    phase that trains what `trainable` names. One loop runs any list of phases."""
    modes = params["modes"]
    if mode not in modes:
        raise UserError(f"unknown mode {mode!r} (known: {', '.join(modes)})")
    row = modes[mode]
    settings = copy.deepcopy(params["train"])
    for key, value in row.items():
        if key == "augment":
            settings["augment"].update(value)
        else:
            settings[key] = copy.deepcopy(value)
    settings.setdefault("top_blocks", 0)
    settings.setdefault("head_epochs", 0)
    settings.setdefault("head_lr", settings["lr"])
    settings.setdefault("backbone_lr_scale", 1.0)
    settings["mode"] = mode
    settings["arch"] = params["model"]["arch"]
    phases = []
    if settings["head_epochs"]:
        phases.append({"trainable": "head", "epochs": settings["head_epochs"], "lr": settings["head_lr"]})
    phases.append({"trainable": settings["trainable"], "epochs": settings["epochs"], "lr": settings["lr"]})
    settings["phases"] = phases
    return settings
