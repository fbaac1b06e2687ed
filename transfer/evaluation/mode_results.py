"""Each mode's evaluation as compare reads it: its metrics and details (evaluate@<mode>), its
per-epoch curves (train@<mode>'s DVCLive logs) and its right and wrong on every reporting image
(plots/predictions/<mode>.csv) and, where test reports, on every val image (results/val_predictions/<mode>.csv:
the selection split the choice is made on). A missing or malformed file is one line naming it."""
from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from transfer.core.errors import UserError
from transfer.core.files import read_json
from transfer.core.paths import live_tsv, mode_details, mode_metrics, predictions_csv, val_predictions_csv

# What the summary copies from each metrics/<mode>.json and results/details/<mode>.json; the details'
# confusion matrix is drawn too.
METRIC_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "best_epoch", "train_seconds", "latency_ms", "params")
DETAIL_KEYS = ("epochs", "trainable_params", "total_params")
SUMMARY_KEYS = METRIC_KEYS + DETAIL_KEYS
Table = dict[str, bool]  # {image path: predicted right}


def curve_path(mode: str, split: str, metric: str = "acc") -> Path:
    return live_tsv(mode, f"{split}/{metric}")


def read_curve(path: Path) -> pd.Series:
    """A DVCLive TSV (timestamp, step, value) as a Series of the value indexed by step.

    A resumed run may log a step twice; the later line wins."""
    try:
        table = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a DVCLive TSV log ({str(err).splitlines()[0]})") from None
    if "step" not in table.columns or len(table.columns) < 2 or table.columns[-1] == "step" or table.empty:
        raise UserError(f"{path}: expected a header with 'step' and a value column, and at least one row")
    steps = pd.to_numeric(table["step"], errors="coerce")
    values = pd.to_numeric(table[table.columns[-1]], errors="coerce")
    if steps.isna().any() or values.isna().any():
        raise UserError(f"{path}: non-numeric step or value")
    curve = pd.Series(values.to_numpy(), index=steps.astype(int).to_numpy())
    return curve[~curve.index.duplicated(keep="last")].sort_index()


def read_mode_file(path: Path, mode: str, required: tuple[str, ...]) -> dict:
    """A JSON object holding `required`; anything else is a UserError naming the file."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    missing = [key for key in required if key not in data]
    if missing:
        raise UserError(f"{path}: lacks {', '.join(missing)}; re-run evaluate@{mode} (dvc repro)")
    return data


def check_confusion(path: Path, cm) -> None:
    if not (isinstance(cm, dict) and isinstance(cm.get("labels"), list) and isinstance(cm.get("matrix"), list)
            and len(cm["matrix"]) == len(cm["labels"])
            and all(isinstance(row, list) and len(row) == len(cm["labels"]) for row in cm["matrix"])):
        raise UserError(f"{path}: confusion_matrix must hold 'labels' and a square 'matrix' of that size")


def load_mode(mode: str) -> dict:
    """One mode's evaluation metrics and details and accuracy curves; a missing or malformed file is a
    UserError."""
    metrics = read_mode_file(mode_metrics(mode), mode, METRIC_KEYS)
    details = read_mode_file(mode_details(mode), mode, DETAIL_KEYS + ("confusion_matrix",))
    check_confusion(mode_details(mode), details["confusion_matrix"])
    # The train curves only add lines; a log without them still compares on val.
    train_acc, train_loss = (curve_path(mode, "train", metric) for metric in ("acc", "loss"))
    val_predictions = None  # without a test split the reporting predictions are val's
    if metrics.get("evaluated_on") == "test":
        if not val_predictions_csv(mode).exists():
            raise UserError(f"{val_predictions_csv(mode)}: missing; re-run evaluate@{mode} (dvc repro)")
        val_predictions = read_predictions(val_predictions_csv(mode))
    return {"metrics": metrics, "details": details, "val_acc": read_curve(curve_path(mode, "val")),
            "predictions": read_predictions(predictions_csv(mode)), "val_predictions": val_predictions,
            "train_acc": read_curve(train_acc) if train_acc.exists() else None,
            "train_loss": read_curve(train_loss) if train_loss.exists() else None}


def parse_predictions(data: bytes, where: str) -> Table:
    """{image path: right} from a predictions CSV's bytes; one line naming `where` when it is not one."""
    try:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{where}: not a predictions CSV ({err})") from None
    table: Table = {}
    for row in rows:
        if not all(isinstance(row.get(key), str) for key in ("path", "actual", "predicted")) or row["path"] in table:
            raise UserError(f"{where}: expected columns path, actual, predicted and one row per image")
        table[row["path"]] = row["actual"] == row["predicted"]
    if not table:  # else the report would call it a new split: no image in common with any other
        raise UserError(f"{where}: empty (no predictions); re-run dvc repro evaluate")
    return table


def read_predictions(path: Path) -> Table:
    """{image path: predicted right} from evaluate's plots/predictions/<mode>.csv."""
    return parse_predictions(path.read_bytes(), str(path))


def paired_correct(runs: dict[str, dict], key: str = "predictions",
                   where: Callable[[str], Path] = predictions_csv) -> dict[str, list[bool]]:
    """Each mode's right/wrong on the same images in the same order (run[key]: the reporting images, or
    val's with "val_predictions", read from `where(mode)`); the modes must have predicted the same images
    (they do when they were evaluated on the same split)."""
    first_mode = next(iter(runs))
    first = runs[first_mode][key]
    for mode, run in runs.items():
        if set(run[key]) != set(first):
            raise UserError(f"{where(mode)}: not the same images as {where(first_mode)}; "
                            "re-run the evaluate stages on one split (dvc repro)")
    order = sorted(first)
    return {mode: [run[key][path] for path in order] for mode, run in runs.items()}


def missing_inputs(modes: list[str]) -> list[Path]:
    needed = [p for mode in modes
              for p in (mode_metrics(mode), mode_details(mode), curve_path(mode, "val"), predictions_csv(mode))]
    return [p for p in needed if not p.exists()]
