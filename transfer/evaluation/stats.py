"""Statistics for verdicts you can trust: intervals on every score, paired tests between transfer modes.

Every mode is evaluated on the same images, so two modes are compared image by image (McNemar's exact
test on the images only one of them gets right), the p-values of all pairs are Holm-corrected, and a
mode is only called worse when another mode beats it significantly. Pure Python + numpy: the exact
binomial sums use integer arithmetic, the normal quantiles the standard library.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from fractions import Fraction
from itertools import combinations
from statistics import NormalDist

import numpy as np

DEFAULT_DISCORDANT_FRACTION = 0.1


def _z(upper_tail: float) -> float:
    """The standard normal quantile with `upper_tail` probability above it."""
    return NormalDist().inv_cdf(1.0 - upper_tail)


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion correct/total: stays inside [0, 1] and is honest at 0 and
    at total, unlike the normal (Wald) interval. No images -> (0.0, 1.0): nothing is known."""
    if total < 0 or not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total, got {correct}/{total}")
    if total == 0:
        return 0.0, 1.0
    z = _z((1.0 - confidence) / 2)
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: the two-sided binomial test of min(only_a, only_b) among the
    only_a + only_b images the two modes disagree on, at 0.5. Exact integer sums, so it stays accurate
    for tens of thousands of disagreements. No disagreements -> 1.0."""
    if only_a < 0 or only_b < 0:
        raise ValueError(f"counts must be >= 0, got {only_a}, {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    smaller = min(only_a, only_b)
    term = 1  # C(n, 0)
    tail = 1
    for k in range(smaller):
        term = term * (n - k) // (k + 1)  # C(n, k + 1), exact
        tail += term
    return min(1.0, float(Fraction(2 * tail, 2**n)))


def holm(p_values: dict[Hashable, float]) -> dict[Hashable, float]:
    """Holm-Bonferroni adjusted p-values (step-down): with the m p-values sorted ascending,
    adjusted_i = max over j <= i of min(1, (m - j) * p_j). Controls the chance of any false "better"
    over all the pairs tested, and is never less powerful than Bonferroni."""
    ordered = sorted(p_values, key=lambda key: p_values[key])
    m = len(ordered)
    adjusted: dict[Hashable, float] = {}
    running = 0.0
    for j, key in enumerate(ordered):
        running = max(running, min(1.0, (m - j) * p_values[key]))
        adjusted[key] = running
    return {key: adjusted[key] for key in p_values}


def paired(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """Two modes' right/wrong on the same images, tallied: images only A got right, only B, both,
    neither, and McNemar's exact p-value of only_a against only_b."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need the same images for both modes, got {a.shape} and {b.shape}")
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    return {"only_a": only_a, "only_b": only_b, "both": int((a & b).sum()), "neither": int((~a & ~b).sum()),
            "p": mcnemar_exact(only_a, only_b)}


def _accuracies(modes: dict[str, Sequence[bool]]) -> dict[str, dict]:
    """Each mode's correct count, accuracy and 95% Wilson interval; every mode on the same number of images."""
    totals = {name: len(correct) for name, correct in modes.items()}
    if not totals:
        raise ValueError("no modes to compare")
    if len(set(totals.values())) > 1:
        raise ValueError(f"every mode must be scored on the same images, got counts {totals}")
    scores = {}
    for name, correct in modes.items():
        right = int(np.sum(np.asarray(correct, dtype=bool)))
        total = totals[name]
        low, high = wilson_interval(right, total)
        scores[name] = {"correct": right, "total": total, "accuracy": right / total if total else 0.0,
                        "low": low, "high": high}
    return scores


def _pairs(modes: dict[str, Sequence[bool]], alpha: float) -> list[dict]:
    """Every pair of modes tested, with Holm-adjusted p-values over all the pairs."""
    pairs = []
    for a, b in combinations(modes, 2):
        tally = paired(modes[a], modes[b])
        pairs.append({"a": a, "b": b, "only_a": tally["only_a"], "only_b": tally["only_b"], "p": tally["p"]})
    adjusted = holm({i: pair["p"] for i, pair in enumerate(pairs)})
    for i, pair in enumerate(pairs):
        pair["p_holm"] = adjusted[i]
        pair["significant"] = adjusted[i] < alpha and pair["only_a"] != pair["only_b"]
    return pairs


def _beaters(pairs: list[dict]) -> dict[str, list[tuple[float, str]]]:
    """For each beaten mode, (adjusted p, mode) of every mode significantly better than it."""
    beaten: dict[str, list[tuple[float, str]]] = {}
    for pair in pairs:
        if pair["significant"]:
            better, worse = (pair["a"], pair["b"]) if pair["only_a"] > pair["only_b"] else (pair["b"], pair["a"])
            beaten.setdefault(worse, []).append((pair["p_holm"], better))
    return beaten


def verdict(modes: dict[str, Sequence[bool]], cost: dict[str, float | tuple], alpha: float = 0.05) -> dict:
    """Which modes can be told apart on these images, and which to use.

    modes: each mode's right/wrong per image, the same images in the same order for every mode.
    Every pair is tested (McNemar exact, Holm-corrected over all pairs); a mode is beaten when another
    mode gets significantly more images right. `tied`: the modes nobody beats, by accuracy then name;
    `recommended`: the cheapest of them by `cost` (seconds, or any sortable key; then the more
    accurate, then name), since paying more buys no difference the data can show; `worse`: the others,
    each with the mode that beats it at the smallest adjusted p; `pairs`: every test.
    """
    scores = _accuracies(modes)
    missing = [name for name in modes if name not in cost]
    if missing:
        raise ValueError(f"no cost for modes {missing}")
    pairs = _pairs(modes, alpha)
    beaten = _beaters(pairs)

    def by_accuracy(name: str) -> tuple:
        return -scores[name]["correct"], name

    tied = sorted((name for name in modes if name not in beaten), key=by_accuracy)
    recommended = min(tied, key=lambda name: (cost[name], *by_accuracy(name)))
    worse = []
    for name in sorted(beaten, key=by_accuracy):
        p_holm, by = min(beaten[name], key=lambda item: (item[0], *by_accuracy(item[1])))
        worse.append({"mode": name, "beaten_by": by, "p_holm": p_holm})
    images = next(iter(scores.values()))["total"]
    return {"images": images, "alpha": alpha, "accuracy": scores, "tied": tied, "recommended": recommended,
            "worse": worse, "pairs": pairs}


def detectable_difference(total: int, alpha: float = 0.05, power: float = 0.8,
                          discordant_fraction: float | None = None) -> float:
    """Roughly the smallest accuracy difference (a fraction: 0.05 = 5 points) a paired test on `total`
    images detects with the given power, for "on N images, only differences of about X points or more
    can be told apart".

    Approximation (McNemar's test, normal approximation, Connor 1987): with psi the fraction of images
    the two modes disagree on, a difference d needs n = (z_{alpha/2} sqrt(psi) + z_power sqrt(psi - d^2))^2
    / d^2 images; solved for d by bisection. psi is assumed, not known before the runs: 0.1 by default,
    or pass the observed (only_a + only_b) / total. A difference can be no bigger than psi; when even
    d = psi needs more than `total` images, the answer is inf (nothing can be told apart).
    """
    psi = DEFAULT_DISCORDANT_FRACTION if discordant_fraction is None else discordant_fraction
    if not 0 < psi <= 1:
        raise ValueError(f"discordant_fraction must be in (0, 1], got {psi}")
    z_alpha = _z(alpha / 2)
    z_power = _z(1 - power)

    def needed(d: float) -> float:
        return (z_alpha * math.sqrt(psi) + z_power * math.sqrt(max(0.0, psi - d * d))) ** 2 / (d * d)

    if total <= 0 or needed(psi) > total:
        return math.inf
    # needed() falls as d grows: needed(low) > total >= needed(high)
    low = 0.0
    high = psi
    for _ in range(100):
        middle = (low + high) / 2
        if needed(middle) > total:
            low = middle
        else:
            high = middle
    return high


def bootstrap_interval(actual: Sequence[int], predicted: Sequence[int], metric: Callable,
                       samples: int = 1000, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of metric(actual, predicted) over images, for scores with no closed
    form (balanced accuracy, macro F1): resample the images with replacement `samples` times."""
    actual = np.asarray(actual)
    predicted = np.asarray(predicted)
    if actual.shape != predicted.shape or actual.ndim != 1:
        raise ValueError(f"need one prediction per image, got {actual.shape} and {predicted.shape}")
    if len(actual) == 0:
        raise ValueError("no images to resample")
    draws = np.random.default_rng(seed).integers(0, len(actual), size=(samples, len(actual)))
    values = np.array([metric(actual[rows], predicted[rows]) for rows in draws], dtype=float)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_difference_interval(correct_a: Sequence[bool], correct_b: Sequence[bool],
                               confidence: float = 0.95) -> tuple[float, float]:
    """Interval of accuracy(A) - accuracy(B) on the same images: the percentile bootstrap over images
    (bootstrap_interval), each resample keeping an image's two answers together, so that the images
    both get right or both get wrong narrow it as they do McNemar's test."""
    a = np.asarray(correct_a, dtype=int)
    b = np.asarray(correct_b, dtype=int)
    return bootstrap_interval(a, b, lambda x, y: float(x.mean() - y.mean()), confidence=confidence)


def _per_class(actual: np.ndarray, predicted: np.ndarray, classes: int | None) -> tuple:
    """True positives, actual counts, predicted counts per class, and which classes to average over."""
    size = int(max(actual.max(initial=-1), predicted.max(initial=-1)) + 1)
    size = max(size, classes or 0)
    hits = np.bincount(actual[actual == predicted], minlength=size)
    actual_counts = np.bincount(actual, minlength=size)
    predicted_counts = np.bincount(predicted, minlength=size)
    used = np.arange(size) < classes if classes else (actual_counts + predicted_counts) > 0
    return hits, actual_counts, predicted_counts, used


def balanced_accuracy(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Mean recall over the classes present in `actual` (as sklearn's balanced_accuracy_score); fast
    enough to call a thousand times in a bootstrap."""
    hits, actual_counts, _, _ = _per_class(np.asarray(actual), np.asarray(predicted), None)
    present = actual_counts > 0
    return float(np.mean(hits[present] / actual_counts[present]))


def macro_f1(actual: np.ndarray, predicted: np.ndarray, classes: int | None = None) -> float:
    """Unweighted mean F1 over the classes seen in actual or predicted, or over 0..classes-1 when given
    (a class never seen scores 0, as sklearn's f1_score with zero_division=0)."""
    hits, actual_counts, predicted_counts, used = _per_class(np.asarray(actual), np.asarray(predicted), classes)
    denominator = actual_counts + predicted_counts
    f1 = np.divide(2 * hits, denominator, out=np.zeros(len(hits)), where=denominator > 0)
    return float(f1[used].mean())


def format_p(p: float) -> str:
    """A p-value for a summary: "p < 0.001", "p = 0.0012", "p = 0.03", "p = 0.25", "p = 1.0"."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"not a p-value: {p}")
    if p < 0.001:
        return "p < 0.001"
    if p >= 0.995:
        return "p = 1.0"
    if p >= 0.1:
        return f"p = {p:.2f}"
    return f"p = {p:.2g}"


def binomial_above(correct: int, total: int, rate: float) -> float:
    """One-sided exact binomial p-value that `correct` of `total` images is more than `rate` would give
    by chance: P(X >= correct) for X ~ Binomial(total, rate). No images -> 1.0."""
    if total < 0 or not 0 <= correct <= total or not 0.0 <= rate <= 1.0:
        raise ValueError(f"need 0 <= correct <= total and a rate in [0, 1], got {correct}/{total}, {rate}")
    if total == 0:
        return 1.0
    from scipy.stats import binomtest  # here, not at the top: evaluate imports this module too

    return float(binomtest(correct, total, rate, alternative="greater").pvalue)


def two_proportions(correct_a: int, total_a: int, correct_b: int, total_b: int) -> float:
    """Two-sided p-value that two accuracies measured on different images (an unpaired 2x2 table of
    right and wrong) differ: Fisher's exact test, honest on the few images a val split often has."""
    for correct, total in ((correct_a, total_a), (correct_b, total_b)):
        if total < 0 or not 0 <= correct <= total:
            raise ValueError(f"need 0 <= correct <= total, got {correct}/{total}")
    if total_a == 0 or total_b == 0:
        return 1.0
    from scipy.stats import fisher_exact

    table = [[correct_a, total_a - correct_a], [correct_b, total_b - correct_b]]
    return float(fisher_exact(table, alternative="two-sided").pvalue)


def class_mix(counts_a: Sequence[int], counts_b: Sequence[int]) -> float:
    """p-value that two sets of images share one class mix: Pearson's chi-square on the 2 x classes table
    of counts (no continuity correction, so that two and many classes are tested alike); classes absent
    from both are left out. Fewer than two classes, or an empty side -> 1.0."""
    table = np.array([counts_a, counts_b], dtype=np.int64)
    if table.ndim != 2 or (table < 0).any():
        raise ValueError(f"need two equally long rows of counts >= 0, got {counts_a} and {counts_b}")
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2 or (table.sum(1) == 0).any():
        return 1.0
    from scipy.stats import chi2_contingency

    return float(chi2_contingency(table, correction=False).pvalue)
