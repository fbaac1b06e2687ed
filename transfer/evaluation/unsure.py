"""Unsure: the calibrated confidence below which the published model answers "unsure" instead of a class.

params export.target_accuracy (null: off) sets it: the threshold is chosen on val as the lowest confidence
at which the val images kept (confidence >= threshold) are at least that accurate; it is then scored on the
reporting split as coverage (the share of images kept) and accuracy on the kept images, each a count with
its Wilson interval. When the reporting split is val itself, the scores are cross-fitted as calibration's
are (each half scored with the threshold chosen on the other half)."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from transfer.core.errors import UserError
from transfer.evaluation import stats
from transfer.evaluation.calibration import CROSS_FIT_SEED, halves
from transfer.evaluation.scores import PREDICTION_COLUMNS


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray]:
    """For each distinct confidence t, highest first: the threshold t, the share of images kept
    (confidence >= t) and the accuracy on them."""
    confidence = np.asarray(confidence, dtype=float)
    order = np.argsort(-confidence, kind="stable")
    ranked = confidence[order]
    kept = np.arange(1, len(ranked) + 1)
    right = np.cumsum(np.asarray(correct, dtype=bool)[order])
    last_of_tie = np.append(ranked[1:] != ranked[:-1], True)  # a threshold keeps all images of its value
    return {"threshold": ranked[last_of_tie], "coverage": kept[last_of_tie] / max(1, len(ranked)),
            "accuracy": right[last_of_tie] / kept[last_of_tie]}


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, target: float) -> float | None:
    """The lowest threshold at which the images kept are at least `target` accurate; None if none is."""
    curve = risk_coverage(confidence, correct)
    reaching = np.flatnonzero(curve["accuracy"] >= target)
    return float(curve["threshold"][reaching[-1]]) if len(reaching) else None


def kept_counts(confidence: np.ndarray, correct: np.ndarray, threshold: float | None) -> tuple[int, int]:
    """(images kept, of them right) at `threshold`; None keeps nothing."""
    if threshold is None:
        return 0, 0
    kept = np.asarray(confidence) >= threshold
    return int(kept.sum()), int((kept & np.asarray(correct, dtype=bool)).sum())


def unsure_report(val: dict[str, np.ndarray], reported: dict[str, np.ndarray], target: float, split: str) -> dict:
    """The threshold chosen on `val` for `target`, and coverage and accuracy on the reporting `split`
    (`val` and `reported`: {"confidence", "correct"} per image)."""
    threshold = choose_threshold(val["confidence"], val["correct"], target)
    if threshold is None:
        best = risk_coverage(val["confidence"], val["correct"])["accuracy"].max(initial=0.0)
        raise UserError(f"params.yaml: export.target_accuracy: {target} is reached at no threshold on val "
                        f"(at best {best:.4f}, on its most confident images); lower it, or null for off")
    if split == "val":
        kept = 0
        right = 0
        first, second = halves(len(val["confidence"]))
        for choose_on, score_on in ((first, second), (second, first)):
            half = choose_threshold(val["confidence"][choose_on], val["correct"][choose_on], target)
            counts = kept_counts(reported["confidence"][score_on], reported["correct"][score_on], half)
            kept = kept + counts[0]
            right = right + counts[1]
        scored_by = ("cross-fitting: each half of val scored with the threshold chosen on the other half "
                     f"(seed {CROSS_FIT_SEED})")
    else:
        kept, right = kept_counts(reported["confidence"], reported["correct"], threshold)
        scored_by = "the threshold chosen on val"
    images = len(reported["confidence"])
    return {"target_accuracy": target, "threshold": threshold, "scored_on": split, "scored_by": scored_by,
            "images": images, "kept": kept, "coverage": kept / images if images else 0.0,
            "coverage_ci": list(stats.wilson_interval(kept, images)),
            "accuracy": right / kept if kept else 0.0, "accuracy_ci": list(stats.wilson_interval(right, kept))}


def parse_confidences(data: bytes, where: str) -> dict[str, np.ndarray]:
    """{"confidence", "correct"} per image of a predictions CSV (evaluate's PREDICTION_COLUMNS); one line
    naming `where` when it is not one."""
    try:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{where}: not a predictions CSV ({err})") from None
    confidence = []
    correct = []
    for number, row in enumerate(rows, start=2):
        try:
            value = float(row["confidence"])
        except (KeyError, TypeError, ValueError):
            value = math.nan
        named = isinstance(row.get("actual"), str) and isinstance(row.get("predicted"), str)
        if not 0.0 <= value <= 1.0 or not named:
            raise UserError(f"{where}: line {number}: expected columns {', '.join(PREDICTION_COLUMNS)} with a "
                            "confidence between 0 and 1")
        confidence.append(value)
        correct.append(row["actual"] == row["predicted"])
    if not rows:
        raise UserError(f"{where}: no predictions; re-run the evaluate stages (dvc repro)")
    return {"confidence": np.array(confidence), "correct": np.array(correct, dtype=bool)}


def read_confidences(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(f"{path}: missing; re-run the evaluate stages (dvc repro)")
    return parse_confidences(path.read_bytes(), str(path))
