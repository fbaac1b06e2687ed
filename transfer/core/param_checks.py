"""The checks of params.yaml's values: each problem is one line naming the key, all collected at once."""
from __future__ import annotations

import difflib
import math
import os
import re
import urllib.parse
from typing import Any

from transfer.core.files import system_folder, what_is
from transfer.core.settings import (
    AUDIT_KEYS,
    AUGMENT_KEYS,
    COMPARE_KEYS,
    DATA_KEYS,
    EXPORT_KEYS,
    MODE_KEYS,
    PACK_KEYS,
    PHASE_KEYS,
    PHASE_SHORTHAND,
    TRAIN_KEYS,
)

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("cosine", "step", "onecycle", "none")
LAYOUTS = ("auto", "imagefolder", "prefix", "random")
INFERENCE_DTYPES = ("auto", "float32", "bfloat16")
STOP_ON = ("val_loss", "val_acc")  # what early stopping watches
CLASS_WEIGHTS = ("none", "balanced")
TRAINABLE = ("head", "top", "all")
MIN_IMAGE_SIZE = 32  # every supported backbone downsamples 32x
# A 4096 px square is 50 MB of float32 RGB per image, 1.6 GB a batch of 32 before any activation: beyond
# what a GPU trains on, and any model file's or params' size above it is a mistake (or an attack).
MAX_IMAGE_SIZE = 4096
# Processes on one machine: beyond the cores (or GPUs) of the largest one, each more only costs memory.
MAX_WORKERS = 256
MAX_NPROC = 256
MAX_SEED = 2**32 - 1  # seeds are combined with the epoch number into a 64-bit torch seed
# A mode names the DVC stages train@<mode> and evaluate@<mode> and the files models/modes/<mode>.pt and
# metrics/<mode>.json: no dots (DVC stage names), and not the names of the pipeline's own files.
MODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
RESERVED_MODE_NAMES = {"model", "data"}  # models/model.pt is the exported model, metrics/data.json split's

# torchvision's InterpolationMode values (checked here without importing torchvision)
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")
ENCODINGS = ("png", "jpeg")
# compare.cost: what "cheapest" means among the tied candidates (transfer.evaluation.choice reads it)
COMPARE_COSTS = ("auto", "train_seconds", "latency_ms", "params")


class Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.image_sizes: list[tuple[str, int]] = []  # (key, size): checked against the backbone

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
        if name not in node or (node[name] is None and optional):
            if not optional:
                self.bad(f"{key}.{name}", "missing")
            return
        value = node[name]
        if not _is_number(value, kind):
            self.bad(f"{key}.{name}", f"must be {'a whole number' if kind is int else 'a number'}, got {value!r}")
        elif not math.isfinite(value):
            self.bad(f"{key}.{name}", f"must be a finite number, got {value!r}")
        elif low is not None and (value <= low if low_open else value < low):
            self.bad(f"{key}.{name}", f"must be {'>' if low_open else '>='} {low}, got {value!r}")
        elif high is not None and (value >= high if high_open else value > high):
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

    def image_size(self, node: dict, key: str, name: str, why: str = "") -> None:
        size = node.get(name)
        if size is not None and (not _is_number(size, int) or size < MIN_IMAGE_SIZE):
            self.bad(f"{key}.{name}", f"must be null or a whole number >= {MIN_IMAGE_SIZE}{why}, got {size!r}")
        elif size is not None and size > MAX_IMAGE_SIZE:
            self.bad(f"{key}.{name}", f"must be at most {MAX_IMAGE_SIZE} px (a batch of larger images is beyond "
                                      f"any GPU), got {size!r}")
        elif size is not None:
            self.image_sizes.append((f"{key}.{name}", size))


def _is_number(value, kind) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind is int else isinstance(value, (int, float))


def check_data(c: Checker, data: Any) -> None:
    data = c.section(data, "data", DATA_KEYS)
    if not isinstance(data.get("url"), str) or not data.get("url"):
        c.bad("data.url", f"must be a URL, an archive path or a folder path, got {data.get('url')!r}")
    else:
        check_url(c, data["url"])
    sha = data.get("sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and
                                all(ch in "0123456789abcdefABCDEF" for ch in sha)):
        c.bad("data.sha256", f"must be null or 64 hex digits, got {sha!r}")
    c.number(data, "data", "max_unpacked_mb", low=0, low_open=True)
    c.choice(data, "data", "layout", LAYOUTS)
    c.number(data, "data", "val_every", kind=int, low=2)
    c.number(data, "data", "val_fraction", low=0, high=1, low_open=True, high_open=True)
    c.number(data, "data", "test_fraction", low=0, high=1, high_open=True)
    val = data.get("val_fraction")
    test = data.get("test_fraction")
    if _is_number(val, float) and _is_number(test, float) and 0 < val < 1 and 0 <= test < 1 <= val + test:
        c.bad("data.test_fraction", f"val_fraction + test_fraction must be < 1 (some images must train), "
                                    f"got {val} + {test}")
    c.number(data, "data", "split_seed", kind=int)
    c.boolean(data, "data", "group_duplicates")
    if data.get("class_names") is not None and not isinstance(data["class_names"], str):
        c.bad("data.class_names", f"must be null or the path of a JSON file, got {data['class_names']!r}")
    if "exclude" in data:
        _check_exclude(c, data["exclude"])
    else:
        c.bad("data.exclude", "missing")
    _check_watch(c, data.get("url"), data.get("watch"))


def check_url(c: Checker, url: str) -> None:
    """An http(s) URL urllib can read, or a local archive or folder outside the system's folders."""
    try:
        scheme = urllib.parse.urlsplit(url).scheme
    except ValueError as err:  # http://[::1
        c.bad("data.url", f"not a valid URL ({err}), got {url!r}")
        return
    if scheme in ("http", "https"):
        return
    if scheme and not os.path.lexists(url):
        c.bad("data.url", f"unsupported scheme {scheme}: (use http(s)://, an archive path or a folder), got {url!r}")
    else:
        check_local(c, "data.url", url)


def check_local(c: Checker, key: str, path: str) -> None:
    """A local path the download stage reads or DVC hashes: never a system folder or pseudo-filesystem
    (/proc/self filled the disk), and a regular file or folder where it exists (a FIFO or /dev/zero
    hangs `dvc status`); a missing path is the download stage's (or DVC's) to report."""
    root = system_folder(path)
    if root is not None:
        c.bad(key, f"{path!r} lies in {root}, a system or private folder, not a dataset's")
        return
    kind = what_is(os.path.expanduser(path))
    if kind not in ("a folder", "a regular file", "no such file or folder"):
        c.bad(key, f"{path!r} is {kind}; name a regular file or a folder")


def _check_watch(c: Checker, url: Any, watch: Any) -> None:
    """data.watch: what download depends on in dvc.yaml, hashed by DVC (download warns when a local
    data.url is not it)."""
    if not isinstance(watch, str) or not watch:
        c.bad("data.watch", f"must be a path: data.url when that is local, else any file of the project, got {watch!r}")
    else:
        check_local(c, "data.watch", watch)


def _check_exclude(c: Checker, exclude: Any) -> None:
    """data.exclude: paths relative to data/raw, as data/split/*.csv and results/label_issues.csv give them."""
    if not isinstance(exclude, list):
        c.bad("data.exclude", f"must be a list of paths relative to data/raw ([] for none), got {exclude!r}")
        return
    for path in exclude:
        if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
            c.bad("data.exclude", f"each entry must be a path relative to data/raw (as in data/split/train.csv), "
                                  f"got {path!r}")


def check_audit(c: Checker, audit: Any) -> None:
    audit = c.section(audit, "audit", AUDIT_KEYS)
    if not isinstance(audit.get("arch"), str) or not audit.get("arch"):
        c.bad("audit.arch", f"must be a backbone name, got {audit.get('arch')!r}")
    if "device" in audit:
        _check_device(c, audit["device"], "audit.device")
    else:
        c.bad("audit.device", "missing")
    if "image_size" not in audit:
        c.bad("audit.image_size", "missing")
    c.image_size(audit, "audit", "image_size")
    c.number(audit, "audit", "folds", kind=int, low=2)
    c.number(audit, "audit", "seed", kind=int, low=0, high=MAX_SEED)
    c.number(audit, "audit", "suspects_shown", kind=int, low=1)
    c.number(audit, "audit", "duplicate_similarity", low=-1, high=1)
    c.number(audit, "audit", "outlier_neighbors", kind=int, low=1)
    c.number(audit, "audit", "outlier_mads", low=0, low_open=True)


def check_export(c: Checker, export: Any) -> None:
    export = c.section(export, "export", EXPORT_KEYS)
    c.number(export, "export", "calibration_images", kind=int, low=0)
    if "target_accuracy" not in export:
        c.bad("export.target_accuracy", "missing (null: off)")
    c.number(export, "export", "target_accuracy", low=0, high=1, low_open=True, optional=True)


def check_compare(c: Checker, compare: Any) -> None:
    compare = c.section(compare, "compare", COMPARE_KEYS)
    c.choice(compare, "compare", "cost", COMPARE_COSTS)


def check_pack(c: Checker, pack: Any) -> None:
    pack = c.section(pack, "pack", PACK_KEYS)
    c.number(pack, "pack", "short_side", kind=int, low=MIN_IMAGE_SIZE, high=MAX_IMAGE_SIZE)
    c.choice(pack, "pack", "interpolation", INTERPOLATIONS)
    c.choice(pack, "pack", "encoding", ENCODINGS)
    c.number(pack, "pack", "jpeg_quality", kind=int, low=1, high=100)
    c.boolean(pack, "pack", "jpeg_draft")
    c.number(pack, "pack", "shard_mb", low=0, low_open=True)


def check_train(c: Checker, node: dict, key: str, partial: bool) -> None:
    """Check a full `train` section, or (partial=True) the overrides a mode row or phase holds."""
    opt = partial
    c.number(node, key, "seed", kind=int, low=0, high=MAX_SEED, optional=opt)
    if "device" in node or not partial:
        _check_device(c, node.get("device"), f"{key}.device")
    for name in ("epochs", "batch_size", "cached_views"):
        c.number(node, key, name, kind=int, low=1, optional=opt)
    c.number(node, key, "nproc", kind=int, low=1, high=MAX_NPROC, optional=opt)
    c.choice(node, key, "optimizer", OPTIMIZERS, optional=opt)
    c.number(node, key, "lr", low=0, low_open=True, optional=opt)
    c.number(node, key, "momentum", low=0, high=1, high_open=True, optional=opt)
    c.number(node, key, "weight_decay", low=0, optional=opt)
    c.number(node, key, "memory_budget_mb", low=0, low_open=True, optional=opt)
    c.choice(node, key, "scheduler", SCHEDULERS, optional=opt)
    c.choice(node, key, "inference_dtype", INFERENCE_DTYPES, optional=opt)
    c.number(node, key, "patience", kind=int, low=1, optional=True)
    if "patience" not in node and not partial:
        c.bad(f"{key}.patience", "missing")
    c.choice(node, key, "stop_on", STOP_ON, optional=opt)
    c.choice(node, key, "class_weights", CLASS_WEIGHTS, optional=opt)
    c.number(node, key, "warmup_epochs", low=0, optional=opt)
    c.number(node, key, "step_size", kind=int, low=1, optional=opt)
    c.number(node, key, "gamma", low=0, low_open=True, high=1, optional=opt)
    c.number(node, key, "label_smoothing", low=0, high=1, high_open=True, optional=opt)
    c.number(node, key, "layer_decay", low=0, high=1, low_open=True, optional=True)  # null: off
    c.number(node, key, "clip_grad_norm", low=0, low_open=True, optional=True)  # null: off
    if "image_size" in node or not partial:
        c.image_size(node, key, "image_size", " (the backbones downsample 32x)")
    c.boolean(node, key, "keep_bn_stats", optional=opt)
    if "workers" in node or not partial:
        workers = node.get("workers")
        if workers != "auto" and not (_is_number(workers, int) and 0 <= workers <= MAX_WORKERS):
            c.bad(f"{key}.workers", f"must be auto or a whole number from 0 to {MAX_WORKERS}, got {workers!r}")
    if "augment" in node or not partial:
        _check_augment(c, node.get("augment"), f"{key}.augment", partial)


def _check_device(c: Checker, device: Any, key: str) -> None:
    if not isinstance(device, str) or not (device in ("auto", "cpu", "mps", "cuda") or
                                           (device.startswith("cuda:") and device[5:].isdigit())):
        c.bad(key, f"must be auto, cpu, cuda, cuda:N or mps, got {device!r}")


def _check_augment(c: Checker, node: Any, key: str, partial: bool) -> None:
    aug = c.section(node, key, AUGMENT_KEYS)
    for name in ("hflip", "vflip", "grayscale"):
        c.number(aug, key, name, low=0, high=1, optional=partial)
    c.number(aug, key, "rotation", low=0, high=180, optional=partial)
    c.number(aug, key, "color_jitter", low=0, high=1, optional=partial)
    if "crop_scale" in aug or not partial:
        scale = aug.get("crop_scale")
        if scale is not None and not (isinstance(scale, list) and len(scale) == 2 and
                                      all(_is_number(s, float) for s in scale) and 0 < scale[0] <= scale[1] <= 1):
            c.bad(f"{key}.crop_scale", f"must be null or [low, high] with 0 < low <= high <= 1, got {scale!r}")
    c.image_size(aug, key, "crop_size")  # optional everywhere: null, the image size, when left out


def check_mode(c: Checker, name: Any, row: Any, train: dict) -> None:
    key = f"modes.{name}"
    if not isinstance(name, str) or not MODE_NAME.fullmatch(name) or name in RESERVED_MODE_NAMES:
        c.bad(key, "a mode name must be letters, digits, _ or -, and not model or data (it names the stages "
                   "train@<mode> and evaluate@<mode> and their files)")
    row = c.section(row, key, MODE_KEYS | TRAIN_KEYS)
    if "arch" in row and (not isinstance(row["arch"], str) or not row["arch"]):
        c.bad(f"{key}.arch", f"must be a backbone name (any model.arch takes), got {row['arch']!r}")
    c.boolean(row, key, "pretrained")
    c.number(row, key, "backbone_lr_scale", low=0, low_open=True, optional=True)
    if row.get("keep_bn_stats", train.get("keep_bn_stats")) is True and row.get("pretrained") is False:
        c.bad(f"{key}.keep_bn_stats", "a randomly initialised network has no BatchNorm statistics worth keeping; "
                                      "use pretrained: true or keep_bn_stats: false")
    if "phases" in row:
        _check_phases(c, key, row)
    else:
        _check_trainable(c, key, row, row.get("pretrained"))
        c.number(row, key, "head_epochs", kind=int, low=0, optional=True)
        c.number(row, key, "head_lr", low=0, low_open=True, optional=True)
        if row.get("head_epochs") and row.get("pretrained") is False:
            c.bad(f"{key}.head_epochs", "a head-only phase needs a pretrained backbone (pretrained: true)")
    check_train(c, {k: v for k, v in row.items() if k in TRAIN_KEYS}, key, partial=True)


def _check_trainable(c: Checker, key: str, node: dict, pretrained) -> None:
    c.choice(node, key, "trainable", TRAINABLE)
    if node.get("trainable") == "top":
        c.number(node, key, "top_blocks", kind=int, low=1)
    elif "top_blocks" in node:
        c.bad(f"{key}.top_blocks", "only means something with trainable: top")
    if node.get("trainable") in ("head", "top") and pretrained is False:
        c.bad(f"{key}.trainable", "freezing a randomly initialised backbone trains nothing useful; "
                                  "use pretrained: true or trainable: all")


def _check_phases(c: Checker, key: str, row: dict) -> None:
    phases = row["phases"]
    if not isinstance(phases, list) or not phases:
        c.bad(f"{key}.phases", f"must be a list of phases (each with trainable and epochs), got {phases!r}")
        return
    for name in PHASE_SHORTHAND:
        if name in row:
            c.bad(f"{key}.{name}", "set it in each of the row's phases instead (a row with phases: gives what "
                                   "trains and for how long phase by phase)")
    for i, phase in enumerate(phases):
        pkey = f"{key}.phases[{i}]"
        phase = c.section(phase, pkey, PHASE_KEYS)
        _check_trainable(c, pkey, phase, row.get("pretrained"))
        c.number(phase, pkey, "epochs", kind=int, low=1)
        c.number(phase, pkey, "backbone_lr_scale", low=0, low_open=True, optional=True)
        check_train(c, {k: v for k, v in phase.items() if k in TRAIN_KEYS}, pkey, partial=True)
