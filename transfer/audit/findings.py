"""Stage audit's work: one pass of the frozen ImageNet backbone over every image of data/store (train,
val and test, centre crop, no augmentation) for a feature vector and a thumbnail hash each, the
findings of transfer.audit.suspects on them, and the files that report them. Nothing in the data changes.

Memory: the features (N x the backbone's width, float32: 0.5 GB for 100,000 images at 1280) and the
hashes; images are decoded a batch at a time and dropped."""
from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transfer.audit.suspects import (
    LabelAudit,
    dhash,
    flagged_outliers,
    label_issues,
    near_duplicates,
    outlier_scores,
)
from transfer.core.devices import inference_batch, memory_format, to_device
from transfer.core.settings import AuditSettings
from transfer.data.images import StoreImages
from transfer.data.split_files import read_classes, read_split
from transfer.data.transforms import eval_transform_tensor, working_preprocess

SPLITS = ("train", "val", "test")


@dataclass
class AuditData:
    """Every image of the split, in the order train, val, test (each as its CSV lists it)."""
    paths: list[str]      # relative to data/raw
    splits: list[str]
    positions: list[int]  # the image's row in its split
    labels: np.ndarray
    features: np.ndarray  # [N, width] float32
    hashes: np.ndarray    # [N] uint64 dHash
    classes: list[str]    # class folder names, by label
    preprocess: dict


@dataclass
class Findings:
    labels: LabelAudit
    duplicates: list[tuple[int, int, float]]
    outliers: list[int]
    outlier_scores: np.ndarray


def _split_features(images: StoreImages, model, preprocess: dict, device: torch.device,
                    out: np.ndarray, hashes: list[int]) -> None:
    """Features of one split into `out` (its rows), hashes appended: a batch of images at a time."""
    transform = eval_transform_tensor(preprocess)
    batch = inference_batch(device)
    fmt = memory_format(device)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(0, len(images), batch):
            decoded = list(pool.map(images.__getitem__, range(start, min(len(images), start + batch))))
            hashes += [dhash(image) for image in decoded]
            x = torch.stack([transform(image) for image in decoded])
            out[start:start + len(decoded)] = model.features(to_device(x, device, fmt)).float().cpu().numpy()


@torch.inference_mode()
def audit_data(arch: str, image_size: int | None, device: torch.device) -> AuditData:
    from transfer.models.backbones import build_model

    classes = [c["folder"] for c in read_classes()]
    model, preprocess = build_model(arch, len(classes), pretrained=True)
    preprocess = working_preprocess(preprocess, image_size)
    model.eval().to(device, memory_format=memory_format(device))
    rows = {split: read_split(split) for split in SPLITS}
    total = sum(len(r.paths) for r in rows.values())
    features = np.empty((total, model.head.in_features), dtype=np.float32)
    paths = []
    splits = []
    positions = []
    labels = []
    hashes = []
    start = 0
    for split, split_rows in rows.items():
        if not split_rows.paths:
            continue
        count = len(split_rows.paths)
        _split_features(StoreImages(split, preprocess), model, preprocess, device, features[start:start + count],
                        hashes)
        paths += split_rows.paths
        splits += [split] * count
        positions += range(count)
        labels += split_rows.labels
        start += count
    return AuditData(paths, splits, positions, np.array(labels, dtype=np.int64), features,
                     np.array(hashes, dtype=np.uint64), classes, preprocess)


def find_all(data: AuditData, settings: AuditSettings) -> Findings:
    labels = label_issues(data.features, data.labels, settings.folds, settings.seed)
    duplicates = near_duplicates(data.hashes, data.features, settings.duplicate_similarity)
    scores = outlier_scores(data.features, settings.outlier_neighbors, settings.seed)
    return Findings(labels, duplicates, flagged_outliers(scores, settings.outlier_mads), scores)


def _write_csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_tables(data: AuditData, found: Findings, issues: Path, duplicates: Path, outliers: Path) -> None:
    names = data.classes
    la = found.labels
    _write_csv(issues, ["path", "split", "given", "suggested", "score", "confident"],
               ((data.paths[i], data.splits[i], names[data.labels[i]], names[s], f"{score:.4f}", int(sure))
                for i, s, score, sure in zip(la.ranked, la.suggested, la.scores, la.confident)))
    _write_csv(duplicates, ["path_a", "split_a", "path_b", "split_b", "similarity"],
               ((data.paths[i], data.splits[i], data.paths[j], data.splits[j], f"{sim:.4f}")
                for i, j, sim in found.duplicates))
    _write_csv(outliers, ["path", "split", "class", "score"],
               ((data.paths[i], data.splits[i], names[data.labels[i]], f"{found.outlier_scores[i]:.4f}")
                for i in found.outliers))


def audit_metrics(data: AuditData, found: Findings) -> dict:
    la = found.labels
    across = sum(data.splits[i] != data.splits[j] for i, j, _ in found.duplicates)
    return {"images": len(data.paths),
            "label_issues": sum(la.confident),  # flagged by confident learning
            "label_issues_share": round(sum(la.confident) / max(1, len(data.paths)), 4),
            "label_disagreements": len(la.ranked),  # rows of results/label_issues.csv: the above + misclassified
            "near_duplicates": len(found.duplicates),
            "near_duplicates_across_splits": across,  # leakage: the same photo in train and val or test
            "outliers": len(found.outliers),
            "label_audit": {"folds": la.folds, "out_of_sample_accuracy": la.accuracy, "skipped": la.skipped,
                            "classes_left_out": [data.classes[c] for c in la.left_out]}}


def suspects_figure(data: AuditData, found: Findings, shown: int):
    """The most suspect images with the given and the suggested class."""
    from matplotlib.figure import Figure
    from torchvision.transforms.v2.functional import to_pil_image

    from transfer.core.figures import WRONG_COLOR, image_grid

    la = found.labels
    colors = [WRONG_COLOR if sure else "tab:orange" for sure in la.confident[:shown]]
    picks = list(zip(la.ranked, la.suggested, la.scores))[:shown]
    if not picks:
        fig = Figure(figsize=(5, 1.2), dpi=100)
        fig.text(0.5, 0.5, f"audit: no suspect labels ({la.skipped or 'none found'})", ha="center", va="center")
        return fig
    stores = {split: StoreImages(split, data.preprocess) for split in {data.splits[i] for i, _, _ in picks}}
    images = [to_pil_image(stores[data.splits[i]][data.positions[i]]) for i, _, _ in picks]
    captions = [f"{Path(data.paths[i]).name[:24]} ({data.splits[i]})\ngiven: {data.classes[data.labels[i]]} "
                f"(p {score:.2f})\nsuggested: {data.classes[s]}" for i, s, score in picks]
    return image_grid(images, captions, colors=colors, columns=5,
                      title=f"audit of {len(data.paths)} images: {sum(la.confident)} labels flagged by confident "
                            f"learning (red), {len(la.ranked) - sum(la.confident)} more misclassified (orange)")
