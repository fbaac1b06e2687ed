"""transfer/evaluation/limits.py: the majority-class baseline and val against test, on constructed
scores, against hand-computed p-values."""
from __future__ import annotations

import json
import math

import pytest

from transfer.evaluation.limits import (
    NO_TEST_SPLIT,
    baseline,
    baseline_lines,
    selection_check,
    selection_line,
)

ALPHA = 0.05


def tail(k: int, n: int, rate: float) -> float:
    """P(X >= k), X ~ Binomial(n, rate), straight from math.comb."""
    return sum(math.comb(n, i) * rate**i * (1 - rate) ** (n - i) for i in range(k, n + 1))


def counts(train, val, test, near=None) -> dict:
    return {"classes": ["a", "b"], "train": train, "val": val, "test": test, "byte_duplicates": 2,
            "near_duplicates": near}


def score(correct: int, total: int) -> dict:
    return {"correct": correct, "total": total}


def test_baseline_is_the_training_majority_on_the_reporting_images_and_flags_what_does_not_beat_it():
    """Class b is the most common in train (30 of 40) but a minority of the 20 val images (8): the
    baseline is b's 8/20, not the reporting split's own majority. 19/20 is far above 0.4; 11/20 is not
    after Holm over the two modes (raw P(X >= 11) = 0.128)."""
    split = counts([10, 30], [12, 8], [0, 0])
    found = baseline(split, "val", {"good": score(19, 20), "meh": score(11, 20)}, ALPHA)
    assert (found["class"], found["correct"], found["images"]) == ("b", 8, 20)
    assert found["chance_balanced_accuracy"] == 0.5
    good, meh = tail(19, 20, 0.4), tail(11, 20, 0.4)
    assert found["modes"]["good"]["p"] == pytest.approx(good, rel=1e-9)
    assert found["modes"]["good"]["p_holm"] == pytest.approx(2 * good, rel=1e-9)  # the smaller, times 2
    assert found["modes"]["meh"]["p_holm"] == pytest.approx(meh, rel=1e-9)
    assert found["not_above"] == ["meh"]

    summary = {"baseline": found, "reporting": "val", "verdict": {"recommended": "meh"},
               "modes": {"good": {"correct": 19}, "meh": {"correct": 11}}}
    warning, said = baseline_lines(summary)
    assert warning.startswith("**Warning: the recommended mode meh is not significantly above the majority-class")
    assert "11/20 (55.0%) against 8/20 (40.0%)" in warning
    assert said.startswith("Baseline: always answering b (the most common training class) gets 8/20 (40.0%) val")
    assert "Not significantly above it: meh" in said
    summary["verdict"]["recommended"] = "good"
    assert len(baseline_lines(summary)) == 1  # no warning when the recommended mode beats the baseline


def test_val_and_test_disagreeing_are_flagged_with_the_causes():
    """leaky: 6/6 on val, 0/6 on test: Fisher's two-sided p = 2/C(12, 6), times 2 after Holm. honest:
    3/6 on both (p = 1). The class mix: train + val (13, 13) against test (5, 1), chi-square by hand."""
    split = counts([10, 10], [3, 3], [5, 1], near=7)
    val = {"leaky": {"correct": 6, "images": 6}, "honest": {"correct": 3, "images": 6}}
    check = selection_check(split, "test", val, {"leaky": score(0, 6), "honest": score(3, 6)}, ALPHA)
    assert check["modes"]["leaky"]["p"] == pytest.approx(2 / 924, rel=1e-9)
    assert check["modes"]["leaky"]["p_holm"] == pytest.approx(4 / 924, rel=1e-9)
    assert check["modes"]["honest"]["p_holm"] == pytest.approx(1.0)
    assert check["disagree"] == ["leaky"]
    chi2 = 32 * (13 * 1 - 13 * 5) ** 2 / (26 * 6 * 18 * 14)
    assert check["causes"]["class_mix_p"] == pytest.approx(math.erfc(math.sqrt(chi2 / 2)), rel=1e-9)
    assert check["causes"]["near_duplicates_across_splits"] == 7

    test = {"leaky": {"correct": 0, "images": 6}, "honest": {"correct": 3, "images": 6}}
    summary = {"selection": check, "modes": test}
    line = selection_line(summary)
    assert line.startswith("**Val (selection) and test (reporting) disagree**: leaky 6/6 (100.0%) on val against "
                           "0/6 (0.0%) on test, p = 0.0043")
    assert "honest" not in line and "7 near-duplicate pairs across the splits" in line


def test_without_a_test_split_val_both_selects_and_reports():
    check = selection_check(counts([10, 10], [3, 3], [0, 0]), "val", {"m": None}, {"m": score(5, 6)}, ALPHA)
    assert check["disagree"] == [] and selection_line({"selection": check}) == f"Val against test: {NO_TEST_SPLIT}."


@pytest.mark.parametrize("reporting", ["test", "val"])
def test_near_duplicates_across_the_split_are_said_even_where_val_and_test_agree(reporting):
    """3/6 on val and on test agree (p = 1), yet 4 of the 12 val and test images have a near-duplicate
    on another side: the line says so, with the param that keeps them together."""
    split = {**counts([10, 10], [3, 3], [3, 3], near=9), "near_duplicate_images": 4, "grouped": False}
    val = {"m": {"correct": 3, "images": 6}}
    check = selection_check(split, reporting, val, {"m": score(3, 6)}, ALPHA)
    line = selection_line({"selection": check, "modes": {"m": {"correct": 3, "images": 6}}})
    assert check["disagree"] == []
    assert "**4 of 12 val and test images have a near-duplicate on another side of the split** (9 pairs" in line
    assert "data.group_duplicates: true" in line
    given = selection_check({**split, "given_folders": True}, reporting, val, {"m": score(3, 6)}, ALPHA)
    said = selection_line({"selection": given, "modes": {"m": {"correct": 3, "images": 6}}})
    assert "the dataset's own folders put them there" in said and "group_duplicates" not in said
    quiet = selection_check({**split, "near_duplicate_images": 0}, reporting, val, {"m": score(3, 6)}, ALPHA)
    assert "near-duplicate" not in selection_line({"selection": quiet, "modes": {"m": {"correct": 3, "images": 6}}})


@pytest.mark.parametrize("not_above, warned", [(["frozen"], True), (["scratch"], False)])
def test_export_publishes_a_recommended_mode_below_the_baseline_with_a_warning(tmp_path, monkeypatch, capsys,
                                                                                 not_above, warned):
    """mode: auto still publishes compare's pick (the pipeline finishes), and says so when it is below."""
    from stages.export import recommended_mode
    from transfer.core.paths import SUMMARY_JSON

    monkeypatch.chdir(tmp_path)
    SUMMARY_JSON.parent.mkdir(parents=True)
    SUMMARY_JSON.write_text(json.dumps({"verdict": {"recommended": "frozen"}, "baseline": {"not_above": not_above}}))
    assert recommended_mode() == "frozen"
    said = capsys.readouterr().err
    assert ("warning: frozen is not significantly above the majority-class baseline" in said) == warned, said


@pytest.mark.parametrize("layout, given", [("imagefolder", True), ("random", False)])
def test_split_counts_say_whether_the_dataset_gave_its_folders(tmp_path, layout, given):
    from transfer.evaluation.limits import read_split_counts

    part = {"per_class": {"a": 3, "b": 2}}
    data = {"layout": layout, "train": part, "val": part, "test": part,
            "near_duplicates": {"grouped": False, "pairs_across_splits": 4, "images_across_splits": 3}}
    (tmp_path / "data.json").write_text(json.dumps(data))
    counts = read_split_counts(tmp_path / "data.json")
    assert (counts["given_folders"], counts["near_duplicate_images"], counts["near_duplicates"]) == (given, 3, 4)
