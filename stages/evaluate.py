"""Stage evaluate@<mode>: metrics/<mode>.json (the headline numbers), results/details/<mode>.json
(per-class scores, confusion matrix, model size), per-image predictions (a DVC confusion plot), a grid
of the misclassified images and one of the first images of each class.

All of them are of the split that reports: test when the dataset has one (val chose the kept epoch,
so its scores are optimistic), else val; `evaluated_on` says which, and with a test set the val
scores stand beside the test ones under `val`."""
from __future__ import annotations

import argparse
import csv
import io

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
from torchvision.transforms.v2.functional import to_pil_image

from transfer.core import params as params_module
from transfer.core import publish
from transfer.core.devices import bf16_inference, inference_batch, memory_format, pick_device, to_device
from transfer.core.files import save_figure, write_json
from transfer.core.paths import errors_png, mode_details, mode_metrics, model_file, predictions_csv, samples_png
from transfer.core.stage import log, run_main
from transfer.data.loaders import Images, StoreImages, eval_batches, read_classes, read_split
from transfer.evaluation import stats
from transfer.models.checkpoints import check_belongs, load_checkpoint

PARAMS = ("train.device", "train.inference_dtype", "modes.{mode}")  # as dvc.yaml's evaluate stage declares them
MAX_ERRORS_SHOWN = 16
SAMPLES_SHOWN = 16


@torch.inference_mode()
def predict_probabilities(model, images: Images, labels: list[int], preprocess: dict,
                          device, bf16: bool = False) -> torch.Tensor:
    fmt = memory_format(device)  # the faster layout here for a one-off pass (see memory_format)
    model.eval().to(memory_format=fmt)
    probs = []
    for x, _ in eval_batches(images, labels, preprocess, inference_batch(device)):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            probs.append(torch.softmax(model(to_device(x, device, fmt)).float(), 1).cpu())
    return torch.cat(probs)


def headline_scores(probs: torch.Tensor, labels: list[int], names: list[str]) -> dict:
    """The scalar scores a reviewer compares between commits (metrics/<mode>.json)."""
    actual = np.array(labels)
    predicted = probs.argmax(1).numpy()
    indices = list(range(len(names)))
    loss = torch.nn.functional.nll_loss(torch.log(probs.clamp_min(1e-12)), torch.tensor(labels)).item()
    scores = {
        "accuracy": float((predicted == actual).mean()),
        "correct": int((predicted == actual).sum()),  # a review reads "correct 146 -> 147" as one image
        "images": len(labels),
        "balanced_accuracy": float(balanced_accuracy_score(actual, predicted)),
        "macro_f1": float(f1_score(actual, predicted, labels=indices, average="macro", zero_division=0)),
        "loss": loss,
    }
    if len(names) > 5:  # top-k only means something with more classes than k
        top5 = probs.topk(5, 1).indices.numpy()
        scores["top5_accuracy"] = float((top5 == actual[:, None]).any(1).mean())
    return scores


def class_scores(probs: torch.Tensor, labels: list[int], names: list[str]) -> dict:
    """Per-class precision, recall, F1 and support, and the confusion matrix (rows: actual)."""
    actual = np.array(labels)
    predicted = probs.argmax(1).numpy()
    indices = list(range(len(names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        actual, predicted, labels=indices, zero_division=0)
    return {
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(names)},
        "confusion_matrix": {"labels": names, "matrix": confusion_matrix(actual, predicted, labels=indices).tolist()},
    }


def intervals(probs: torch.Tensor, labels: list[int], names: list[str]) -> dict:
    """95% intervals of the headline scores: Wilson for accuracy (a count of images), a bootstrap over
    images for balanced accuracy and macro F1."""
    actual, predicted = np.array(labels), probs.argmax(1).numpy()
    macro_f1 = lambda a, p: stats.macro_f1(a, p, classes=len(names))
    return {"accuracy_ci": list(stats.wilson_interval(int((predicted == actual).sum()), len(labels))),
            "balanced_accuracy_ci": list(stats.bootstrap_interval(actual, predicted, stats.balanced_accuracy)),
            "macro_f1_ci": list(stats.bootstrap_interval(actual, predicted, macro_f1))}


def mode_files(mode: str, meta: dict, probs: torch.Tensor, labels: list[int], split: str = "val",
               val_scores: dict | None = None) -> tuple[dict, dict]:
    """(metrics, details) of the reporting `split`: metrics/<mode>.json holds the few numbers `dvc metrics
    diff` shows (and which split they are of); results/details/<mode>.json the rest that compare and
    export read (strings, per class, matrix). `val_scores`: val's headline scores, beside test's."""
    names = meta["class_names"]
    metrics = {**headline_scores(probs, labels, names), "evaluated_on": split, "best_epoch": meta["best_epoch"],
               "train_seconds": round(meta["train_seconds"], 2)}
    if val_scores is not None:
        metrics["val"] = val_scores
    if meta.get("stopped_epoch") is not None:  # early stopping on: the epoch the run ended
        metrics["stopped_epoch"] = meta["stopped_epoch"]
    if meta.get("peak_memory_mib") is not None:  # absent from checkpoints of older runs
        metrics["train_peak_memory_mib"] = meta["peak_memory_mib"]
    metrics["world_size"] = meta.get("world_size", 1)  # training processes (train.nproc); older runs: one
    details = {"mode": mode, "arch": meta["arch"], "evaluated_on": split, f"{split}_images": len(labels),
               "epochs": meta["epochs"],
               "trainable_params": meta["trainable_params"], "total_params": meta["total_params"],
               **intervals(probs, labels, names), **class_scores(probs, labels, names)}
    return metrics, details


def error_grid(images: Images, labels: list[int], probs: torch.Tensor, names: list[str], mode: str,
               split: str = "val"):
    from transfer.evaluation.figures import WRONG_COLOR, image_grid

    predicted = probs.argmax(1).tolist()
    wrong = [i for i, (p, y) in enumerate(zip(predicted, labels)) if p != y]
    shown = sorted(wrong, key=lambda i: -probs[i].max().item())[:MAX_ERRORS_SHOWN]  # most confident first
    if not shown:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4, 1.2), dpi=100)
        fig.text(0.5, 0.5, f"{mode}: no misclassified {split} images", ha="center", va="center")
        return fig
    return image_grid([to_pil_image(images[i]) for i in shown],
                      [f"true: {names[labels[i]]}\npred: {names[predicted[i]]} ({probs[i].max():.2f})" for i in shown],
                      colors=[WRONG_COLOR] * len(shown), columns=4,
                      title=f"{mode}: {len(wrong)} of {len(labels)} {split} images misclassified")


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


def sample_grid(images: Images, labels: list[int], probs: torch.Tensor, names: list[str], mode: str, arch: str,
                split: str = "val"):
    """The model's predictions on the first images of each class in turn, right green, wrong red
    (export publishes the published mode's copy as plots/model/val_predictions.png)."""
    from transfer.evaluation.figures import RIGHT_COLOR, WRONG_COLOR, image_grid

    picks = round_robin(labels, len(names), SAMPLES_SHOWN)
    predicted = probs.argmax(1).tolist()
    right = sum(predicted[i] == labels[i] for i in picks)
    return image_grid([to_pil_image(images[i]) for i in picks],
                      [f"pred: {names[predicted[i]]} ({probs[i].max():.2f})\ntrue: {names[labels[i]]}" for i in picks],
                      colors=[RIGHT_COLOR if predicted[i] == labels[i] else WRONG_COLOR for i in picks], columns=4,
                      title=f"{mode} ({arch}): {right} of {len(picks)} {split} images right")


def reporting_split() -> str:
    """test when data/split has a test set, else val."""
    return "test" if read_split("test").paths else "val"


@run_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate one trained mode on the test split (val without one).")
    parser.add_argument("mode")
    mode = parser.parse_args(argv).mode
    params = params_module.declared(params_module.load(), PARAMS, mode)
    device = pick_device(params_module.mode_value(params, mode, "device"))
    bf16 = bf16_inference(device, params_module.mode_value(params, mode, "inference_dtype"))
    model, meta = load_checkpoint(model_file(mode), device)
    check_belongs(meta, model_file(mode), mode, read_classes())  # not another mode's or project's model
    names, split = meta["class_names"], reporting_split()

    def predict(name: str):  # images read a batch at a time: memory flat in the dataset size
        rows, images = read_split(name), StoreImages(name, meta["preprocess"])
        return rows, images, predict_probabilities(model, images, rows.labels, meta["preprocess"], device, bf16)

    rows, images, probs = predict(split)
    val_scores = headline_scores(predict("val")[2], read_split("val").labels, names) if split == "test" else None
    metrics, details = mode_files(mode, meta, probs, rows.labels, split, val_scores)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "actual", "predicted", "confidence"])
    for path, label, p in zip(rows.paths, rows.labels, probs):
        writer.writerow([path, names[label], names[int(p.argmax())], f"{p.max().item():.4f}"])
    written = (predictions_csv(mode), errors_png(mode), samples_png(mode), mode_details(mode), mode_metrics(mode))
    with publish.outputs(f"evaluate@{mode}", written) as staged:
        staged(predictions_csv(mode)).write_text(buffer.getvalue(), encoding="utf-8")
        save_figure(error_grid(images, rows.labels, probs, names, mode, split), staged(errors_png(mode)))
        save_figure(sample_grid(images, rows.labels, probs, names, mode, meta["arch"], split),
                    staged(samples_png(mode)))
        write_json(staged(mode_details(mode)), details)
        write_json(staged(mode_metrics(mode)), metrics)
    log(f"evaluate@{mode}: {split} accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}")


if __name__ == "__main__":
    main()
