"""The audit's findings from one feature vector and one thumbnail hash per image (stage `audit`):
label issues (confident learning on out-of-sample probabilities), near-duplicates and outliers.
Everything here works on arrays; transfer.audit.findings computes them from data/store and writes
the files.

Near-duplicates in time linear in the images: every image has a 64-bit difference hash (dHash) of a
9x8 grayscale thumbnail of the whole picture, and only the pairs transfer.data.hashing's band buckets
find are compared: by the Hamming distance of their full hashes, then by the cosine similarity of
their features."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from transfer.data.hashing import candidate_pairs

MAX_HAMMING = 12         # of 64 bits: thumbnails further apart than this are not the same photo
PAIR_CHUNK = 16384       # candidate pairs whose feature similarity is computed at once
OUTLIER_REFERENCE = 10000  # nearest neighbours are searched among at most this many images (a seeded sample)


def dhash(image: torch.Tensor) -> int:
    """64-bit difference hash of a uint8 CHW image: is each pixel of a 9x8 grayscale thumbnail brighter
    than its right neighbour. Survives resizing and re-encoding; not crops or flips."""
    rgb = image.float()
    gray = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) if len(rgb) == 3 else rgb[0]
    small = F.interpolate(gray[None, None], size=(8, 9), mode="area")[0, 0]
    bits = (small[:, 1:] > small[:, :-1]).flatten().tolist()
    return sum(1 << i for i, bit in enumerate(bits) if bit)


def normalized(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32): a dot product is then the cosine similarity."""
    feats = np.asarray(features, dtype=np.float32)
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def near_duplicates(hashes: np.ndarray, features: np.ndarray, min_similarity: float) -> list[tuple[int, int, float]]:
    """(i, j, cosine similarity) of the near-duplicate pairs, most similar first: hashes within
    MAX_HAMMING bits, found through the buckets, and features at least `min_similarity` alike."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    pairs = candidate_pairs(hashes)
    pairs = pairs[np.bitwise_count(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]) <= MAX_HAMMING]
    feats = normalized(features)
    sims = np.concatenate([np.einsum("ij,ij->i", feats[chunk[:, 0]], feats[chunk[:, 1]])
                           for chunk in np.split(pairs, range(PAIR_CHUNK, len(pairs), PAIR_CHUNK))] or [[]])
    keep = np.flatnonzero(sims >= min_similarity)
    keep = keep[np.lexsort((pairs[keep, 1], pairs[keep, 0], -sims[keep]))]
    return [(int(pairs[k, 0]), int(pairs[k, 1]), float(sims[k])) for k in keep]


@dataclass
class LabelAudit:
    ranked: list[int] = field(default_factory=list)     # suspect images, most suspect first
    confident: list[bool] = field(default_factory=list) # flagged by confident learning (else: only misclassified)
    suggested: list[int] = field(default_factory=list)  # the class the out-of-sample model gives each
    scores: list[float] = field(default_factory=list)   # its probability of the given class (self-confidence)
    folds: int = 0
    skipped: str | None = None                          # why no label was audited, where none was
    left_out: list[int] = field(default_factory=list)   # classes with one image: not audited
    accuracy: float | None = None                       # of the out-of-sample predictions: how separable


def label_issues(features: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> LabelAudit:
    """Confident learning (cleanlab) on cross-validated logistic-regression probabilities.

    The suspects are the images confident learning flags (cleanlab's find_label_issues, its default
    prune_by_noise_rate: `confident`) and, after them in the same order, those the out-of-sample
    model merely puts in another class: all ranked by self-confidence, the probability of the given
    class, lowest first. On a clean dataset the first set is often empty while the second still
    shows a reviewer the borderline images.

    A class with a single image cannot be cross-validated: it is left out (`left_out`); with fewer
    than two classes left, nothing is audited and `skipped` says why. The folds are at most the
    image count of the smallest class left."""
    labels = np.asarray(labels)
    counts = np.bincount(labels) if len(labels) else np.zeros(0, dtype=int)
    kept = np.flatnonzero(counts >= 2)
    left_out = [int(c) for c in np.flatnonzero(counts == 1)]
    if len(kept) < 2:
        why = "one class only" if len(np.flatnonzero(counts)) < 2 else "fewer than two classes have 2+ images"
        return LabelAudit(skipped=f"{why}: no label to compare with another class", left_out=left_out)
    rows = np.flatnonzero(np.isin(labels, kept))
    y = np.searchsorted(kept, labels[rows])
    n_folds = int(min(folds, counts[kept].min()))
    probs = out_of_sample_probabilities(normalized(features[rows]), y, n_folds, seed)
    from cleanlab.filter import find_label_issues

    flagged = find_label_issues(y, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    self_confidence = probs[np.arange(len(y)), y]
    others = np.setdiff1d(np.flatnonzero(probs.argmax(1) != y), flagged)
    ranked = [*flagged, *others[np.argsort(self_confidence[others], kind="stable")]]
    return LabelAudit([int(rows[i]) for i in ranked], [len(flagged) > k for k in range(len(ranked))],
                      [int(kept[probs[i].argmax()]) for i in ranked], [float(self_confidence[i]) for i in ranked],
                      n_folds, None, left_out, float((probs.argmax(1) == y).mean()))


def out_of_sample_probabilities(features: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's class probabilities from a logistic regression that never saw it (k-fold)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, features, labels, cv=cv, method="predict_proba")


def outlier_scores(features: np.ndarray, neighbors: int, seed: int = 0) -> np.ndarray:
    """Each image's mean cosine distance to its `neighbors` nearest other images, searched among at
    most OUTLIER_REFERENCE of them (a seeded sample): N x OUTLIER_REFERENCE products, in chunks."""
    feats = normalized(features)
    n = len(feats)
    k = min(neighbors, n - 1)
    if k < 1:
        return np.zeros(n, dtype=np.float32)
    reference = np.arange(n) if n <= OUTLIER_REFERENCE else \
        np.sort(np.random.default_rng(seed).choice(n, OUTLIER_REFERENCE, replace=False))
    k = min(k, len(reference) - 1)
    scores = np.empty(n, dtype=np.float32)
    for start in range(0, n, 1024):
        sims = feats[start:start + 1024] @ feats[reference].T
        own = np.flatnonzero((reference >= start) & (reference < start + 1024))
        sims[reference[own] - start, own] = -np.inf  # an image is not its own neighbour
        top = -np.partition(-sims, k - 1, axis=1)[:, :k]
        scores[start:start + 1024] = 1 - top.mean(1)
    return scores


def flagged_outliers(scores: np.ndarray, mads: float) -> list[int]:
    """Images whose score is above median + `mads` x the scaled median absolute deviation, furthest first."""
    if len(scores) < 3:
        return []
    median = float(np.median(scores))
    spread = 1.4826 * float(np.median(np.abs(scores - median)))
    flagged = np.flatnonzero(scores > median + mads * max(spread, 1e-6))
    return [int(i) for i in flagged[np.argsort(-scores[flagged], kind="stable")]]
