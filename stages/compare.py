"""Stage compare: put every transfer mode side by side.

Reads metrics/<mode>.json and results/details/<mode>.json (evaluate@<mode>) and the per-epoch DVCLive
logs (train@<mode>) of every mode in params `modes`, and writes:
  plots/compare/val_error.png       val (solid) and train (dashed) error rate per epoch, every mode
  plots/compare/accuracy_time.png   accuracy (on test, or val without one) and training time per mode
  plots/compare/confusion/          those confusion matrices normalised by actual class: all modes in
                                    all_modes.png, or <mode>.png each when the classes are many
  plots/compare/val_acc.csv, train_loss.csv   epoch, mode, value: the data of dvc.yaml's all-modes charts
  results/summary.json, results/summary.md   the verdict and the table of the modes' headline numbers
                                             (plain outputs, not metrics: each number is a metric once, in
                                             its mode's file)

The verdict reads every mode's predictions on the same reporting images (plots/predictions/<mode>.csv):
each pair of modes is tested on the images where one is right and the other wrong (exact McNemar,
Holm-corrected), the modes no other mode beats significantly are `tied`, and the cheapest of them by
train seconds is `recommended` (transfer.evaluation.stats.verdict). A tie is never shown as a win.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd
from matplotlib.ticker import MaxNLocator

from stages import params as params_module
from stages import publish
from stages.common import (
    UserError,
    log,
    read_json,
    run_main,
    save_figure,
    write_json,
    write_text,
)
from stages.paths import (
    COMPARE_ACCURACY_TIME_PNG,
    COMPARE_CONFUSION_DIR,
    COMPARE_ERROR_PNG,
    COMPARE_PLOTS_DIR,
    COMPARE_TRAIN_LOSS_CSV,
    COMPARE_VAL_ACC_CSV,
    SUMMARY_JSON,
    SUMMARY_MD,
    live_tsv,
    mode_details,
    mode_metrics,
    predictions_csv,
)
from stages.plotting import ANNOTATE_MAX_CLASSES, DPI, TICK_LABELS_MAX_CLASSES, Figure
from transfer.evaluation import stats

# What the summary copies from each metrics/<mode>.json and results/details/<mode>.json; the details'
# confusion matrix is drawn too.
METRIC_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "best_epoch", "train_seconds")
PARAMS = ("modes",)  # as dvc.yaml's compare stage declares them
DETAIL_KEYS = ("epochs", "trainable_params", "total_params")
SUMMARY_KEYS = METRIC_KEYS + DETAIL_KEYS
# dvc.yaml's all-modes charts draw these files (the run's series, its column); a row per (epoch, mode),
# so that a new row of params `modes` is a new line on the chart without editing dvc.yaml.
CURVE_TABLES = {COMPARE_VAL_ACC_CSV: ("val_acc", "acc"), COMPARE_TRAIN_LOSS_CSV: ("train_loss", "loss")}
# Up to this many classes every mode's matrix fits side by side in one image; beyond, one image each.
COMBINED_MAX_CLASSES = 10


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
    return {"metrics": metrics, "details": details, "val_acc": read_curve(curve_path(mode, "val")),
            "predictions": read_predictions(predictions_csv(mode)),
            "train_acc": read_curve(train_acc) if train_acc.exists() else None,
            "train_loss": read_curve(train_loss) if train_loss.exists() else None}


def read_predictions(path: Path) -> dict[str, bool]:
    """{image path: predicted right} from evaluate's plots/predictions/<mode>.csv."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a predictions CSV ({str(err).splitlines()[0]})") from None
    if not {"path", "actual", "predicted"} <= set(table.columns) or table["path"].duplicated().any():
        raise UserError(f"{path}: expected columns path, actual, predicted and one row per image")
    return dict(zip(table["path"], (table["actual"] == table["predicted"]).tolist()))


def paired_correct(runs: dict[str, dict]) -> dict[str, list[bool]]:
    """Each mode's right/wrong on the same images in the same order; the modes must have predicted the
    same images (they do when they were evaluated on the same split)."""
    first_mode = next(iter(runs))
    first = runs[first_mode]["predictions"]
    for mode, run in runs.items():
        if set(run["predictions"]) != set(first):
            raise UserError(f"{predictions_csv(mode)}: not the same images as {predictions_csv(first_mode)}; "
                            "re-run the evaluate stages on one split (dvc repro)")
    order = sorted(first)
    return {mode: [run["predictions"][path] for path in order] for mode, run in runs.items()}


def missing_inputs(modes: list[str]) -> list[Path]:
    needed = [p for mode in modes
              for p in (mode_metrics(mode), mode_details(mode), curve_path(mode, "val"), predictions_csv(mode))]
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
    rows, split = [summary[m] for m in modes], summary[modes[0]]["evaluated_on"]
    accuracies = [row["accuracy"] for row in rows]
    lows, highs = [row["accuracy_ci"][0] for row in rows], [row["accuracy_ci"][1] for row in rows]
    # Dots with their 95% intervals on an axis spanning the intervals: the overlaps are what to read.
    acc_ax.errorbar(modes, accuracies, yerr=[[a - lo for a, lo in zip(accuracies, lows)],
                                            [hi - a for a, hi in zip(accuracies, highs)]],
                    fmt="none", ecolor="0.4", capsize=6)
    acc_ax.scatter(modes, accuracies, color=colors, zorder=3)
    for x, (accuracy, row) in enumerate(zip(accuracies, rows)):
        acc_ax.annotate(f"{row['correct']}/{row['images']}", (x, accuracy), xytext=(8, 0),
                        textcoords="offset points", va="center", fontsize=8)
    margin = max(0.01, 0.08 * (max(highs) - min(lows)))
    acc_ax.set_ylim(max(0.0, min(lows) - margin), min(1.0, max(highs) + margin))
    acc_ax.set_title(f"{split.capitalize()} accuracy with its 95% interval")
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


def row_shares(matrix: list[list[int]]) -> list[list[float]]:
    """Each row of a confusion matrix over its sum: cell (i, j) is the share of the val images of
    actual class i predicted as j (0 for a class without val images); comparable across class sizes."""
    return [[value / total if (total := sum(row)) else 0.0 for value in row] for row in matrix]


def draw_shares(ax, cm: dict, title: str):
    """The normalised matrix on `ax`, shares annotated while they fit; returns the image (colour bar)."""
    shares = row_shares(cm["matrix"])
    n = len(shares)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    if n <= ANNOTATE_MAX_CLASSES:
        for i, row in enumerate(shares):
            for j, share in enumerate(row):
                ax.text(j, i, f"{share:.0%}", ha="center", va="center", fontsize=9 if n <= 10 else 6,
                        color="white" if share > 0.5 else "black")
    ticks = range(n) if n <= TICK_LABELS_MAX_CLASSES else []  # beyond, names would overlap
    ax.set_xticks(ticks, cm["labels"] if ticks else [], rotation=45 if n > 2 else 0,
                  ha="right" if n > 2 else "center", fontsize=8)
    ax.set_yticks(ticks, cm["labels"] if ticks else [], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    return image


def confusion_title(mode: str, run: dict) -> str:
    return f"{mode} ({run['metrics']['accuracy']:.1%})"


def plot_confusions(runs: dict[str, dict]) -> Figure:
    """Every mode's matrix side by side (few classes)."""
    columns = min(len(runs), 5)
    rows = -(-len(runs) // columns)
    fig = Figure(figsize=(3.4 * columns, 4.0 * rows), dpi=DPI)
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    for ax, (mode, run) in zip(axes, runs.items()):
        draw_shares(ax, run["details"]["confusion_matrix"], confusion_title(mode, run))
    for ax in axes[len(runs):]:  # the empty cells of the last row
        ax.axis("off")
    fig.suptitle(f"{next(iter(runs.values()))['metrics'].get('evaluated_on', 'val').capitalize()} confusion "
                 "matrices (share of each actual class)")
    fig.tight_layout()
    return fig


def plot_confusion(mode: str, run: dict) -> Figure:
    """One mode's matrix on its own image (many classes), with a colour bar for the shares."""
    n = len(run["details"]["confusion_matrix"]["labels"])
    side = min(14.0, max(6.0, 0.14 * n))  # inches: ~14 px a cell at 100 classes
    fig = Figure(figsize=(side + 1.2, side), dpi=DPI)
    ax = fig.subplots()
    title = f"{run['metrics'].get('evaluated_on', 'val').capitalize()} confusion matrix, {confusion_title(mode, run)}"
    image = draw_shares(ax, run["details"]["confusion_matrix"], title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the actual class")
    fig.tight_layout()
    return fig


def confusion_figures(runs: dict[str, dict]) -> dict[str, Figure]:
    """{file name in plots/compare/confusion/: figure}: all_modes.png, or <mode>.png for each mode."""
    n_classes = max(len(run["details"]["confusion_matrix"]["labels"]) for run in runs.values())
    if n_classes <= COMBINED_MAX_CLASSES:
        return {"all_modes.png": plot_confusions(runs)}
    return {f"{mode}.png": plot_confusion(mode, run) for mode, run in runs.items()}


def curve_table(runs: dict[str, dict], series: str, column: str) -> str:
    """CSV text: epoch, mode, <column>; modes in params order, a mode without that series has no rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["epoch", "mode", column])
    for mode, run in runs.items():
        if run[series] is not None:
            writer.writerows([int(epoch), mode, repr(float(value))] for epoch, value in run[series].items())
    return buffer.getvalue()


def summarize(runs: dict[str, dict]) -> dict:
    table = {mode: {**{key: {**run["metrics"], **run["details"]}[key] for key in SUMMARY_KEYS},
                    "evaluated_on": run["metrics"].get("evaluated_on", "val")} for mode, run in runs.items()}
    found = stats.verdict(paired_correct(runs), {mode: row["train_seconds"] for mode, row in table.items()})
    for mode, row in table.items():
        score = found["accuracy"][mode]
        row.update(correct=score["correct"], images=score["total"], accuracy_ci=[score["low"], score["high"]])
    images = found["images"]
    verdict = {key: found[key] for key in ("tied", "recommended", "worse", "pairs", "alpha")}
    verdict["detectable_difference"] = stats.detectable_difference(images)
    return {"modes": table, "verdict": verdict}


def counts(summary: dict, modes: list[str]) -> str:
    """"146/153 each", or "146/153, 140/153 and 139/153"."""
    rows = [summary["modes"][mode] for mode in modes]
    if len({row["correct"] for row in rows}) == 1:
        return f"{rows[0]['correct']}/{rows[0]['images']}" + (" each" if len(rows) > 1 else "")
    return and_list([f"{row['correct']}/{row['images']}" for row in rows])


def and_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def verdict_sentences(summary: dict) -> str:
    """The summary's opening: which modes the data cannot tell apart, which of them to use, which are
    worse, and how big a difference these images could show."""
    verdict, rows = summary["verdict"], summary["modes"]
    tied, pick = [mode for mode in rows if mode in verdict["tied"]], verdict["recommended"]  # in params order
    seconds = lambda mode: f"{rows[mode]['train_seconds']:.0f} s"
    if len(tied) == 1:
        text = f"{pick} is significantly better than every other mode ({counts(summary, tied)}); use it."
    else:
        closest = min(pair["p_holm"] for pair in verdict["pairs"] if pair["a"] in tied and pair["b"] in tied)
        others = [mode for mode in tied if mode != pick]
        text = (f"{and_list(tied)} are tied ({counts(summary, tied)}, {stats.format_p(closest)} for the "
                f"closest pair); {pick} is the cheapest ({seconds(pick)} against "
                f"{and_list([seconds(mode) for mode in others])}).")
    for worse in verdict["worse"]:
        mode = worse["mode"]
        text += (f" {mode} is worse ({counts(summary, [mode])} against {worse['beaten_by']}'s "
                 f"{counts(summary, [worse['beaten_by']])}, {stats.format_p(worse['p_holm'])}).")
    images = next(iter(rows.values()))["images"]
    text += (f" On {images} images a paired test tells apart differences of about "
             f"{100 * verdict['detectable_difference']:.0f} points or more"
             if verdict["detectable_difference"] < 1 else f" {images} images are too few to tell modes apart")
    return text + " (95% intervals and p-values after Holm's correction)."


def markdown_table(summary: dict, runs: dict[str, dict]) -> str:
    split = next(iter(summary["modes"].values()))["evaluated_on"]  # test, or val without a test set
    verdict = summary["verdict"]
    lines = [verdict_sentences(summary), "",
             f"| mode | verdict | {split} accuracy (95% interval) | right | balanced acc. | macro F1 | best epoch "
             "| train time (s) | trainable params |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, row in summary["modes"].items():
        said = "recommended" if mode == verdict["recommended"] else "tied" if mode in verdict["tied"] else "worse"
        low, high = row["accuracy_ci"]
        lines.append(f"| {mode} | {said} | {row['accuracy']:.1%} ({low:.1%}-{high:.1%}) "
                     f"| {row['correct']}/{row['images']} | {row['balanced_accuracy']:.1%} | {row['macro_f1']:.3f} "
                     f"| {row['best_epoch']} | {row['train_seconds']:.0f} | {row['trainable_params']:,} |")
    first = next(iter(runs.values()))["details"]
    images = first.get(f"{split}_images")
    on = f" on {images} {split} images" if images is not None else ""
    return ("\n".join(lines) + "\n\n"
            f"Backbone {first.get('arch', '?')} ({first['total_params']:,} parameters){on}. "
            "Best epoch: the epoch whose weights were kept (best on val).\n")


@run_main
def main() -> None:
    params = params_module.declared(params_module.load(), PARAMS)
    modes = [str(mode) for mode in params["modes"]]
    missing = missing_inputs(modes)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{missing[0]}: missing{more}; run the train and evaluate stages first (dvc repro)")
    # Every input is read and checked before anything is written: a bad input leaves no partial output.
    runs = {mode: load_mode(mode) for mode in modes}
    summary = summarize(runs)

    with publish.outputs("compare", (COMPARE_PLOTS_DIR, SUMMARY_MD, SUMMARY_JSON)) as staged:
        plots = staged(COMPARE_PLOTS_DIR)  # the whole folder at once: no stale figure of a removed mode
        plots.mkdir()
        inside = lambda path: plots / path.relative_to(COMPARE_PLOTS_DIR)
        save_figure(plot_error_curves(runs), inside(COMPARE_ERROR_PNG))
        save_figure(plot_accuracy_time(summary["modes"]), inside(COMPARE_ACCURACY_TIME_PNG))
        inside(COMPARE_CONFUSION_DIR).mkdir()
        for name, figure in confusion_figures(runs).items():
            save_figure(figure, inside(COMPARE_CONFUSION_DIR) / name)
        for path, (series, column) in CURVE_TABLES.items():
            inside(path).write_text(curve_table(runs, series, column), encoding="utf-8")
        write_text(staged(SUMMARY_MD), markdown_table(summary, runs))
        write_json(staged(SUMMARY_JSON), summary)
    log(f"compare: {verdict_sentences(summary)}")


if __name__ == "__main__":
    main()
