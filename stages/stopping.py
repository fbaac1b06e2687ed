"""Early stopping: end a run whose val loss (or accuracy) stopped improving.

`patience` (a mode's row or `train`; null: off) counts the epochs of the mode's last phase since the
best `stop_on` of that phase (val_loss: lower is better, val_acc: higher; a tie is no improvement).
The earlier phases run in full: they prepare the last one (the head alone before the whole network
trains), and their val scores say little about where the last one will get. The counter lives in
the FitResult, which the resume state holds, so a resumed run stops at the same epoch as an
uninterrupted one. Stopping only ends the run early: the kept weights are still those of the best
val epoch (training.record)."""
from __future__ import annotations

from typing import Any


def update(result: Any, row: dict, settings: dict) -> bool:
    """Count one finished epoch of the last phase into `result` (stop_best, stale_epochs); True when the
    run stops after it (then result.stopped_epoch is that epoch)."""
    patience = settings["patience"]
    if patience is None:
        return False
    value, sign = row[settings["stop_on"]], -1.0 if settings["stop_on"] == "val_loss" else 1.0
    if result.stop_best is None or sign * value > sign * result.stop_best:
        result.stop_best, result.stale_epochs = value, 0
    else:
        result.stale_epochs += 1
    if result.stale_epochs >= patience:
        result.stopped_epoch = row["epoch"]
        return True
    return False
