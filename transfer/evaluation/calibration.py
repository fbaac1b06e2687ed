"""Calibration: how far a mode's confidence is from how often it is right, and the one temperature T that
brings them together (temperature scaling: probabilities softmax(logits / T), the top class unchanged).

T is fit on val (the split that chose the kept epoch) by minimising the negative log-likelihood of the
logits; the reporting split is scored before and after: the expected calibration error (ECE: 15 equal-width
bins of the top-label confidence), the negative log-likelihood and the Brier score, each with a bootstrap
interval over images (transfer.evaluation.stats). When the reporting split is val itself, a temperature fit
and scored on the same images would flatter it: the after-scores are then cross-fitted (each half of val
scored with the temperature fit on the other half), and the published T is still the one fit on all of val."""
from __future__ import annotations

import math

import numpy as np
import torch

from transfer.evaluation import stats

BINS = 15
# Where the fit looks for T: far beyond what a trained network needs on either side.
LOG_T_BOUNDS = (math.log(0.01), math.log(100.0))
LOG_T_TOLERANCE = 1e-6
CROSS_FIT_SEED = 0  # the halves of val when it is also the reporting split


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / temperature)."""
    return torch.nn.functional.cross_entropy(logits.double() / temperature, labels).item()


def fit_temperature(logits: torch.Tensor, labels: list[int] | torch.Tensor) -> float:
    """The temperature minimising the NLL of `labels` under softmax(logits / T): a bounded 1-D search over
    log T (scipy's minimize_scalar), exact to a relative 1e-6."""
    from scipy.optimize import minimize_scalar

    logits = logits.double()
    labels = torch.as_tensor(labels)
    result = minimize_scalar(lambda log_t: nll(logits, labels, math.exp(log_t)), bounds=LOG_T_BOUNDS,
                             method="bounded", options={"xatol": LOG_T_TOLERANCE})
    return math.exp(float(result.x))


def calibrated(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Class probabilities with the temperature applied."""
    return torch.softmax(logits.double() / temperature, dim=1).float()


def bin_index(confidence: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Each confidence's bin among `bins` equal-width ones: bin b holds (b / bins, (b + 1) / bins], bin 0
    also 0."""
    return np.clip(np.ceil(np.asarray(confidence) * bins).astype(int) - 1, 0, bins - 1)


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> dict:
    """Per bin: images, mean confidence and accuracy (0 where empty): the reliability diagram's bars."""
    index = bin_index(confidence, bins)
    counts = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    right = np.bincount(index, weights=np.asarray(correct, dtype=float), minlength=bins)
    mean = lambda total: np.divide(total, counts, out=np.zeros(bins), where=counts > 0)
    return {"images": counts, "confidence": mean(conf_sum), "accuracy": mean(right)}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """Top-label ECE: sum over bins of (images in the bin / images) x |accuracy - mean confidence|."""
    table = reliability(np.asarray(confidence, dtype=float), correct, bins)
    gaps = np.abs(table["accuracy"] - table["confidence"])
    return float((table["images"] * gaps).sum() / max(1, len(confidence)))


def per_image(probs: torch.Tensor, labels: list[int]) -> dict[str, np.ndarray]:
    """Each image's top-label confidence, whether the top class is right, its NLL and its Brier score
    (the squared distance of its probabilities from the one-hot label, summed over classes)."""
    probs = probs.double()
    target = torch.as_tensor(labels)
    truth = torch.nn.functional.one_hot(target, probs.shape[1]).double()
    return {"confidence": probs.max(1).values.numpy(),
            "correct": (probs.argmax(1) == target).numpy(),
            "nll": -torch.log(probs.gather(1, target[:, None])[:, 0].clamp_min(1e-12)).numpy(),
            "brier": ((probs - truth) ** 2).sum(1).numpy()}


def scores(probs: torch.Tensor, labels: list[int]) -> dict:
    """ECE, NLL and Brier score of `probs`, each with its 95% bootstrap interval over images."""
    terms = per_image(probs, labels)
    metric = {"ece": lambda rows: expected_calibration_error(terms["confidence"][rows], terms["correct"][rows]),
              "nll": lambda rows: float(terms["nll"][rows].mean()),
              "brier": lambda rows: float(terms["brier"][rows].mean())}
    everything = np.arange(len(labels))
    result = {}
    for name, score in metric.items():
        # The bootstrap resamples images: its "actual" and "predicted" are here the images' own indices.
        result[name] = score(everything)
        result[f"{name}_ci"] = list(stats.bootstrap_interval(everything, everything,
                                                             lambda rows, _, score=score: score(rows)))
    return result


def halves(count: int, seed: int = CROSS_FIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The image indices split in two random halves (fixed seed), each in ascending order."""
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[: count // 2]), np.sort(order[count // 2:])


def cross_fitted(logits: torch.Tensor, labels: list[int], seed: int = CROSS_FIT_SEED) -> torch.Tensor:
    """Each image's probabilities with the temperature fit on the other half of the images."""
    target = torch.as_tensor(labels)
    probs = torch.empty(logits.shape, dtype=torch.float32)
    first, second = halves(len(labels), seed)
    for fit_on, score_on in ((first, second), (second, first)):
        temperature = fit_temperature(logits[fit_on], target[fit_on])
        probs[score_on] = calibrated(logits[score_on], temperature)
    return probs


def calibrate(val_logits: torch.Tensor, val_labels: list[int], logits: torch.Tensor, labels: list[int],
              split: str) -> tuple[dict, torch.Tensor]:
    """(report, probabilities after): the temperature fit on val, and the reporting `split` (`logits`,
    `labels`) scored before and after; with split val, the after-scores cross-fitted on val's halves."""
    temperature = fit_temperature(val_logits, val_labels)
    in_sample = split == "val"
    after = cross_fitted(logits, labels) if in_sample else calibrated(logits, temperature)
    report = {"temperature": temperature, "fitted_on": "val", "scored_on": split,
              "scored_by": ("cross-fitting: each half of val scored with the temperature fit on the other half "
                            f"(seed {CROSS_FIT_SEED}); the published temperature is fit on all of val")
                           if in_sample else "the temperature fit on all of val",
              "bins": BINS, "before": scores(torch.softmax(logits.double(), 1).float(), labels),
              "after": scores(after, labels)}
    return report, after
