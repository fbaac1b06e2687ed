"""Which candidate to use: the paired verdict on the selection split (val where a test split reports,
val alone without one), the cheapest of the tied candidates by params `compare.cost`, and what that pick
costs in accuracy on the reporting split against the most accurate candidate.

Choosing on the images that report the result would bias it upwards, the more so the more candidates
there are: test only reports. A candidate's cost to run is its network's (backbone and input size), so
the modes of one backbone share one cost (the fastest of their measurements: noise only adds time), and
among them val accuracy decides before train time (paid once, where inference is paid on every image)."""
from __future__ import annotations

import math

from transfer.core.paths import val_predictions_csv
from transfer.evaluation import stats
from transfer.evaluation.mode_results import paired_correct

AUTO_COST = "auto"  # latency_ms when the candidates differ in backbone, else train_seconds
COST_NAMES = {"train_seconds": "train time", "latency_ms": "latency at batch 1", "params": "parameters"}
SAVINGS = {"train_seconds": "cheaper to train", "latency_ms": "faster at batch 1", "params": "smaller (parameters)"}
INTERVAL = "95% paired bootstrap interval over the images"


def cost_measure(setting: str, table: dict[str, dict]) -> str:
    """What "cheapest" means: the setting, or with auto latency_ms where the candidates' backbones differ."""
    if setting != AUTO_COST:
        return setting
    return "latency_ms" if len({row["arch"] for row in table.values()}) > 1 else "train_seconds"


def run_costs(measure: str, table: dict[str, dict]) -> dict[str, float]:
    """Each candidate's cost by `measure`; by latency the fastest measurement of its network."""
    if measure != "latency_ms":
        return {mode: row[measure] for mode, row in table.items()}
    fastest: dict[tuple, float] = {}
    for row in table.values():
        network = (row["arch"], row.get("image_size"))
        fastest[network] = min(fastest.get(network, math.inf), row["latency_ms"])
    return {mode: fastest[(row["arch"], row.get("image_size"))] for mode, row in table.items()}


def cost_text(measure: str, value: float) -> str:
    if measure == "train_seconds":
        return f"{value:.0f} s"
    if measure == "latency_ms":
        return f"{value:.3g} ms"
    return f"{value / 1e6:.2f}M" if value >= 1e5 else f"{value:,.0f}"


def price(correct: dict[str, list[bool]], costs: dict[str, float], pick: str, measure: str, split: str) -> dict:
    """The pick against the most accurate candidate on the reporting images (the cheaper of equals): the
    accuracy it gives up with its paired interval, and how many times cheaper it is."""
    right = {mode: sum(values) for mode, values in correct.items()}
    best = min(correct, key=lambda mode: (-right[mode], costs[mode]))
    images = len(correct[pick])
    low, high = stats.paired_difference_interval(correct[pick], correct[best])
    return {"most_accurate": best, "split": split, "difference": (right[pick] - right[best]) / images,
            "difference_ci": [low, high], "interval": INTERVAL,
            "saving": costs[best] / costs[pick] if costs[pick] > 0 else math.inf, "saving_said": SAVINGS[measure]}


def choose(runs: dict[str, dict], table: dict[str, dict], setting: str, reporting: str) -> tuple[dict, dict]:
    """(the verdict, the paired tests on the reporting images): tied and recommended from the selection
    split's tests; with a test split the tests on test beside them, which only report."""
    measure = cost_measure(setting, table)
    costs = run_costs(measure, table)
    reported = paired_correct(runs)
    selecting = paired_correct(runs, "val_predictions", val_predictions_csv) if reporting == "test" else reported
    right = {mode: sum(values) for mode, values in selecting.items()}
    # train time alone: stats.verdict breaks its ties by accuracy; else equal costs by val accuracy, then train time
    rank = {mode: (costs[mode],) if measure == "train_seconds" else
            (costs[mode], -right[mode], table[mode]["train_seconds"]) for mode in table}
    selected = stats.verdict(selecting, rank)
    on_report = stats.verdict(reported, rank) if reporting == "test" else selected
    verdict = {key: selected[key] for key in ("tied", "recommended", "worse", "pairs", "alpha")}
    verdict.update(selected_on="val", selection_images=selected["images"],
                   selection_correct={mode: right[mode] for mode in table},
                   detectable_difference=stats.detectable_difference(selected["images"]),
                   cost=measure, cost_setting=setting, costs=costs,
                   price=price(reported, costs, selected["recommended"], measure, reporting))
    if reporting == "test":
        verdict["on_test"] = {key: on_report[key] for key in ("tied", "worse", "pairs")}
        verdict["on_test"]["detectable_difference"] = stats.detectable_difference(on_report["images"])
    return verdict, on_report
