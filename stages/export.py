"""Stage export: publish the model of the mode named by params `mode`.

Writes models/model.pt (a byte copy of models/<mode>.pt), results/headline.json (that mode's headline
metrics) and plots/model/val_predictions.png (the model's predictions on the first val images of each
class). It reads only that mode's files, so switching `mode` re-trains nothing."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from stages import params as params_module
from stages.backbones import load_checkpoint
from stages.common import (
    UserError,
    atomic_path,
    log,
    read_json,
    run_main,
    save_figure,
    write_json,
)
from stages.datasets import RAW_DIR, eval_transform, read_classes, read_split
from stages.images import UnreadableImage, open_rgb
from stages.plotting import RIGHT_COLOR, WRONG_COLOR, image_grid

MODEL_FILE = Path("models/model.pt")
HEADLINE_FILE = Path("results/headline.json")
PLOTS_DIR = Path("plots/model")
HEADLINE_KEYS = ("accuracy", "macro_f1", "balanced_accuracy")
GRID_IMAGES = 16


def round_robin(labels: list[int], num_classes: int, count: int) -> list[int]:
    """Indices of the first rows of each class taken in turn (class 0, 1, ..., 0, 1, ...), up to `count`.

    Deterministic (file order of the split) and shows every class before repeating one."""
    per_class: list[list[int]] = [[] for _ in range(num_classes)]
    for index, label in enumerate(labels):
        per_class[label].append(index)
    picked: list[int] = []
    depth = 0
    while len(picked) < count and any(depth < len(rows) for rows in per_class):
        picked += [rows[depth] for rows in per_class if depth < len(rows)][:count - len(picked)]
        depth += 1
    return picked


def prediction_grid(model, meta: dict, mode: str):
    """The figure of the model's predictions on up to GRID_IMAGES val images, right green, wrong red."""
    folders = [c["folder"] for c in read_classes()]
    if folders != list(meta["classes"]):
        raise UserError(f"models/{mode}.pt was trained on other classes than data/split/classes.json lists; "
                        "re-run the pipeline (dvc repro)")
    val = read_split("val")
    if any(not 0 <= label < len(folders) for label in val.labels):
        raise UserError("data/split/val.csv: a label outside the classes of data/split/classes.json; "
                        "re-run the split stage (dvc repro)")
    picks = round_robin(val.labels, len(folders), GRID_IMAGES)
    if not picks:
        raise UserError("data/split/val.csv: no val images to show")
    images = []
    for i in picks:
        path = RAW_DIR / val.paths[i]
        try:
            images.append(open_rgb(path))
        except (UnreadableImage, FileNotFoundError) as err:
            raise UserError(f"{path}: cannot read this val image ({err}); re-run the pipeline (dvc repro)") from None
    transform = eval_transform(meta["preprocess"])
    with torch.inference_mode():
        probs = torch.softmax(model(torch.stack([transform(img) for img in images])).float(), dim=1)
    names = meta["class_names"]
    captions, colors, right = [], [], 0
    for i, p in zip(picks, probs):
        predicted, actual = int(p.argmax()), val.labels[i]
        right += predicted == actual
        captions.append(f"pred: {names[predicted]} ({p[predicted]:.2f})\ntrue: {names[actual]}")
        colors.append(RIGHT_COLOR if predicted == actual else WRONG_COLOR)
    return image_grid(images, captions, colors, columns=4,
                      title=f"{mode} ({meta['arch']}): {right} of {len(picks)} val images right")


@run_main
def main() -> None:
    params = params_module.load()
    mode = params["mode"]
    source = Path("models") / f"{mode}.pt"
    metrics = read_json(Path("metrics") / f"{mode}.json")
    missing = [key for key in HEADLINE_KEYS if key not in metrics]
    if missing:
        raise UserError(f"metrics/{mode}.json: lacks {', '.join(missing)}; re-run evaluate@{mode} (dvc repro)")

    model, meta = load_checkpoint(source, device="cpu")  # also proves the file is a usable checkpoint
    figure = prediction_grid(model, meta, mode)
    headline = {"mode": mode, "arch": metrics.get("arch", meta["arch"]),
                **{key: metrics[key] for key in HEADLINE_KEYS}}

    with atomic_path(PLOTS_DIR) as plots:  # the whole folder: no stale figure of an earlier mode
        plots.mkdir()
        save_figure(figure, plots / "val_predictions.png")
    write_json(HEADLINE_FILE, headline)
    # A byte copy, not a re-save: DVC stores identical files once, so the export costs no cache space.
    with atomic_path(MODEL_FILE) as tmp:
        shutil.copyfile(source, tmp)
    log(f"export: {mode} -> {MODEL_FILE} "
        f"(val accuracy {headline['accuracy']:.4f}, macro F1 {headline['macro_f1']:.4f})")


if __name__ == "__main__":
    main()
