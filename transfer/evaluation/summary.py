"""The comparison as data and text: the table of every mode's headline numbers with intervals, the
verdict of the paired tests (transfer.evaluation.stats.verdict) and the sentences that open
results/summary.md, and the all-modes curve tables."""
from __future__ import annotations

import csv
import io

from transfer.evaluation import limits, stats
from transfer.evaluation.mode_results import SUMMARY_KEYS, paired_correct


def curve_table(runs: dict[str, dict], series: str, column: str) -> str:
    """CSV text: epoch, mode, <column>; modes in params order, a mode without that series has no rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["epoch", "mode", column])
    for mode, run in runs.items():
        if run[series] is not None:
            writer.writerows([int(epoch), mode, repr(float(value))] for epoch, value in run[series].items())
    return buffer.getvalue()


def summarize(runs: dict[str, dict], split_counts: dict) -> dict:
    """The table, the verdict, the majority-class baseline and val against test; `split_counts` as
    transfer.evaluation.limits.read_split_counts gives split's metrics/data.json."""
    table = {mode: {**{key: {**run["metrics"], **run["details"]}[key] for key in SUMMARY_KEYS},
                    "evaluated_on": run["metrics"].get("evaluated_on", "val")} for mode, run in runs.items()}
    found = stats.verdict(paired_correct(runs), {mode: row["train_seconds"] for mode, row in table.items()})
    for mode, row in table.items():
        score = found["accuracy"][mode]
        row.update(correct=score["correct"], images=score["total"], accuracy_ci=[score["low"], score["high"]])
    images = found["images"]
    verdict = {key: found[key] for key in ("tied", "recommended", "worse", "pairs", "alpha")}
    verdict["detectable_difference"] = stats.detectable_difference(images)
    reporting = next(iter(table.values()))["evaluated_on"]
    scores = found["accuracy"]
    return {"modes": table, "verdict": verdict, "reporting": reporting,
            "baseline": limits.baseline(split_counts, reporting, scores, found["alpha"]),
            "selection": limits.selection_check(split_counts, reporting,
                                                {mode: run["metrics"].get("val") for mode, run in runs.items()},
                                                scores, found["alpha"])}


def counts(summary: dict, modes: list[str]) -> str:
    """"146/153 each", or "146/153, 140/153 and 139/153"."""
    rows = [summary["modes"][mode] for mode in modes]
    if len({row["correct"] for row in rows}) == 1:
        return f"{rows[0]['correct']}/{rows[0]['images']}" + (" each" if len(rows) > 1 else "")
    return and_list([f"{row['correct']}/{row['images']}" for row in rows])


def and_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def verdict_sentences(summary: dict) -> str:
    """The summary's opening: which modes the data cannot tell apart, which of them to use, which are
    worse, and how big a difference these images could show."""
    verdict, rows = summary["verdict"], summary["modes"]
    tied, pick = [mode for mode in rows if mode in verdict["tied"]], verdict["recommended"]  # in params order
    seconds = lambda mode: f"{rows[mode]['train_seconds']:.0f} s"
    if len(rows) == 1:
        text = f"{pick} is the only mode ({counts(summary, tied)}); nothing to compare it with."
    elif len(tied) == 1:
        text = f"{pick} is significantly better than every other mode ({counts(summary, tied)}); use it."
    else:
        closest = min(pair["p_holm"] for pair in verdict["pairs"] if pair["a"] in tied and pair["b"] in tied)
        others = [mode for mode in tied if mode != pick]
        text = (f"{and_list(tied)} are tied ({counts(summary, tied)}, {stats.format_p(closest)} for the "
                f"closest pair); {pick} is the cheapest ({seconds(pick)} against "
                f"{and_list([seconds(mode) for mode in others])}).")
    for worse in verdict["worse"]:
        mode = worse["mode"]
        text += (f" {mode} is worse ({counts(summary, [mode])} against {worse['beaten_by']}'s "
                 f"{counts(summary, [worse['beaten_by']])}, {stats.format_p(worse['p_holm'])}).")
    images = next(iter(rows.values()))["images"]
    text += (f" On {images} images a paired test tells apart differences of about "
             f"{100 * verdict['detectable_difference']:.0f} points or more"
             if verdict["detectable_difference"] < 1 else f" {images} images are too few to tell modes apart")
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
    lines = ["\n\n".join(opening(summary)), "",
             f"| mode | verdict | {split} accuracy (95% interval) | right | above baseline |"
             + (" val accuracy (selection) |" if val_column else "")
             + " balanced acc. | macro F1 | best epoch | train time (s) | trainable params |",
             "|---|---|---:|---:|---|" + ("---:|" if val_column else "") + "---:|---:|---:|---:|---:|"]
    for mode, row in summary["modes"].items():
        said = "recommended" if mode == verdict["recommended"] else "tied" if mode in verdict["tied"] else "worse"
        low, high = row["accuracy_ci"]
        lines.append(f"| {mode} | {said} | {row['accuracy']:.1%} ({low:.1%}-{high:.1%}) "
                     f"| {row['correct']}/{row['images']} | {_baseline_cell(summary, mode)} |{_val_cell(summary, mode)}"
                     f" {row['balanced_accuracy']:.1%} | {row['macro_f1']:.3f} "
                     f"| {row['best_epoch']} | {row['train_seconds']:.0f} | {row['trainable_params']:,} |")
    first = next(iter(runs.values()))["details"]
    images = first.get(f"{split}_images")
    on = f" on {images} {split} images" if images is not None else ""
    return ("\n".join(lines) + "\n\n"
            f"Backbone {first.get('arch', '?')} ({first['total_params']:,} parameters){on}. "
            "Best epoch: the epoch whose weights were kept (best on val).\n")
