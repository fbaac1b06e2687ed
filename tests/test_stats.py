"""transfer/evaluation/stats.py: every number checked against a hand calculation or an independent reference."""
from __future__ import annotations

import math
import time
from statistics import NormalDist

import numpy as np
import pytest

from transfer.evaluation.stats import (
    balanced_accuracy,
    binomial_above,
    bootstrap_interval,
    class_mix,
    detectable_difference,
    format_p,
    holm,
    macro_f1,
    mcnemar_exact,
    paired,
    two_proportions,
    verdict,
    wilson_interval,
)

Z95 = 1.959963984540054


def binomial_two_sided(smaller: int, n: int) -> float:
    """Reference: 2 * P(X <= smaller) for X ~ Binomial(n, 1/2), straight from math.comb."""
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(smaller + 1)) / 2**n)


def modes_from_blocks(blocks: list[tuple[int, dict[str, bool]]]) -> dict[str, list[bool]]:
    """Right/wrong per image, built from blocks of `count` images on which each mode is right or wrong."""
    names = blocks[0][1]
    return {name: [right[name] for count, right in blocks for _ in range(count)] for name in names}


# --- Wilson -------------------------------------------------------------------------------------------------

def test_wilson_146_of_153_by_hand():
    low, high = wilson_interval(146, 153)
    assert low == pytest.approx(0.9086, abs=5e-4)
    assert high == pytest.approx(0.9777, abs=5e-4)


@pytest.mark.parametrize("correct,total", [(146, 153), (3, 40), (50, 100), (1, 7)])
def test_wilson_bounds_are_where_the_score_test_is_at_z(correct, total):
    # The Wilson bounds are the two proportions pi with (p - pi)^2 = z^2 pi (1 - pi) / n.
    p = correct / total
    for pi in wilson_interval(correct, total):
        assert (p - pi) ** 2 == pytest.approx(Z95**2 * pi * (1 - pi) / total, rel=1e-9)
    low, high = wilson_interval(correct, total)
    assert low < p < high


def test_wilson_all_wrong_and_all_right_closed_form():
    edge = 10 / (10 + Z95**2)  # 0/10: (0, z^2 / (n + z^2)); 10/10: (n / (n + z^2), 1)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 1 - edge))
    assert wilson_interval(10, 10) == pytest.approx((edge, 1.0))


def test_wilson_no_images_and_other_confidence():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    z99 = 2.5758293035489004
    assert wilson_interval(10, 10, confidence=0.99)[0] == pytest.approx(10 / (10 + z99**2))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


# --- McNemar ------------------------------------------------------------------------------------------------

def test_mcnemar_small_cases_by_hand():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 0) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact(4, 4) == 1.0
    assert mcnemar_exact(1, 5) == pytest.approx(2 * (1 + 6) / 64)


@pytest.mark.parametrize("only_a,only_b", [(3, 37), (37, 3), (10, 20), (0, 12)])
def test_mcnemar_equals_the_binomial_sum(only_a, only_b):
    expected = binomial_two_sided(min(only_a, only_b), only_a + only_b)
    assert mcnemar_exact(only_a, only_b) == pytest.approx(expected, rel=1e-12)
    if (only_a, only_b) == (3, 37):
        assert expected == pytest.approx(1.9465e-8, rel=1e-4)


def test_mcnemar_tens_of_thousands_against_log_space_reference():
    only_a, only_b = 14_700, 15_300
    n = only_a + only_b
    logs = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)
            for k in range(only_a + 1)]
    top = max(logs)
    expected = 2 * math.exp(top) * sum(math.exp(value - top) for value in logs)
    p = mcnemar_exact(only_a, only_b)
    assert 0 < p < 0.01
    assert p == pytest.approx(expected, rel=1e-6)
    assert mcnemar_exact(20_000, 20_000) == 1.0


def test_mcnemar_against_scipy_when_installed():
    stats = pytest.importorskip("scipy.stats")
    for only_a, only_b in [(3, 37), (120, 160), (7, 9)]:
        expected = stats.binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided").pvalue
        assert mcnemar_exact(only_a, only_b) == pytest.approx(expected, rel=1e-9)


# --- Holm ---------------------------------------------------------------------------------------------------

def test_holm_hand_example_is_monotone():
    # sorted: 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> raised to 0.06 (step-down is monotone)
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})


def test_holm_caps_at_one_and_keeps_keys():
    assert holm({("x", "y"): 0.5, ("x", "z"): 0.6}) == {("x", "y"): 1.0, ("x", "z"): 1.0}
    assert holm({}) == {}
    assert holm({"only": 0.02}) == {"only": 0.02}
    # 0.001 * 4, 0.02 * 3, 0.04 * 2, 0.5 * 1
    assert holm({"w": 0.5, "x": 0.04, "y": 0.001, "z": 0.02}) == pytest.approx(
        {"w": 0.5, "x": 0.08, "y": 0.004, "z": 0.06})


# --- paired -------------------------------------------------------------------------------------------------

def test_paired_counts_the_four_cells():
    a = [True, True, False, False, True, True]
    b = [True, False, True, False, False, True]
    assert paired(a, b) == {"only_a": 2, "only_b": 1, "both": 2, "neither": 1, "p": 1.0}
    with pytest.raises(ValueError):
        paired([True], [True, False])


# --- verdict ------------------------------------------------------------------------------------------------

def test_four_tied_one_clearly_worse_recommends_the_cheapest_of_the_four():
    modes = modes_from_blocks([
        (150, dict(a=True, b=True, c=True, d=True, e=True)),
        (60, dict(a=True, b=True, c=True, d=True, e=False)),   # e is wrong on 60 more images: clearly worse
        (3, dict(a=True, b=False, c=True, d=False, e=False)),  # the four differ on a handful of images only
        (2, dict(a=False, b=True, c=False, d=True, e=False)),
        (1, dict(a=False, b=False, c=True, d=False, e=True)),
        (4, dict(a=False, b=False, c=False, d=False, e=False)),
    ])
    seconds = {"a": 100.0, "b": 20.0, "c": 50.0, "d": 30.0, "e": 1.0}
    result = verdict(modes, seconds)
    assert result["images"] == 220
    assert result["tied"] == ["c", "a", "b", "d"]  # c 214, a 213, then b and d at 212 by name
    assert result["recommended"] == "b"  # e is cheaper still, but beaten
    assert [row["mode"] for row in result["worse"]] == ["e"]
    # c beats e on 63 images to 0: exact p = 2 / 2^63, times 10 pairs (the smallest of them)
    assert result["worse"][0]["beaten_by"] == "c"
    assert result["worse"][0]["p_holm"] == pytest.approx(10 * 2 / 2**63)
    assert len(result["pairs"]) == 10
    assert result["accuracy"]["c"]["correct"] == 214
    assert result["accuracy"]["c"]["accuracy"] == pytest.approx(214 / 220)
    assert (result["accuracy"]["c"]["low"], result["accuracy"]["c"]["high"]) == wilson_interval(214, 220)


def test_most_accurate_not_significantly_better_so_the_cheapest_is_recommended():
    modes = modes_from_blocks([
        (170, dict(big=True, small=True)),
        (10, dict(big=True, small=False)),
        (4, dict(big=False, small=True)),
        (16, dict(big=False, small=False)),
    ])
    result = verdict(modes, {"big": 600.0, "small": 40.0})
    p = 2 * (1 + 14 + 91 + 364 + 1001) / 2**14  # P(X <= 4), X ~ Bin(14, 1/2), doubled: 0.1796
    assert result["pairs"] == [{"a": "big", "b": "small", "only_a": 10, "only_b": 4, "p": pytest.approx(p),
                                "p_holm": pytest.approx(p), "significant": False}]
    assert result["tied"] == ["big", "small"]
    assert result["recommended"] == "small"
    assert result["worse"] == []


def test_one_mode_significantly_better_than_all_is_alone_in_tied():
    modes = modes_from_blocks([
        (100, dict(fine=True, frozen=True, head=True)),
        (30, dict(fine=True, frozen=False, head=False)),
        (2, dict(fine=False, frozen=True, head=True)),
        (5, dict(fine=True, frozen=True, head=False)),
        (3, dict(fine=True, frozen=False, head=True)),
        (10, dict(fine=False, frozen=False, head=False)),
    ])
    result = verdict(modes, {"fine": 900.0, "frozen": 60.0, "head": 30.0})
    assert result["tied"] == ["fine"]
    assert result["recommended"] == "fine"
    assert sorted((row["mode"], row["beaten_by"]) for row in result["worse"]) == [("frozen", "fine"),
                                                                                  ("head", "fine")]
    # frozen vs head: 5 against 3, p = 2 * P(X <= 3 | 8) = 0.727 -> neither beats the other
    frozen_head = next(pair for pair in result["pairs"] if {pair["a"], pair["b"]} == {"frozen", "head"})
    assert frozen_head["p"] == pytest.approx(2 * (1 + 8 + 28 + 56) / 256)
    assert not frozen_head["significant"]


def test_significant_only_before_correction_is_not_a_verdict():
    # best beats both others on 13 images to 3: p = 0.0213 each, below 0.05 alone; Holm over the
    # three pairs gives 3 * 0.0213 = 0.064 and max(0.064, 2 * 0.0213) = 0.064: nobody is beaten.
    modes = modes_from_blocks([
        (84, dict(best=True, cheap=True, mid=True)),
        (13, dict(best=True, cheap=False, mid=False)),
        (3, dict(best=False, cheap=True, mid=True)),
    ])
    result = verdict(modes, {"best": 100.0, "cheap": 10.0, "mid": 20.0})
    raw = binomial_two_sided(3, 16)
    assert raw == pytest.approx(0.02127, abs=1e-5)
    tested = {(pair["a"], pair["b"]): pair for pair in result["pairs"]}
    assert tested[("best", "cheap")]["p"] == pytest.approx(raw)
    assert tested[("best", "cheap")]["p_holm"] == pytest.approx(3 * raw)
    assert tested[("best", "mid")]["p_holm"] == pytest.approx(3 * raw)
    assert tested[("cheap", "mid")]["p_holm"] == 1.0
    assert not any(pair["significant"] for pair in result["pairs"])
    assert result["tied"] == ["best", "cheap", "mid"]
    assert result["recommended"] == "cheap"


def test_equal_seconds_prefer_the_more_accurate_then_the_name():
    modes = {"x": [True] * 9 + [False], "y": [True] * 10, "z": [True] * 10}
    assert verdict(modes, {"x": 5.0, "y": 5.0, "z": 5.0})["recommended"] == "y"
    assert verdict(modes, {"x": 4.0, "y": 5.0, "z": 5.0})["recommended"] == "x"
    single = verdict({"only": [True, False]}, {"only": 1.0})
    assert (single["tied"], single["recommended"], single["pairs"]) == (["only"], "only", [])


def test_verdict_rejects_different_images_and_missing_costs():
    with pytest.raises(ValueError, match="same images"):
        verdict({"a": [True, False], "b": [True]}, {"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match="no cost"):
        verdict({"a": [True], "b": [True]}, {"a": 1.0})
    with pytest.raises(ValueError):
        verdict({}, {})


# --- detectable difference ----------------------------------------------------------------------------------

def test_detectable_difference_inverts_the_sample_size_by_hand():
    # psi = 0.1, d = 0.05: n = (1.95996 * sqrt(0.1) + 0.84162 * sqrt(0.1 - 0.0025))^2 / 0.0025
    #                        = (0.619795 + 0.262798)^2 / 0.0025 = 311.6 images
    assert detectable_difference(312) < 0.05 < detectable_difference(311)
    assert detectable_difference(312, discordant_fraction=0.1) == pytest.approx(0.05, abs=2e-4)
    # 80% power at alpha 0.01 needs more images: (2.5758 * sqrt(0.1) + 0.84162 * sqrt(0.0975))^2 / 0.0025 = 464.3
    assert detectable_difference(465, alpha=0.01) < 0.05 < detectable_difference(464, alpha=0.01)


def test_detectable_difference_shrinks_with_images_and_grows_with_disagreement():
    sizes = [50, 153, 1000, 10_000]
    values = [detectable_difference(n) for n in sizes]
    assert values == sorted(values, reverse=True)
    assert detectable_difference(1000, discordant_fraction=0.2) > detectable_difference(1000, discordant_fraction=0.05)
    assert detectable_difference(3) == math.inf  # even "every disagreement one way" needs more images
    assert detectable_difference(0) == math.inf


def test_detectable_difference_has_about_the_promised_power_in_simulation():
    total, psi = 2000, 0.1
    d = detectable_difference(total, discordant_fraction=psi)
    rng = np.random.default_rng(7)
    cells = rng.multinomial(total, [(psi + d) / 2, (psi - d) / 2, 1 - psi], size=1000)
    power = np.mean([mcnemar_exact(int(a), int(b)) < 0.05 for a, b, _ in cells])
    assert 0.7 < power < 0.88  # the exact test is a little conservative against the normal approximation


# --- bootstrap ----------------------------------------------------------------------------------------------

def test_bootstrap_of_accuracy_matches_the_binomial_interval():
    actual = np.zeros(2000, dtype=int)
    predicted = np.where(np.arange(2000) < 1600, 0, 1)
    low, high = bootstrap_interval(actual, predicted, lambda a, p: float(np.mean(a == p)))
    half = Z95 * math.sqrt(0.8 * 0.2 / 2000)  # 0.0175
    assert low == pytest.approx(0.8 - half, abs=0.004)
    assert high == pytest.approx(0.8 + half, abs=0.004)
    assert bootstrap_interval(actual, actual, balanced_accuracy) == (1.0, 1.0)


def test_bootstrap_is_seeded_and_fast_for_2000_images():
    rng = np.random.default_rng(3)
    actual = rng.integers(0, 5, 2000)
    predicted = np.where(rng.random(2000) < 0.8, actual, rng.integers(0, 5, 2000))
    for metric in (balanced_accuracy, macro_f1):
        start = time.perf_counter()
        low, high = bootstrap_interval(actual, predicted, metric, samples=1000, seed=0)
        assert time.perf_counter() - start < 1.0
        assert low < metric(actual, predicted) < high
        assert (low, high) == bootstrap_interval(actual, predicted, metric, samples=1000, seed=0)
        assert (low, high) != bootstrap_interval(actual, predicted, metric, samples=1000, seed=1)
    with pytest.raises(ValueError):
        bootstrap_interval([], [], balanced_accuracy)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_fast_metrics_agree_with_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(5)
    actual = rng.integers(0, 6, 300)
    predicted = np.where(rng.random(300) < 0.6, actual, rng.integers(0, 7, 300))  # predicts a class 6 never seen
    assert balanced_accuracy(actual, predicted) == pytest.approx(
        metrics.balanced_accuracy_score(actual, predicted))
    assert macro_f1(actual, predicted) == pytest.approx(metrics.f1_score(actual, predicted, average="macro"))
    assert macro_f1(actual, predicted, classes=8) == pytest.approx(
        metrics.f1_score(actual, predicted, labels=range(8), average="macro", zero_division=0))


def test_balanced_accuracy_and_macro_f1_by_hand():
    actual = np.array([0, 0, 0, 0, 1, 1])
    predicted = np.array([0, 0, 0, 1, 1, 0])
    assert balanced_accuracy(actual, predicted) == pytest.approx((3 / 4 + 1 / 2) / 2)
    # class 0: tp 3, fp 1, fn 1 -> 6/8; class 1: tp 1, fp 1, fn 1 -> 2/4
    assert macro_f1(actual, predicted) == pytest.approx((6 / 8 + 2 / 4) / 2)


# --- format_p -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p,text", [(1.0, "p = 1.0"), (0.999, "p = 1.0"), (0.25, "p = 0.25"), (0.03, "p = 0.03"),
                                    (0.0625, "p = 0.062"), (0.0012, "p = 0.0012"), (0.001, "p = 0.001"),
                                    (0.00099, "p < 0.001"), (1.9e-8, "p < 0.001"), (0.0, "p < 0.001")])
def test_format_p(p, text):
    assert format_p(p) == text


def test_format_p_rejects_non_p_values():
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError):
            format_p(bad)


def test_normal_quantile_constant_is_right():
    assert NormalDist().inv_cdf(0.975) == pytest.approx(Z95)


def test_evaluate_scores_agree_with_sklearn_on_random_predictions():
    """scores.py computes its per-class scores, confusion matrix, balanced accuracy and macro F1 itself
    (evaluate no longer imports sklearn): the same numbers as sklearn's, classes never predicted or
    absent from the labels included (zero_division=0)."""
    import warnings

    import torch
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    from transfer.evaluation.scores import class_scores, headline_scores
    rng = np.random.default_rng(0)
    for trial in range(200):
        k, n = int(rng.integers(2, 7)), int(rng.integers(1, 40))
        labels = rng.integers(0, k, n).tolist()
        probs = torch.softmax(torch.tensor(rng.normal(size=(n, k)) * 3), 1)
        names = [f"c{i}" for i in range(k)]
        head, per_class = headline_scores(probs, labels, names), class_scores(probs, labels, names)
        actual, predicted, indices = np.array(labels), probs.argmax(1).numpy(), list(range(k))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns of classes absent from the labels
            assert head["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(actual, predicted), abs=1e-12)
        assert head["macro_f1"] == pytest.approx(
            f1_score(actual, predicted, labels=indices, average="macro", zero_division=0), abs=1e-12)
        expected = precision_recall_fscore_support(actual, predicted, labels=indices, zero_division=0)
        for i, name in enumerate(names):
            got = per_class["per_class"][name]
            scores = [got["precision"], got["recall"], got["f1"]]
            assert scores == pytest.approx([e[i] for e in expected[:3]], abs=1e-12)
            assert got["support"] == expected[3][i], trial
        assert per_class["confusion_matrix"]["matrix"] == confusion_matrix(actual, predicted, labels=indices).tolist()


def test_binomial_above_by_hand():
    """P(X >= k) for X ~ Binomial(n, rate): 9 or 10 heads of 10 fair coins is 11/1024; one-sided, so
    a count below the rate is nowhere near significant."""
    assert binomial_above(9, 10, 0.5) == pytest.approx(11 / 1024, rel=1e-12)
    assert binomial_above(14, 20, 0.6) == pytest.approx(
        sum(math.comb(20, k) * 0.6**k * 0.4 ** (20 - k) for k in range(14, 21)), rel=1e-12)
    assert binomial_above(1, 10, 0.5) == pytest.approx(1 - 1 / 1024, rel=1e-12)
    assert binomial_above(0, 0, 0.5) == 1.0


def test_two_proportions_is_fishers_exact_by_hand():
    """3/4 against 1/4: the hypergeometric table (1, 16, 36, 16, 1)/70 for 0..4 right of the 4 on one
    side; two-sided, the tables no likelier than the observed 16/70: (1 + 16 + 16 + 1)/70. 6/6 against
    0/6: the two extreme tables of C(12, 6) = 924."""
    assert two_proportions(3, 4, 1, 4) == pytest.approx(34 / 70, rel=1e-12)
    assert two_proportions(6, 6, 0, 6) == pytest.approx(2 / 924, rel=1e-12)
    assert two_proportions(3, 6, 3, 6) == pytest.approx(1.0)
    assert two_proportions(0, 0, 3, 6) == 1.0


def test_class_mix_is_pearsons_chi_square_by_hand():
    """2 x 2, one degree of freedom: chi2 = N (ad - bc)^2 / (row and column sums multiplied), p =
    erfc(sqrt(chi2 / 2)); no continuity correction. Classes absent from both sides are left out."""
    chi2 = 60 * (10 * 10 - 20 * 20) ** 2 / 30**4
    assert class_mix([10, 20], [20, 10]) == pytest.approx(math.erfc(math.sqrt(chi2 / 2)), rel=1e-9)
    assert class_mix([10, 0, 20], [20, 0, 10]) == pytest.approx(math.erfc(math.sqrt(chi2 / 2)), rel=1e-9)
    # three classes, two degrees of freedom: the chi-square survival function is exp(-chi2 / 2)
    expected = np.outer([30, 30], [15, 20, 25]) / 60  # row sums x column sums / N
    chi2 = float((((np.array([[10, 10, 10], [5, 10, 15]]) - expected) ** 2) / expected).sum())
    assert class_mix([10, 10, 10], [5, 10, 15]) == pytest.approx(math.exp(-chi2 / 2), rel=1e-9)
    assert class_mix([10, 0], [5, 0]) == 1.0 and class_mix([3, 4], [0, 0]) == 1.0
