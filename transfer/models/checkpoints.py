"""Model files: what a trained mode is saved as, and loading one back without running code from it.

A checkpoint is a dict of plain data (strings, numbers, lists, dicts) and tensors, saved with
torch.save and loaded with weights_only=True: a file that holds any other Python object is refused
before any of it runs."""
from __future__ import annotations

import math
import pickle
import re
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from transfer.core.devices import peak_memory_mib
from transfer.core.errors import UserError, cut, first_line, name_count, printable, shown
from transfer.core.files import atomic_path
from transfer.core.param_checks import INTERPOLATIONS, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from transfer.core.settings import ModeSettings
from transfer.models.backbones import TransferNet, build_model
from transfer.models.folding import fold_batchnorm

FORMAT = "transfer-pipeline checkpoint 1"
# What inference needs besides the weights; evaluate and export also read the training record.
REQUIRED = {"arch": str, "classes": list, "class_names": list, "preprocess": dict}
# Every field save_checkpoint writes (checkpoint_meta below, stages/train.py's and export's).
KNOWN_KEYS = {"format", "state_dict", "mode", "world_size", *REQUIRED, "best_epoch", "val_accuracy", "epochs",
              "train_seconds", "trainable_params", "total_params", "history", "settings", "stopped_epoch",
              "peak_memory_mib", "temperature", "min_confidence"}
MAX_RECORD_BYTES = 64 * 2**20  # the pickled fields besides the tensors' bytes: a few KB, a long history ~1 MB
# torch.save's format (torch >= 1.6): a zip archive, its first member at the start of the file (what
# torch.load looks at to tell it from the older format), each tensor's bytes a member <folder>/data/<key>.
ZIP_MAGIC = b"PK\x03\x04"
STORAGE_MEMBER = re.compile(r"[^/]*/data/\d+")
PREPROCESS_KEYS = ("image_size", "resize_size", "mean", "std", "interpolation")
CHANNELS = 3  # RGB: one mean and one std each
MAX_RESIZE_SIZE = 2 * MAX_IMAGE_SIZE  # the largest crop at a crop_pct of 0.5 (the backbones' are 0.875 to 1)
# What export adds to the published model (absent from a mode's own checkpoint): the temperature its
# logits are divided by before the softmax, and the calibrated confidence below which predict says
# "unsure" (None: never).
CALIBRATION_DEFAULTS = {"temperature": 1.0, "min_confidence": None}
# What torch's weights-only loader says of a pickle that would build or call Python objects; any other
# complaint of it is about bytes that are no pickle (or a damaged one).
PYTHON_OBJECTS = re.compile(r"GLOBAL \S+|unrecognized function|Can only (create|build)")


def save_checkpoint(path: str | Path, model: TransferNet, meta: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **meta, "state_dict": model.state_dict()}, tmp)


def save_calibrated(source: str | Path, target: str | Path, calibration: dict) -> None:
    """The checkpoint at `source` saved at `target` with the calibration fields (CALIBRATION_DEFAULTS'
    keys) set: the published model."""
    contents = read_checkpoint(source)
    contents.update({key: calibration[key] for key in CALIBRATION_DEFAULTS})
    torch.save(contents, target)


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's contents, checked to be one of this pipeline's; one line if not. No tensor's
    bytes are read here: the file is mapped, and refused on its sizes alone where they are too large."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such model; run `dvc repro` (or `dvc pull`) first")
    check_archive(path)
    try:  # mmap: a tensor's bytes are read only where it is used, after the checks below
        contents = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        reason = ("it holds Python objects besides tensors and plain data, which are never loaded"
                  if PYTHON_OBJECTS.search(str(err)) else f"not a torch file, or a damaged one: {unpickler_said(err)}")
        raise UserError(f"{path}: not a model checkpoint of this pipeline ({reason})") from None
    except Exception as err:  # noqa: BLE001 - a truncated zip, a text file, ...: the same user-facing problem
        raise UserError(f"{path}: not a model checkpoint of this pipeline (not a torch file, or a damaged one: "
                        f"{type(err).__name__}: {cut(first_line(err))})") from None
    problems = format_problems(contents) or storage_problems(contents)
    if problems:
        raise UserError(f"{path}: not a model checkpoint of this pipeline ({problems})")
    return contents


def check_archive(path: Path) -> None:
    """Refuse, from the zip's directory of members alone, a file that torch.load would read the tensors'
    bytes of while loading it: torch's older, non-zip format (read whole, mmap or not), a byte order
    other than this machine's (every tensor byte-swapped as it loads); and one whose records besides
    the tensors' bytes (the pickled fields, which torch.load reads whole) are larger than any this
    pipeline writes."""
    with path.open("rb") as file:
        zipped = file.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    if not zipped or not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a model checkpoint of this pipeline (not a torch file, or a damaged one: "
                        "not the zip archive torch.save writes; torch's older format is not read)")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            record = sum(info.file_size for info in members if not STORAGE_MEMBER.fullmatch(info.filename))
            orders = [] if record > MAX_RECORD_BYTES else [archive.read(info) for info in members
                                                           if info.filename.endswith("/byteorder")]
    except Exception as err:  # noqa: BLE001 - a damaged directory or member: what zipfile raises varies
        raise UserError(f"{path}: not a model checkpoint of this pipeline (not a torch file, or a damaged one: "
                        f"{type(err).__name__}: {cut(first_line(err))})") from None
    if record > MAX_RECORD_BYTES:
        raise UserError(f"{path}: not a model checkpoint of this pipeline (its record takes {record} bytes; "
                        f"this pipeline's take far less than {MAX_RECORD_BYTES})")
    native = sys.byteorder.encode()
    if any(order != native for order in orders) or (not orders and native != b"little"):  # torch's default
        raise UserError(f"{path}: not a model checkpoint of this pipeline (its tensors are stored in another byte "
                        f"order than this machine's ({sys.byteorder}-endian); save it again on this machine)")


def tensors_in(contents) -> Iterator[torch.Tensor]:
    """Every tensor in the loaded contents, at any depth (walked without recursion: a deep list is no
    crash)."""
    pending = [contents]
    while pending:
        item = pending.pop()
        if isinstance(item, torch.Tensor):
            yield item
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            pending.extend(item)


def storage_problems(contents: dict) -> str:
    """Bytes in the file's tensors beyond what the state_dict's shapes need (a small view of a 400 MB
    storage, a large tensor in another field): judged on the sizes the mapped file declares, before
    anything reads a tensor, so that no later copy or save reads more than the network's own size.
    The shapes themselves are checked against the network's in load_checkpoint."""
    tensors = list(tensors_in(contents))
    if any(tensor.layout != torch.strided for tensor in tensors):
        return "it holds a sparse or other non-dense tensor, which this pipeline never writes"
    needed = sum(tensor.numel() * tensor.element_size() for tensor in contents["state_dict"].values())
    storages = {(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in tensors}
    held = sum(nbytes for _, nbytes in storages)
    if held > needed:
        return (f"its tensors hold {held} bytes, but the shapes of its state_dict need {needed}: "
                "a tensor outside the state_dict, or one stored with more bytes than it shows")
    return ""


def check_belongs(meta: dict, path: str | Path, mode: str, classes: list[dict]) -> None:
    """Refuse a model file of another mode, or one trained on other classes than data/split's (another
    project's, or another dataset's): evaluate would report its numbers as this mode's."""
    if meta.get("mode") != mode:
        raise UserError(f"{path}: a model of mode {meta.get('mode')!r}, not {mode!r}; re-run dvc repro train@{mode}")
    folders = [c["folder"] for c in classes]
    if meta["classes"] != folders:
        def listed(names):
            return ", ".join(map(printable, names[:4])) + (", ..." if len(names) > 4 else "")
        raise UserError(f"{path}: trained on the classes {listed(meta['classes'])}, but data/split has "
                        f"{listed(folders)}; re-run dvc repro train@{mode}")


def unpickler_said(err: pickle.UnpicklingError) -> str:
    """The weights-only unpickler's own complaint, without torch's advice around it (which suggests
    loading the file with weights_only=False)."""
    said = str(err).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in said.splitlines()
             if line.strip() and not line.strip().startswith("Check the documentation")]
    return cut(lines[0]) if lines else type(err).__name__


def format_problems(contents) -> str:
    """What is wrong with a loaded checkpoint, each problem naming its field; "" if nothing."""
    if not isinstance(contents, dict) or contents.get("format") != FORMAT:
        return "no pipeline checkpoint format tag; train it again with this version (dvc repro)"
    wrong = [key for key, kind in REQUIRED.items() if not isinstance(contents.get(key), kind)]
    wrong += [f"preprocess.{key}" for key in PREPROCESS_KEYS
              if isinstance(contents.get("preprocess"), dict) and key not in contents["preprocess"]]
    state = contents.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        wrong.append("state_dict")
    if wrong:
        return f"missing or malformed: {', '.join(wrong)}"
    unknown = sorted(map(str, set(contents) - KNOWN_KEYS))
    if unknown:
        return f"unknown fields: {cut(', '.join(unknown))}"
    return "; ".join(meta_problems(contents))


def meta_problems(meta: dict) -> list[str]:
    """What is wrong with a model file's arch, classes, class_names and preprocess (a checkpoint's, or
    an ONNX file's metadata), each as "field: what"; checked when the file is opened, so that nothing
    fails later on a value no pipeline writes. The count of class names is class_count_problems'."""
    problems = []
    if not isinstance(meta.get("arch"), str) or not meta["arch"]:
        problems.append(f"arch: must be a backbone name, got {shown(meta.get('arch'))}")
    problems += class_problems(meta.get("classes"), meta.get("class_names"))
    problems += calibration_problems(meta)
    pre = meta.get("preprocess")
    if isinstance(pre, dict):
        problems += preprocess_problems(pre)
    else:
        problems.append(f"preprocess: must be a mapping of {', '.join(PREPROCESS_KEYS)}, got {shown(pre)}")
    return problems


def calibration_problems(meta: dict) -> list[str]:
    """temperature (a number above 0) and min_confidence (null, or a number from 0 to 1), where present."""
    problems = []
    temperature = meta.get("temperature", CALIBRATION_DEFAULTS["temperature"])
    if not _number(temperature) or temperature <= 0:
        problems.append(f"temperature: must be a number above 0, got {shown(temperature)}")
    threshold = meta.get("min_confidence")
    if threshold is not None and not (_number(threshold) and 0 <= threshold <= 1):
        problems.append(f"min_confidence: must be null or a number from 0 to 1, got {shown(threshold)}")
    return problems


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def class_problems(classes, class_names) -> list[str]:
    """classes (the class folders, in the order of the model's outputs) and class_names (what each is
    shown as): lists of strings."""
    if not _strings(classes) or not classes:
        return [f"classes: must be a list of class folder names, got {shown(classes)}"]
    if not _strings(class_names):
        return [f"class_names: must be a list of names, got {shown(class_names)}"]
    return []


def class_count_problems(meta: dict) -> list[str]:
    """One class name per class. Checked after the weights where there are weights to check `classes`
    against: a file whose classes do not fit its weights is told as that."""
    if len(meta["class_names"]) != len(meta["classes"]):
        return [f"class_names: {name_count(len(meta['class_names']))} for the {len(meta['classes'])} classes"]
    return []


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers(value, count: int) -> bool:
    return isinstance(value, list) and len(value) == count and all(_number(v) for v in value)


def size_problems(image_size, resize_size) -> list[str]:
    """The crop and the short side resized to before it: bounded as params.yaml's sizes are (a file
    asking for a 10**6 px resize would take all memory), and the resize at least the crop (one below
    it would pad the crop with black: wrong answers, not an error)."""
    if not _whole(image_size) or image_size < MIN_IMAGE_SIZE:
        return [f"preprocess.image_size: must be a whole number >= {MIN_IMAGE_SIZE}, got {shown(image_size)}"]
    if image_size > MAX_IMAGE_SIZE:
        return [f"preprocess.image_size: must be at most {MAX_IMAGE_SIZE}, got {shown(image_size)}"]
    if not _whole(resize_size) or not image_size <= resize_size <= MAX_RESIZE_SIZE:
        return [f"preprocess.resize_size: must be a whole number from image_size ({image_size}) to "
                f"{MAX_RESIZE_SIZE}, got {shown(resize_size)}"]
    return []


def preprocess_problems(pre: dict) -> list[str]:
    """The preprocessing's fields, as eval_transform and fold_batchnorm take them."""
    missing = [key for key in PREPROCESS_KEYS if key not in pre]
    if missing:
        return [f"preprocess.{key}: missing" for key in missing]
    problems = size_problems(pre["image_size"], pre["resize_size"])
    if not _numbers(pre["mean"], CHANNELS):
        problems.append(f"preprocess.mean: must be {CHANNELS} numbers (R, G, B), got {shown(pre['mean'])}")
    if not _numbers(pre["std"], CHANNELS) or min(pre["std"]) <= 0:
        problems.append(f"preprocess.std: must be {CHANNELS} numbers above 0 (R, G, B), got {shown(pre['std'])}")
    if pre["interpolation"] not in INTERPOLATIONS:
        problems.append(f"preprocess.interpolation: must be one of {', '.join(INTERPOLATIONS)}, "
                        f"got {shown(pre['interpolation'])}")
    return problems


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[TransferNet, dict]:
    """A checkpoint back as an eval-mode model and its meta (arch, classes, preprocess, ...)."""
    meta = read_checkpoint(path)
    try:
        model, _ = build_model(meta["arch"], len(meta["classes"]), pretrained=False)
    except UserError as err:  # its words are for params.yaml's model.arch: here the field is the file's arch
        raise UserError(f"{path}: {str(err).removeprefix('model.')}") from None
    state = meta.pop("state_dict")
    problem = shape_problem(state, model.state_dict())  # before load_state_dict copies any tensor
    if not problem:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            problem = first_line(err)
    if problem:
        raise UserError(f"{path}: its weights do not fit {meta['arch']} with {len(meta['classes'])} classes "
                        f"({problem})")
    problems = class_count_problems(meta)
    if problems:
        raise UserError(f"{path}: not a model checkpoint of this pipeline ({'; '.join(problems)})")
    model.to(device).eval()
    fold_batchnorm(model, meta["preprocess"]["image_size"])  # inference: every BatchNorm on running statistics
    return model, meta


def shape_problem(state: dict, expected: dict) -> str:
    """The first tensor of the file whose shape is not the network's, as "key: shape"; "" if none.
    Missing and extra keys are load_state_dict's to tell (it copies no extra one)."""
    for key, tensor in state.items():
        if key in expected and tensor.shape != expected[key].shape:
            found = cut(str(list(tensor.shape)))
            return f"{cut(printable(key))}: {found} in the file, {list(expected[key].shape)} in the network"
    return ""


def checkpoint_meta(mode: str, settings: ModeSettings, classes: list[dict], preprocess: dict, result: Any,
                    total_params: int) -> dict:
    """What models/modes/<mode>.pt holds besides the weights, from a run's settings and its result
    (transfer.training.loop.FitResult): plain data only."""
    return {"arch": settings.arch, "mode": mode, "classes": [c["folder"] for c in classes],
            "class_names": [c["name"] for c in classes], "preprocess": preprocess, "best_epoch": result.best_epoch,
            "val_accuracy": result.best_accuracy, "epochs": len(result.history),
            "train_seconds": result.train_seconds, "trainable_params": result.trainable_params,
            "total_params": total_params, "history": result.history, "settings": settings.as_dict(),
            # early stopping on: the epoch the run ended at (stopped early, or at its last epoch)
            "stopped_epoch": (result.stopped_epoch or result.history[-1]["epoch"]) if settings.patience else None,
            "peak_memory_mib": peak_memory_mib()}
