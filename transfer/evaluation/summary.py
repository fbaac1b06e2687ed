"""The comparison as data and text: the table of every mode's headline numbers with intervals, the
verdict of the paired tests (transfer.evaluation.stats.verdict) and the sentences that open
results/summary.md, and the all-modes curve tables."""
from __future__ import annotations

import csv
import io

from transfer.evaluation import limits, stats
from transfer.evaluation.choice import AUTO_COST, COST_NAMES, choose, cost_text
from transfer.evaluation.mode_results import SUMMARY_KEYS


def curve_table(runs: dict[str, dict], series: str, column: str) -> str:
    """CSV text: epoch, mode, <column>; modes in params order, a mode without that series has no rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["epoch", "mode", column])
    for mode, run in runs.items():
        if run[series] is not None:
            writer.writerows([int(epoch), mode, repr(float(value))] for epoch, value in run[series].items())
    return buffer.getvalue()


def summarize(runs: dict[str, dict], split_counts: dict, cost: str = AUTO_COST) -> dict:
    """The table, the verdict (chosen on the selection split, the cheapest tied by `cost`: params
    compare.cost), the majority-class baseline and val against test; `split_counts` as
    transfer.evaluation.limits.read_split_counts gives split's metrics/data.json."""
    table = {mode: {**{key: {**run["metrics"], **run["details"]}[key] for key in SUMMARY_KEYS},
                    "evaluated_on": run["metrics"].get("evaluated_on", "val"), "arch": run["details"].get("arch", "?"),
                    "image_size": (run["details"].get("inference_cost") or {}).get("image_size")}
             for mode, run in runs.items()}
    reporting = next(iter(table.values()))["evaluated_on"]
    verdict, found = choose(runs, table, cost, reporting)
    for mode, row in table.items():
        score = found["accuracy"][mode]
        row.update(correct=score["correct"], images=score["total"], accuracy_ci=[score["low"], score["high"]])
    scores = found["accuracy"]
    return {"modes": table, "verdict": verdict, "reporting": reporting,
            "baseline": limits.baseline(split_counts, reporting, scores, found["alpha"]),
            "selection": limits.selection_check(split_counts, reporting,
                                                {mode: run["metrics"].get("val") for mode, run in runs.items()},
                                                scores, found["alpha"])}


def counts(right: dict[str, int], images: int, modes: list[str]) -> str:
    """"146/153 each", or "146/153, 140/153 and 139/153"."""
    if len({right[mode] for mode in modes}) == 1:
        return f"{right[modes[0]]}/{images}" + (" each" if len(modes) > 1 else "")
    return and_list([f"{right[mode]}/{images}" for mode in modes])


def and_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def choice_sentence(summary: dict) -> str:
    """Which candidates the selection split cannot tell apart and which of them to use, by what cost."""
    verdict = summary["verdict"]
    rows = summary["modes"]
    tied = [mode for mode in rows if mode in verdict["tied"]]  # in params order
    pick = verdict["recommended"]
    right = verdict["selection_correct"]
    images = verdict["selection_images"]
    split = verdict["selected_on"]
    if len(rows) == 1:
        return f"{pick} is the only mode ({counts(right, images, tied)}); nothing to compare it with."
    if len(tied) == 1:
        return (f"{pick} is significantly better on {split} than every other mode "
                f"({counts(right, images, tied)}); use it.")
    measure = verdict["cost"]
    costs = verdict["costs"]
    closest = min(pair["p_holm"] for pair in verdict["pairs"] if pair["a"] in tied and pair["b"] in tied)
    others = [mode for mode in tied if mode != pick]
    text = (f"{and_list(tied)} are tied on {split} ({counts(right, images, tied)}, {stats.format_p(closest)} for the "
            f"closest pair); {pick} is the cheapest by {COST_NAMES[measure]} ({cost_text(measure, costs[pick])} "
            f"against {and_list([cost_text(measure, costs[mode]) for mode in others])})")
    same = [mode for mode in others if costs[mode] == costs[pick]]
    if same and measure != "train_seconds":
        text += f"; {and_list(same)} costs the same to run, so the more accurate on {split}, then the faster to train"
    return text + "."


def price_sentence(summary: dict) -> str:
    """What the pick saves and gives up against the most accurate candidate on the reporting split."""
    found = summary["verdict"]["price"]
    pick = summary["verdict"]["recommended"]
    best = found["most_accurate"]
    split = found["split"]
    rows = summary["modes"]
    if best == pick:
        return f" {pick} is also the most accurate on {split}."
    low, high = found["difference_ci"]
    saving = "the same cost to run" if found["saving"] == 1 else f"{found['saving']:.1f}x {found['saving_said']}"
    return (f" Against the most accurate on {split}, {best} ({rows[best]['correct']}/{rows[best]['images']}), "
            f"{pick} is {saving} and {-100 * found['difference']:.1f} points less accurate ({rows[pick]['correct']}/"
            f"{rows[pick]['images']}; {found['interval']}: {100 * low:.1f} to {100 * high:.1f} points).")


def test_sentence(summary: dict) -> str:
    """With a test split: what the tests on test (which only report) find, and where they separate
    candidates val could not."""
    on_test = summary["verdict"].get("on_test")
    tied_on_val = summary["verdict"]["tied"]
    if on_test is None:
        return ""
    if not on_test["worse"]:
        return " On test (which only reports) no candidate is significantly better than another."
    rows = summary["modes"]
    share = lambda mode: f"{rows[mode]['correct']}/{rows[mode]['images']}"
    told = [f"{worse['mode']} is worse than {worse['beaten_by']} ({share(worse['mode'])} against "
            f"{share(worse['beaten_by'])}, {stats.format_p(worse['p_holm'])})" for worse in on_test["worse"]]
    missed = [worse["mode"] for worse in on_test["worse"] if worse["mode"] in tied_on_val]
    text = f" On test (which only reports) {'; '.join(told)}."
    if missed:
        text += f" Val is too small to separate {and_list(missed)} from the better: more val images would."
    return text


def verdict_sentences(summary: dict) -> str:
    """The summary's opening: which modes the selection split cannot tell apart, which of them to use
    and what it costs against the most accurate, which are worse, what test finds, and how big a
    difference val's images could show."""
    verdict = summary["verdict"]
    rows = summary["modes"]
    right = verdict["selection_correct"]
    images = verdict["selection_images"]
    split = verdict["selected_on"]
    text = choice_sentence(summary)
    for worse in verdict["worse"]:
        mode = worse["mode"]
        by = worse["beaten_by"]
        text += (f" {mode} is worse on {split} ({right[mode]}/{images} against {by}'s {right[by]}/{images}, "
                 f"{stats.format_p(worse['p_holm'])}).")
    if len(rows) > 1:
        text += price_sentence(summary) + test_sentence(summary)
    text += (f" On {images} {split} images a paired test tells apart differences of about "
             f"{100 * verdict['detectable_difference']:.0f} points or more"
             if verdict["detectable_difference"] < 1 else
             f" {images} {split} images are too few to tell candidates apart: the pick rests on cost alone")
    return text + " (95% intervals and p-values after Holm's correction)."


def opening(summary: dict) -> list[str]:
    """The summary's first paragraphs: a warning when the recommended mode is not above the baseline,
    the verdict, the baseline, val against test."""
    base = limits.baseline_lines(summary)
    warning = base[:-1]  # the warning, when there is one, comes before everything else
    return [*warning, verdict_sentences(summary), base[-1], limits.selection_line(summary)]


def _baseline_cell(summary: dict, mode: str) -> str:
    test = summary["baseline"]["modes"][mode]
    return f"{'yes' if test['above'] else '**no**'} ({stats.format_p(test['p_holm'])})"


def _val_cell(summary: dict, mode: str) -> str:
    row = summary["selection"]["modes"].get(mode)
    if row is None:
        return ""
    share = f"{row['val_correct'] / row['val_images']:.1%} ({row['val_correct']}/{row['val_images']})"
    return f" {share}{', **disagrees**' if row['disagree'] else ''} |"


def markdown_table(summary: dict, runs: dict[str, dict]) -> str:
    split = summary["reporting"]  # test, or val without a test set
    verdict = summary["verdict"]
    val_column = bool(summary["selection"]["modes"])
    backbones = len({row["arch"] for row in summary["modes"].values()}) > 1
    lines = ["\n\n".join(opening(summary)), "",
             f"| mode |{' backbone |' if backbones else ''} verdict | {split} accuracy (95% interval) | right "
             "| above baseline |" + (" val accuracy (selection) |" if val_column else "")
             + " balanced acc. | macro F1 | best epoch | train time (s) | latency (ms) | params | trainable params |",
             "|---|" + ("---|" if backbones else "") + "---|---:|---:|---|" + ("---:|" if val_column else "")
             + "---:|---:|---:|---:|---:|---:|---:|"]
    for mode, row in summary["modes"].items():
        said = "recommended" if mode == verdict["recommended"] else "tied" if mode in verdict["tied"] else "worse"
        low, high = row["accuracy_ci"]
        backbone = f" {row['arch']} |" if backbones else ""
        lines.append(f"| {mode} |{backbone} {said} | {row['accuracy']:.1%} ({low:.1%}-{high:.1%}) "
                     f"| {row['correct']}/{row['images']} | {_baseline_cell(summary, mode)} |{_val_cell(summary, mode)}"
                     f" {row['balanced_accuracy']:.1%} | {row['macro_f1']:.3f} | {row['best_epoch']} "
                     f"| {row['train_seconds']:.0f} | {row['latency_ms']:.3g} | {row['params']:,} "
                     f"| {row['trainable_params']:,} |")
    first = next(iter(runs.values()))["details"]
    images = first.get(f"{split}_images")
    on = f" on {images} {split} images" if images is not None else ""
    network = "Backbones: the backbone column" if backbones else \
        f"Backbone {first.get('arch', '?')} ({first['total_params']:,} parameters)"
    return ("\n".join(lines) + "\n\n"
            f"{network}{on}. Verdict: chosen on {verdict['selected_on']}, the cheapest tied by "
            f"{COST_NAMES[verdict['cost']]} (compare.cost: {verdict['cost_setting']}); latency: ms an image at "
            "batch 1 on the evaluating machine (results/details/<mode>.json). "
            "Best epoch: the epoch whose weights were kept (best on val).\n")
