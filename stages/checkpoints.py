"""Model files: what a trained mode is saved as, and loading one back without running code from it.

A checkpoint is a dict of plain data (strings, numbers, lists, dicts) and tensors, saved with
torch.save and loaded with weights_only=True: a file that holds any other Python object is refused
before any of it runs."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from stages.backbones import TransferNet, build_model
from stages.common import UserError, atomic_path, first_line
from stages.folding import fold_batchnorm

FORMAT = "transfer-pipeline checkpoint 1"
# What inference needs besides the weights; evaluate and export also read the training record.
REQUIRED = {"arch": str, "classes": list, "class_names": list, "preprocess": dict}
PREPROCESS_KEYS = ("image_size", "resize_size", "mean", "std", "interpolation")


def save_checkpoint(path: str | Path, model: TransferNet, meta: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **meta, "state_dict": model.state_dict()}, tmp)


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's contents, checked to be one of this pipeline's; one line if not."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such model; run `dvc repro` (or `dvc pull`) first")
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = ("it holds Python objects besides tensors and plain data, which are never loaded"
                  if "weights_only" in str(err).lower() or "weights only" in str(err).lower()
                  else f"unreadable: {first_line(err)}")
        raise UserError(f"{path}: not a model checkpoint of this pipeline ({reason})") from None
    except Exception as err:  # noqa: BLE001 - a truncated zip, a text file, ...: the same user-facing problem
        raise UserError(f"{path}: not a model checkpoint of this pipeline ({type(err).__name__}: "
                        f"{first_line(err)})") from None
    problems = format_problems(contents)
    if problems:
        raise UserError(f"{path}: not a model checkpoint of this pipeline ({problems})")
    return contents


def check_belongs(meta: dict, path: str | Path, mode: str, classes: list[dict]) -> None:
    """Refuse a model file of another mode, or one trained on other classes than data/split's (another
    project's, or another dataset's): evaluate would report its numbers as this mode's."""
    if meta.get("mode") != mode:
        raise UserError(f"{path}: a model of mode {meta.get('mode')!r}, not {mode!r}; re-run dvc repro train@{mode}")
    folders = [c["folder"] for c in classes]
    if meta["classes"] != folders:
        def shown(names):
            return ", ".join(map(str, names[:4])) + (", ..." if len(names) > 4 else "")
        raise UserError(f"{path}: trained on the classes {shown(meta['classes'])}, but data/split has "
                        f"{shown(folders)}; re-run dvc repro train@{mode}")


def format_problems(contents) -> str:
    if not isinstance(contents, dict) or contents.get("format") != FORMAT:
        return "no pipeline checkpoint format tag; train it again with this version (dvc repro)"
    wrong = [key for key, kind in REQUIRED.items() if not isinstance(contents.get(key), kind)]
    wrong += [f"preprocess.{key}" for key in PREPROCESS_KEYS
              if isinstance(contents.get("preprocess"), dict) and key not in contents["preprocess"]]
    if not isinstance(contents.get("state_dict"), dict):
        wrong.append("state_dict")
    return f"missing or malformed: {', '.join(wrong)}" if wrong else ""


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[TransferNet, dict]:
    """A checkpoint back as an eval-mode model and its meta (arch, classes, preprocess, ...)."""
    meta = read_checkpoint(path)
    try:
        model, _ = build_model(meta["arch"], len(meta["classes"]), pretrained=False)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    try:
        model.load_state_dict(meta.pop("state_dict"))
    except RuntimeError as err:
        raise UserError(f"{path}: its weights do not fit {meta['arch']} with {len(meta['classes'])} classes "
                        f"({first_line(err)})") from None
    model.to(device).eval()
    fold_batchnorm(model, meta["preprocess"]["image_size"])  # inference: every BatchNorm on running statistics
    return model, meta
