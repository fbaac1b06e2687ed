"""The comparison figures: every mode's error curves, accuracy with its interval beside train time,
accuracy against cost (compare.cost) with the tied candidates marked, and the confusion matrices
normalised per actual class."""
from __future__ import annotations

from matplotlib.ticker import MaxNLocator

from transfer.core.figures import ANNOTATE_MAX_CLASSES, DPI, TICK_LABELS_MAX_CLASSES, Figure

# Up to this many classes every mode's matrix fits side by side in one image; beyond, one image each.
COMBINED_MAX_CLASSES = 10


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
    rows = [summary[m] for m in modes]
    split = summary[modes[0]]["evaluated_on"]
    accuracies = [row["accuracy"] for row in rows]
    lows = [row["accuracy_ci"][0] for row in rows]
    highs = [row["accuracy_ci"][1] for row in rows]
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


COST_AXIS = {"train_seconds": "train time (s)", "latency_ms": "ms an image at batch 1", "params": "parameters"}


def plot_accuracy_cost(summary: dict) -> Figure:
    """Every candidate's reporting accuracy with its 95% interval against its cost (log scale): filled
    where the selection split ties it with the best, a star on the recommended one, hollow where worse."""
    rows = summary["modes"]
    verdict = summary["verdict"]
    measure = verdict["cost"]
    costs = verdict["costs"]
    fig = Figure(figsize=(7.5, 5), dpi=DPI)
    ax = fig.subplots()
    for index, (mode, row) in enumerate(rows.items()):
        x = max(costs[mode], 1e-9)
        y = row["correct"] / row["images"]  # the count its interval is of
        low, high = row["accuracy_ci"]
        color = f"C{index % 10}"
        ax.errorbar([x], [y], yerr=[[y - low], [high - y]], fmt="none", ecolor=color, capsize=5, alpha=0.7)
        tied = mode in verdict["tied"]
        marker = "*" if mode == verdict["recommended"] else "o"
        ax.scatter([x], [y], s=180 if marker == "*" else 60, marker=marker, zorder=3, edgecolors=color,
                   facecolors=color if tied else "none", label=f"{mode} ({'tied' if tied else 'worse'})")
        ax.annotate(mode, (x, y), xytext=(6, 4), textcoords="offset points", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"{COST_AXIS[measure]} (log scale)")
    ax.set_ylabel(f"{summary['reporting']} accuracy (95% interval)")
    ax.set_title(f"Accuracy against cost; filled: tied on {verdict['selected_on']}, star: recommended")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
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
