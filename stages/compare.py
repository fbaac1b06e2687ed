"""Stage compare: put every transfer mode side by side.

Reads metrics/<mode>.json and results/details/<mode>.json (evaluate@<mode>) and the per-epoch DVCLive
logs (train@<mode>) of every mode in params `modes`, and writes:
  plots/compare/val_error.png       val (solid) and train (dashed) error rate per epoch, every mode
  plots/compare/accuracy_time.png   val accuracy and training time per mode
  plots/compare/confusion.png       the confusion matrices of all modes
  results/summary.json, results/summary.md   the table of the modes' headline numbers (plain outputs,
                                             not metrics: each number is a metric once, in its mode's file)
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.ticker import MaxNLocator

from stages import params as params_module
from stages.common import (
    UserError,
    atomic_path,
    log,
    read_json,
    run_main,
    save_figure,
    write_json,
    write_text,
)
from stages.paths import COMPARE_PLOTS_DIR, SUMMARY_JSON, SUMMARY_MD, live_tsv, mode_details, mode_metrics
from stages.plotting import DPI, Figure, draw_confusion

# What the summary copies from each metrics/<mode>.json and results/details/<mode>.json; the details'
# confusion matrix is drawn too.
METRIC_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "best_epoch", "train_seconds")
DETAIL_KEYS = ("epochs", "trainable_params", "total_params")
SUMMARY_KEYS = METRIC_KEYS + DETAIL_KEYS


def curve_path(mode: str, split: str) -> Path:
    return live_tsv(mode, f"{split}/acc")


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
    val = read_curve(curve_path(mode, "val"))
    # The train curve only adds the dashed line; a log without it still compares on val.
    train_file = curve_path(mode, "train")
    train = read_curve(train_file) if train_file.exists() else None
    return {"metrics": metrics, "details": details, "val_acc": val, "train_acc": train}


def missing_inputs(modes: list[str]) -> list[Path]:
    needed = [p for mode in modes for p in (mode_metrics(mode), mode_details(mode), curve_path(mode, "val"))]
    return [p for p in needed if not p.exists()]


def plot_error_curves(runs: dict[str, dict]) -> Figure:
    fig = Figure(figsize=(8, 5), dpi=DPI)
    ax = fig.subplots()
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for color, (mode, run) in zip(colors, runs.items()):
        val = run["val_acc"]
        ax.plot(val.index, 1.0 - val.to_numpy(), color=color, marker="o", markersize=3, label=f"{mode} (val)")
        if run["train_acc"] is not None:
            train = run["train_acc"]
            ax.plot(train.index, 1.0 - train.to_numpy(), color=color, linestyle="--", alpha=0.6,
                    label=f"{mode} (train)")
    ax.set_title("Error rate per epoch (solid: val, dashed: train)")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_ylabel("error rate (1 - accuracy)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def plot_accuracy_time(summary: dict[str, dict]) -> Figure:
    modes = list(summary)
    colors = [f"C{i % 10}" for i in range(len(modes))]
    fig = Figure(figsize=(max(8.0, 2.4 * len(modes)), 4.5), dpi=DPI)
    acc_ax, time_ax = fig.subplots(1, 2)
    accuracies = [summary[m]["accuracy"] for m in modes]
    bars = acc_ax.bar(modes, accuracies, color=colors)
    acc_ax.bar_label(bars, labels=[f"{a:.1%}" for a in accuracies], fontsize=8)
    acc_ax.set_ylim(0, 1.08)  # headroom for the labels above full bars
    acc_ax.set_title("Val accuracy (best epoch)")
    acc_ax.set_ylabel("accuracy")
    seconds = [summary[m]["train_seconds"] for m in modes]
    bars = time_ax.bar(modes, seconds, color=colors)
    time_ax.bar_label(bars, labels=[f"{s:.0f}s" for s in seconds], fontsize=8)
    time_ax.set_ylim(0, max(seconds + [1e-9]) * 1.12)
    time_ax.set_title("Training time")
    time_ax.set_ylabel("seconds")
    for ax in (acc_ax, time_ax):
        ax.set_xlabel("mode")
        ax.tick_params(axis="x", labelrotation=20 if len(modes) > 3 else 0, labelsize=8)
    fig.tight_layout()
    return fig


def plot_confusions(runs: dict[str, dict]) -> Figure:
    n_classes = max(len(run["details"]["confusion_matrix"]["labels"]) for run in runs.values())
    panel = min(8.0, max(3.2, 0.35 * n_classes))  # inches: grows with the class count, within reason
    columns = min(len(runs), 5 if n_classes <= 10 else 3)  # big matrices wrap onto more rows
    rows = -(-len(runs) // columns)
    fig = Figure(figsize=(panel * columns, (panel + 0.6) * rows), dpi=DPI)
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    for ax, (mode, run) in zip(axes, runs.items()):
        cm = run["details"]["confusion_matrix"]
        draw_confusion(ax, cm["matrix"], cm["labels"], title=f"{mode} ({run['metrics']['accuracy']:.1%})")
    for ax in axes[len(runs):]:  # the empty cells of the last row
        ax.axis("off")
    fig.suptitle("Val confusion matrices (counts; shade: share of the actual class)")
    fig.tight_layout()
    return fig


def summarize(runs: dict[str, dict]) -> dict:
    table = {mode: {key: {**run["metrics"], **run["details"]}[key] for key in SUMMARY_KEYS}
             for mode, run in runs.items()}
    # max() keeps the first of equals: a tie goes to the mode listed first in params.
    best = max(table, key=lambda mode: table[mode]["accuracy"])
    return {"modes": table, "best_mode": best}


def markdown_table(summary: dict, runs: dict[str, dict]) -> str:
    lines = ["| mode | accuracy | balanced acc. | macro F1 | best epoch | train time (s) | trainable params |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for mode, row in summary["modes"].items():
        name = f"**{mode}**" if mode == summary["best_mode"] else mode
        lines.append(f"| {name} | {row['accuracy']:.1%} | {row['balanced_accuracy']:.1%} | {row['macro_f1']:.3f} "
                     f"| {row['best_epoch']} | {row['train_seconds']:.0f} | {row['trainable_params']:,} |")
    first = next(iter(runs.values()))["details"]
    val_images = first.get("val_images")
    on = f" on {val_images} val images" if val_images is not None else ""
    return ("\n".join(lines) + "\n\n"
            f"Backbone {first.get('arch', '?')} ({first['total_params']:,} parameters){on}; "
            f"best mode in bold. Best epoch: the epoch whose weights were kept.\n")


@run_main
def main() -> None:
    params = params_module.load()
    modes = [str(mode) for mode in params["modes"]]
    missing = missing_inputs(modes)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{missing[0]}: missing{more}; run the train and evaluate stages first (dvc repro)")
    # Every input is read and checked before anything is written: a bad input leaves no partial output.
    runs = {mode: load_mode(mode) for mode in modes}
    summary = summarize(runs)

    with atomic_path(COMPARE_PLOTS_DIR) as plots:  # the whole folder at once: no stale or half-written figure
        plots.mkdir()
        save_figure(plot_error_curves(runs), plots / "val_error.png")
        save_figure(plot_accuracy_time(summary["modes"]), plots / "accuracy_time.png")
        save_figure(plot_confusions(runs), plots / "confusion.png")
    write_text(SUMMARY_MD, markdown_table(summary, runs))
    write_json(SUMMARY_JSON, summary)
    best = summary["modes"][summary["best_mode"]]
    log(f"compare: {len(modes)} modes; best {summary['best_mode']} ({best['accuracy']:.1%} val accuracy)")


if __name__ == "__main__":
    main()
