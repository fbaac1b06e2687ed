"""The image grids evaluate draws: the misclassified images, most confident first (with a CNN, each
with the class activation map of its predicted class: transfer.evaluation.activation_maps), and the
model's predictions on the first images of each class in turn."""
from __future__ import annotations

import torch
from torchvision.transforms.v2.functional import to_pil_image

from transfer.core.stage import log
from transfer.data.images import Images
from transfer.data.transforms import crop_stack, normalized_batches

MAX_ERRORS_SHOWN = 16
SAMPLES_SHOWN = 16


def error_grid(images: Images, labels: list[int], probs: torch.Tensor, names: list[str], mode: str,
               split: str = "val", model: torch.nn.Module | None = None, preprocess: dict | None = None):
    """The misclassified images, most confident first; given the model and its preprocessing, the
    crops it saw, each overlaid with the class activation map of the class it predicted."""
    from transfer.core.figures import WRONG_COLOR, image_grid

    predicted = probs.argmax(1).tolist()
    wrong = [i for i, (p, y) in enumerate(zip(predicted, labels)) if p != y]
    shown = sorted(wrong, key=lambda i: -probs[i].max().item())[:MAX_ERRORS_SHOWN]  # most confident first
    if not shown:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4, 1.2), dpi=100)
        fig.text(0.5, 0.5, f"{mode}: no misclassified {split} images", ha="center", va="center")
        return fig
    pictures = [to_pil_image(images[i]) for i in shown]
    title = f"{mode}: {len(wrong)} of {len(labels)} {split} images misclassified"
    if model is not None and preprocess is not None:
        maps = overlaid_maps(model, preprocess, [images[i] for i in shown], [predicted[i] for i in shown])
        if maps:
            pictures = maps
            title = f"{title}; Grad-CAM of the predicted class"
    return image_grid(pictures,
                      [f"true: {names[labels[i]]}\npred: {names[predicted[i]]} ({probs[i].max():.2f})" for i in shown],
                      colors=[WRONG_COLOR] * len(shown), columns=4, title=title)


def overlaid_maps(model: torch.nn.Module, preprocess: dict, images: list[torch.Tensor], classes: list[int]) -> list:
    """The center crops the model saw, each under the class activation map of `classes` (PIL images);
    [] with one line logged where the network gets none (a transformer, no convolutional block)."""
    from torchcam.utils import overlay_mask

    from transfer.evaluation.activation_maps import NoMaps, activation_maps

    crops = crop_stack(images, preprocess)
    batch, _ = next(normalized_batches(crops, torch.zeros(len(crops)), preprocess, len(crops)))
    try:
        maps = activation_maps(model, batch, classes)
    except NoMaps as why:
        log(f"no class activation maps on the misclassified images: {why}")
        return []
    return [overlay_mask(to_pil_image(crop), to_pil_image(heat, mode="F"), alpha=0.5)
            for crop, heat in zip(crops, maps)]


def round_robin(labels: list[int], num_classes: int, count: int) -> list[int]:
    """Indices of the first rows of each class taken in turn (class 0, 1, ..., 0, 1, ...), up to `count`.

    Deterministic (file order of the split) and shows every class before repeating one."""
    per_class: list[list[int]] = [[] for _ in range(num_classes)]
    for index, label in enumerate(labels):
        per_class[label].append(index)
    picked: list[int] = []
    depth = 0
    while len(picked) < count and any(depth < len(rows) for rows in per_class):
        picked += [rows[depth] for rows in per_class if depth < len(rows)][:count - len(picked)]
        depth += 1
    return picked


def sample_grid(images: Images, labels: list[int], probs: torch.Tensor, names: list[str], mode: str, arch: str,
                split: str = "val"):
    """The model's predictions on the first images of each class in turn, right green, wrong red
    (export publishes the published mode's copy as plots/model/val_predictions.png)."""
    from transfer.core.figures import RIGHT_COLOR, WRONG_COLOR, image_grid

    picks = round_robin(labels, len(names), SAMPLES_SHOWN)
    predicted = probs.argmax(1).tolist()
    right = sum(predicted[i] == labels[i] for i in picks)
    return image_grid([to_pil_image(images[i]) for i in picks],
                      [f"pred: {names[predicted[i]]} ({probs[i].max():.2f})\ntrue: {names[labels[i]]}" for i in picks],
                      colors=[RIGHT_COLOR if predicted[i] == labels[i] else WRONG_COLOR for i in picks], columns=4,
                      title=f"{mode} ({arch}): {right} of {len(picks)} {split} images right")
