"""Every file and folder the stages read and write, relative to the project root: named here once.

dvc.yaml spells the same paths (DVC needs them literally); tests/test_dvc_yaml.py checks that the two
agree."""
from __future__ import annotations

from pathlib import Path

PARAMS_FILE = Path("params.yaml")

# download -> split
RAW_DIR = Path("data/raw")
RAW_SKIPPED = RAW_DIR / ".skipped.json"  # what download left out and why (hidden: no layout sees it)
SPLIT_DIR = Path("data/split")
TRAIN_CSV = SPLIT_DIR / "train.csv"
VAL_CSV = SPLIT_DIR / "val.csv"
CLASSES_JSON = SPLIT_DIR / "classes.json"
DATA_METRICS = Path("metrics/data.json")

# split -> pack: every image decoded once, re-encoded in tar shards, and their index
STORE_DIR = Path("data/store")
STORE_INDEX = STORE_DIR / "index.json"

# split + pack -> audit: suspects in the data, reported only (docs/audit.md)
LABEL_ISSUES_CSV = Path("results/label_issues.csv")
NEAR_DUPLICATES_CSV = Path("results/near_duplicates.csv")
OUTLIERS_CSV = Path("results/outliers.csv")
AUDIT_METRICS = Path("results/audit.json")  # not under metrics/: compare and export depend on that folder
AUDIT_PLOTS_DIR = Path("plots/audit")
AUDIT_SUSPECTS_PNG = AUDIT_PLOTS_DIR / "suspects.png"

# train@<mode> and evaluate@<mode>
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
DVCLIVE_DIR = Path("dvclive")
DETAILS_DIR = Path("results/details")
RESUME_DIR = Path(".resume")  # scratch space of a running train stage (in .dvcignore)
PUBLISH_DIR = Path(".publish")  # staging folders of the stages publishing their outputs (transfer/core/publish.py)

# compare
COMPARE_PLOTS_DIR = Path("plots/compare")
COMPARE_ERROR_PNG = COMPARE_PLOTS_DIR / "val_error.png"
COMPARE_ACCURACY_TIME_PNG = COMPARE_PLOTS_DIR / "accuracy_time.png"
# Every candidate's accuracy (with its interval) against its cost to run or train (compare.cost), tied ones marked.
COMPARE_ACCURACY_COST_PNG = COMPARE_PLOTS_DIR / "accuracy_cost.png"
# One image of every mode's matrix, or one image per mode when the classes are many (see compare).
COMPARE_CONFUSION_DIR = COMPARE_PLOTS_DIR / "confusion"
# The data of dvc.yaml's all-modes charts: rows of (epoch, mode, value), every mode in one file.
COMPARE_VAL_ACC_CSV = COMPARE_PLOTS_DIR / "val_acc.csv"
COMPARE_TRAIN_LOSS_CSV = COMPARE_PLOTS_DIR / "train_loss.csv"
# The Vega-Lite template of those charts: a line per mode (colour) and revision (dash).
SUMMARY_JSON = Path("results/summary.json")
SUMMARY_MD = Path("results/summary.md")

# export
EXPORTED_MODEL = MODELS_DIR / "model.pt"
EXPORTED_ONNX = MODELS_DIR / "model.onnx"  # the same network for onnxruntime (transfer.models.onnx_model)
# The int8 model, in a folder of its own: it holds model.int8.onnx when the paired gate keeps it and is
# empty when it does not (DVC tracks an empty folder; a file output must always exist).
EXPORTED_INT8_DIR = MODELS_DIR / "int8"
EXPORTED_INT8 = EXPORTED_INT8_DIR / "model.int8.onnx"
DEPLOY_JSON = Path("results/deploy.json")  # each published file's size and speed, int8's verdict
DEPLOY_MD = Path("results/deploy.md")  # the same as a short table
HEADLINE_JSON = Path("results/headline.json")
EXPORT_PLOTS_DIR = Path("plots/model")
EXPORTED_SAMPLES = EXPORT_PLOTS_DIR / "val_predictions.png"


def split_csv(name: str) -> Path:
    """data/split/<name>.csv: train, val or test."""
    return SPLIT_DIR / f"{name}.csv"


MODE_MODELS_DIR = MODELS_DIR / "modes"  # a folder of its own: export depends on it, and writes into models/


def model_file(mode: str) -> Path:
    return MODE_MODELS_DIR / f"{mode}.pt"


def mode_metrics(mode: str) -> Path:
    return METRICS_DIR / f"{mode}.json"


def live_dir(mode: str) -> Path:
    """dvclive/<mode>/: the per-epoch logs of train@<mode>."""
    return DVCLIVE_DIR / mode


def live_tsv(mode: str, metric: str) -> Path:
    """A per-epoch series DVCLive writes, e.g. live_tsv("frozen", "val/acc")."""
    return live_dir(mode) / "plots" / "metrics" / f"{metric}.tsv"


def resume_dir(mode: str) -> Path:
    return RESUME_DIR / mode


def resume_state(mode: str) -> Path:
    return resume_dir(mode) / "state.pt"


def running_live_dir(mode: str) -> Path:
    """Where a running train@<mode> logs each epoch (DVCLive) until it publishes them as dvclive/<mode>/."""
    return resume_dir(mode) / "dvclive"


def predictions_csv(mode: str) -> Path:
    return Path("plots/predictions") / f"{mode}.csv"


def val_predictions_csv(mode: str) -> Path:
    """results/val_predictions/<mode>.csv: evaluate@<mode>'s calibrated predictions on val (the columns of
    plots/predictions/<mode>.csv), from which export chooses the unsure threshold."""
    return Path("results/val_predictions") / f"{mode}.csv"


def calibration_png(mode: str) -> Path:
    """plots/calibration/<mode>.png: the reliability diagram before and after, and the risk-coverage curve."""
    return Path("plots/calibration") / f"{mode}.png"


def errors_png(mode: str) -> Path:
    return Path("plots/errors") / f"{mode}.png"


def samples_png(mode: str) -> Path:
    return Path("plots/samples") / f"{mode}.png"


def mode_details(mode: str) -> Path:
    """results/details/<mode>.json: evaluate@<mode>'s per-class scores, confusion matrix, arch and model
    size; a plain output, not a metric, so `dvc metrics diff` lists only metrics/<mode>.json's scalars."""
    return DETAILS_DIR / f"{mode}.json"
