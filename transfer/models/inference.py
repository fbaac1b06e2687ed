"""Classifying image files with a trained model (a .pt checkpoint or the exported ONNX file): the
images a user names, and their most likely classes. torch is imported only when classifying, so
that `predict --help` and mistakes in the paths answer at once."""
from __future__ import annotations

from pathlib import Path

from transfer.core.errors import UserError, printable
from transfer.core.files import what_is

# Folders are searched for these; a file named on the command line is tried whatever its name.
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
BATCH_SIZE = 32


def image_files(paths: list[str]) -> list[Path]:
    """The files named, and the image files under the folders named (recursively, sorted)."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            # Hidden files are skipped: archives made on macOS carry "._name.jpg" resource forks.
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise UserError(f"{printable(path)}: no image files in this folder "
                                f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            what = what_is(path)
            wanted = "" if what == "no such file or folder" else ", not an image file or a folder"
            raise UserError(f"{printable(path)}: {what}{wanted}")
    return files


def classify(model, meta: dict, files: list[Path], top_k: int, min_confidence: float | None = None) -> list[dict]:
    """For each file {"path", "top": [{"class", "probability"}, ...], "unsure"} or {"path", "error"}: the
    calibrated probabilities (a checkpoint's logits divided by its temperature; an ONNX graph divides them
    itself), unsure when the top one is below `min_confidence` (None: never)."""
    import torch

    from transfer.data.decode import UnreadableImage, open_rgb
    from transfer.data.transforms import eval_transform

    transform = eval_transform(meta["preprocess"])
    names = meta["class_names"]
    results: list[dict] = []
    for start in range(0, len(files), BATCH_SIZE):
        batch = []
        tensors = []
        for path in files[start:start + BATCH_SIZE]:
            result = {"path": str(path)}
            try:
                tensors.append(transform(open_rgb(path)))
                batch.append(result)
            except (UnreadableImage, OSError) as err:
                result["error"] = f"unreadable image ({err})"
            results.append(result)
        if not tensors:
            continue
        if hasattr(model, "probabilities"):  # an ONNX file through onnxruntime (transfer.models.onnx_model)
            probs = model.probabilities(torch.stack(tensors))
        else:
            with torch.inference_mode():
                probs = torch.softmax(model(torch.stack(tensors)).float() / meta.get("temperature", 1.0), dim=1)
        values, indices = probs.topk(top_k, dim=1)
        for result, row_values, row_indices in zip(batch, values.tolist(), indices.tolist()):
            result["top"] = [{"class": names[i], "probability": round(p, 4)}
                             for p, i in zip(row_values, row_indices)]
            result["unsure"] = min_confidence is not None and row_values[0] < min_confidence
    return results
