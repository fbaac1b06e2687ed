"""A trained mode's scores on the split that reports: its logits for every image (and the per-image
predictions CSV), the headline numbers with their 95% intervals (metrics/<mode>.json), and per class scores and the
confusion matrix (results/details/<mode>.json)."""
from __future__ import annotations

import csv
import io

import numpy as np
import torch

from transfer.core.devices import inference_batch, memory_format, to_device
from transfer.data.images import Images
from transfer.data.split_files import read_split
from transfer.data.transforms import eval_batches
from transfer.evaluation import stats

# plots/predictions/<mode>.csv and results/val_predictions/<mode>.csv: `confidence` is the calibrated one
# (what predict prints), `uncalibrated_confidence` the network's own softmax.
PREDICTION_COLUMNS = ("path", "actual", "predicted", "confidence", "uncalibrated_confidence")


@torch.inference_mode()
def predict_logits(model, images: Images, labels: list[int], preprocess: dict,
                   device, bf16: bool = False) -> torch.Tensor:
    """The network's outputs before the softmax, in float32, one row per image."""
    fmt = memory_format(device)  # the faster layout here for a one-off pass (see memory_format)
    model.eval().to(memory_format=fmt)
    logits = []
    for x, _ in eval_batches(images, labels, preprocess, inference_batch(device)):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits.append(model(to_device(x, device, fmt)).float().cpu())
    return torch.cat(logits)


def predictions_text(paths: list[str], labels: list[int], names: list[str], probs: torch.Tensor,
                     calibrated: torch.Tensor) -> str:
    """The per-image predictions CSV (PREDICTION_COLUMNS); the class is the same before and after
    calibration (a temperature keeps the order of the classes)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PREDICTION_COLUMNS)
    for path, label, p, q in zip(paths, labels, probs, calibrated):
        writer.writerow([path, names[label], names[int(p.argmax())], f"{q.max().item():.4f}", f"{p.max().item():.4f}"])
    return buffer.getvalue()


def headline_scores(probs: torch.Tensor, labels: list[int], names: list[str]) -> dict:
    """The scalar scores a reviewer compares between commits (metrics/<mode>.json)."""
    actual = np.array(labels)
    predicted = probs.argmax(1).numpy()
    loss = torch.nn.functional.nll_loss(torch.log(probs.clamp_min(1e-12)), torch.tensor(labels)).item()
    scores = {
        "accuracy": float((predicted == actual).mean()),
        "correct": int((predicted == actual).sum()),  # a review reads "correct 146 -> 147" as one image
        "images": len(labels),
        "balanced_accuracy": stats.balanced_accuracy(actual, predicted),
        "macro_f1": stats.macro_f1(actual, predicted, classes=len(names)),
        "loss": loss,
    }
    if len(names) > 5:  # top-k only means something with more classes than k
        top5 = probs.topk(5, 1).indices.numpy()
        scores["top5_accuracy"] = float((top5 == actual[:, None]).any(1).mean())
    return scores


def class_scores(probs: torch.Tensor, labels: list[int], names: list[str]) -> dict:
    """Per-class precision, recall, F1 and support, and the confusion matrix (rows: actual); a score whose
    denominator is 0 is 0 (as sklearn's with zero_division=0, which this stage no longer imports: 0.9 s)."""
    actual = np.array(labels)
    predicted = probs.argmax(1).numpy()
    k = len(names)
    matrix = np.bincount(actual * k + predicted, minlength=k * k).reshape(k, k)
    hits = np.diag(matrix)
    support = matrix.sum(1)
    predicted_counts = matrix.sum(0)
    ratio = lambda a, b: np.divide(a, b, out=np.zeros(k), where=b > 0)
    precision = ratio(hits, predicted_counts)
    recall = ratio(hits, support)
    f1 = ratio(2 * hits, support + predicted_counts)
    return {
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(names)},
        "confusion_matrix": {"labels": names, "matrix": matrix.tolist()},
    }


def intervals(probs: torch.Tensor, labels: list[int], names: list[str]) -> dict:
    """95% intervals of the headline scores: Wilson for accuracy (a count of images), a bootstrap over
    images for balanced accuracy and macro F1."""
    actual = np.array(labels)
    predicted = probs.argmax(1).numpy()
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


def reporting_split() -> str:
    """test when data/split has a test set, else val."""
    return "test" if read_split("test").paths else "val"
