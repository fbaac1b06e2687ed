"""What val decides each epoch: which epoch's weights a run keeps, and whether it stops early.

The kept epoch is the one with the best val accuracy, then the lowest val loss; the first of equals.

Early stopping ends a run whose val loss (or accuracy) stopped improving.

`patience` (a mode's row or `train`; null: off) counts the epochs of the mode's last phase since the
best `stop_on` of that phase (val_loss: lower is better, val_acc: higher; a tie is no improvement).
The earlier phases run in full: they prepare the last one (the head alone before the whole network
trains), and their val scores say little about where the last one will get. The counter lives in
the FitResult, which the resume state holds, so a resumed run stops at the same epoch as an
uninterrupted one. Stopping only ends the run early: the kept weights are still those of the best
val epoch (FitResult.best_state)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def beats_kept(accuracy: float, loss: float, kept_accuracy: float, kept_loss: float) -> bool:
    """True when an epoch with this val accuracy and loss replaces the one kept so far."""
    return accuracy > kept_accuracy or (accuracy == kept_accuracy and loss < kept_loss)


def kept_epoch(val_accuracy: Sequence[float], val_loss: Sequence[float]) -> int:
    """The epoch (1-based) a run with these per-epoch val scores keeps."""
    kept = 0
    for i in range(1, len(val_accuracy)):
        if beats_kept(val_accuracy[i], val_loss[i], val_accuracy[kept], val_loss[kept]):
            kept = i
    return kept + 1


def update(result: Any, row: dict, patience: int | None, stop_on: str) -> bool:
    """Count one finished epoch of the last phase into `result` (stop_best, stale_epochs); True when the
    run stops after it (then result.stopped_epoch is that epoch): `patience` epochs without a better
    `stop_on` (the mode's settings)."""
    if patience is None:
        return False
    value = row[stop_on]
    sign = -1.0 if stop_on == "val_loss" else 1.0
    if result.stop_best is None or sign * value > sign * result.stop_best:
        result.stop_best = value
        result.stale_epochs = 0
    else:
        result.stale_epochs += 1
    if result.stale_epochs >= patience:
        result.stopped_epoch = row["epoch"]
        return True
    return False
