"""Matplotlib helpers shared by the stages that draw: an image grid with captions, and the settings of every figure.

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
