"""Matplotlib helpers shared by the stages that draw: an image grid with captions, a confusion matrix.

Figures are built with matplotlib.figure.Figure rather than pyplot, so nothing stays registered in
pyplot's global state and no figure needs closing; the Agg backend draws them without a display."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: stages run on servers and in CI

from matplotlib.figure import Figure

DPI = 100
RIGHT_COLOR = "tab:green"   # caption of a correct prediction
WRONG_COLOR = "tab:red"     # caption of a wrong one
THUMBNAIL_PX = 256          # images are shrunk to this before drawing: keeps the PNGs small

# Beyond these many classes the per-cell counts, then the class names, no longer fit a panel.
ANNOTATE_MAX_CLASSES = 20
TICK_LABELS_MAX_CLASSES = 40


def image_grid(images: Sequence, captions: Sequence[str], colors: Sequence[str] | None = None,
               columns: int = 4, title: str | None = None) -> Figure:
    """A grid of PIL images, each above its caption (coloured when `colors` is given)."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    if len(captions) != len(images) or (colors is not None and len(colors) != len(images)):
        raise ValueError("image_grid: images, captions and colors must have the same length")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    lines = max(caption.count("\n") + 1 for caption in captions)
    fig = Figure(figsize=(2.4 * columns, (2.2 + 0.2 * lines) * rows + (0.4 if title else 0)), dpi=DPI)
    axes = fig.subplots(rows, columns, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= len(images):
            continue
        thumb = images[index].copy()
        thumb.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        ax.imshow(thumb)
        ax.set_title(captions[index], fontsize=9, color=colors[index] if colors else "black")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def draw_confusion(ax, matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str | None = None) -> None:
    """Draw a confusion matrix (rows = actual, columns = predicted) on `ax`, counts annotated.

    Cells are shaded by their share of the row (the recall of that actual class), so that a large
    class does not wash out the errors of a small one."""
    counts = [[int(v) for v in row] for row in matrix]
    n = len(counts)
    shares = [[v / max(1, sum(row)) for v in row] for row in counts]
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    if n <= ANNOTATE_MAX_CLASSES:
        for i, row in enumerate(counts):
            for j, value in enumerate(row):
                ax.text(j, i, str(value), ha="center", va="center", fontsize=9 if n <= 10 else 6,
                        color="white" if shares[i][j] > 0.5 else "black")
    if n <= TICK_LABELS_MAX_CLASSES:
        ax.set_xticks(range(n), labels, rotation=45 if n > 2 else 0, ha="right" if n > 2 else "center",
                      fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    if title:
        ax.set_title(title)
