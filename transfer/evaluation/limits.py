"""What a verdict cannot see by comparing modes with each other: the baseline every mode must beat
(always answering the most common training class) and whether the split that selected each mode's kept
epoch (val) agrees with the split that reports (test), with the causes of a disagreement this project
can measure. compare reads the split's counts from metrics/data.json and each mode's scores."""
from __future__ import annotations

from pathlib import Path

from transfer.core.errors import UserError
from transfer.core.files import read_json
from transfer.evaluation import stats

NO_TEST_SPLIT = "no test split: val both selects and reports"


def read_split_counts(path: Path) -> dict[str, list[int]]:
    """{"classes": folder names, "train"/"val"/"test": image counts in label order} from split's
    metrics/data.json; anything else is one line naming the file."""
    data = read_json(path)
    try:
        parts = {part: data[part]["per_class"] for part in ("train", "val", "test")}
        classes = list(parts["train"])
        counts = {part: [int(per_class[name]) for name in classes] for part, per_class in parts.items()}
    except (TypeError, KeyError, ValueError):
        raise UserError(f"{path}: lacks the per-class counts of train, val and test; "
                        "re-run split (dvc repro)") from None
    near = data.get("near_duplicates") if isinstance(data.get("near_duplicates"), dict) else {}
    return {"classes": classes, **counts, "byte_duplicates": int(data.get("duplicates_count") or 0),
            "near_duplicates": near.get("pairs_across_splits"),
            "near_duplicate_images": near.get("images_across_splits"), "grouped": bool(near.get("grouped")),
            "given_folders": data.get("layout") == "imagefolder"}


def baseline(split_counts: dict, reporting: str, scores: dict[str, dict], alpha: float) -> dict:
    """The majority-class baseline on the reporting images and each mode's test against it.

    The test is one-sided exact binomial of the mode's correct count against the baseline's rate rather
    than McNemar against the constant predictor: the constant answer disagrees with almost any model on
    almost every image, so McNemar's discordant pairs are nearly all the images and it asks the same
    question; the binomial needs only counts and says "more than that rate would give by chance".
    Holm-corrected across the modes."""
    train = split_counts["train"]
    seen = split_counts[reporting]
    majority = max(range(len(train)), key=lambda label: (train[label], -label))  # the first on ties
    correct = seen[majority]
    images = sum(seen)
    for mode, score in scores.items():
        if score["total"] != images:
            raise UserError(f"metrics/data.json counts {images} {reporting} images, mode {mode} was scored on "
                            f"{score['total']}; re-run the evaluate stages (dvc repro)")
    raw = {mode: stats.binomial_above(score["correct"], images, correct / images if images else 0.0)
           for mode, score in scores.items()}
    adjusted = stats.holm(raw)
    return {"class": split_counts["classes"][majority], "correct": correct, "images": images,
            "accuracy": correct / images if images else 0.0,
            "accuracy_ci": list(stats.wilson_interval(correct, images)),
            "chance_balanced_accuracy": 1 / len(train),
            "modes": {mode: {"p": raw[mode], "p_holm": adjusted[mode], "above": adjusted[mode] < alpha}
                      for mode in scores},
            "not_above": [mode for mode in scores if adjusted[mode] >= alpha]}


def selection_check(split_counts: dict, reporting: str, val_scores: dict[str, dict | None],
                    scores: dict[str, dict], alpha: float) -> dict:
    """Each mode's val (selection) accuracy beside its test (reporting) one, an unpaired test of the two
    (Fisher's exact, Holm across the modes), and what could explain a disagreement: images shared
    across the splits and a different class mix (chi-square of train + val against test)."""
    leak = leak_counts(split_counts)
    if reporting != "test":
        return {"note": NO_TEST_SPLIT, "modes": {}, "disagree": [], "leak": leak}
    modes = {}
    raw = {}
    for mode, val in val_scores.items():
        if not val or "correct" not in val or "images" not in val:
            raise UserError(f"metrics/{mode}.json: lacks val's correct and images beside test's; "
                            f"re-run evaluate@{mode} (dvc repro)")
        test = scores[mode]
        raw[mode] = stats.two_proportions(int(val["correct"]), int(val["images"]), test["correct"], test["total"])
        modes[mode] = {"val_correct": int(val["correct"]), "val_images": int(val["images"]), "p": raw[mode]}
    adjusted = stats.holm(raw)
    for mode, row in modes.items():
        row.update(p_holm=adjusted[mode], disagree=adjusted[mode] < alpha)
    selecting = [a + b for a, b in zip(split_counts["train"], split_counts["val"], strict=True)]
    causes = {"byte_duplicates_across_splits": split_counts["byte_duplicates"],
              "near_duplicates_across_splits": split_counts["near_duplicates"],
              "class_mix_p": stats.class_mix(selecting, split_counts["test"])}
    return {"note": None, "modes": modes, "disagree": [mode for mode in modes if modes[mode]["disagree"]],
            "causes": causes, "leak": leak}


def leak_counts(split_counts: dict) -> dict | None:
    """The val and test images with a near-duplicate on another side of the split (split's count), out
    of all val and test images; None where split did not count them (or found none)."""
    images = split_counts.get("near_duplicate_images")
    if not images:
        return None
    return {"images": int(images), "of": sum(split_counts["val"]) + sum(split_counts["test"]),
            "pairs": split_counts["near_duplicates"],
            "split_here": not (split_counts.get("grouped") or split_counts.get("given_folders"))}


def _share(correct: int, images: int) -> str:
    return f"{correct}/{images} ({correct / images:.1%})" if images else "0/0"


def baseline_lines(summary: dict) -> list[str]:
    """The summary's paragraphs on the baseline: a loud warning first when the recommended mode is not
    above it, then the baseline itself and which modes it does not beat."""
    base = summary["baseline"]
    split = summary["reporting"]
    pick = summary["verdict"]["recommended"]
    low, high = base["accuracy_ci"]
    said = (f"Baseline: always answering {base['class']} (the most common training class) gets "
            f"{_share(base['correct'], base['images'])} {split} images right (95% interval {low:.1%}-{high:.1%}); "
            f"chance balanced accuracy is {base['chance_balanced_accuracy']:.1%}.")
    below = base["not_above"]
    if not below:
        said += " Every mode is significantly above the baseline (one-sided exact binomial test, Holm)."
        return [said]
    worst = max(base["modes"][mode]["p_holm"] for mode in below)
    said += (f" Not significantly above it: {', '.join(below)} (one-sided exact binomial test, Holm; "
             f"up to {stats.format_p(worst)}).")
    lines = [said]
    if pick in below:
        lines.insert(0, f"**Warning: the recommended mode {pick} is not significantly above the majority-class "
                        f"baseline** ({_share(summary['modes'][pick]['correct'], base['images'])} against "
                        f"{_share(base['correct'], base['images'])}, "
                        f"{stats.format_p(base['modes'][pick]['p_holm'])}): it is published only as the "
                        "least bad; look at the data before using it.")
    return lines


def selection_line(summary: dict) -> str:
    """The summary's paragraph on val against test: the note without a test split, else agreement or
    the modes that disagree with the measurable causes; then, whether they agree or not, the val and test
    images that have a near-duplicate across the split."""
    check = summary["selection"]
    leak = check.get("leak")
    return _agreement(summary) + (" " + leak_sentence(leak) if leak else "")


def leak_sentence(leak: dict) -> str:
    """Agreement between val and test cannot show what both know by heart: said apart from the test."""
    where = ("data.group_duplicates: true keeps each group on one side" if leak["split_here"] else
             "the dataset's own folders put them there, and grouping moves no image between given folders")
    return (f"**{leak['images']} of {leak['of']} val and test images have a near-duplicate on another side of "
            f"the split** ({leak['pairs']} pairs, metrics/data.json): their accuracy may measure memory rather "
            f"than new pictures, whatever val and test say of each other; {where}.")


def _agreement(summary: dict) -> str:
    check = summary["selection"]
    if check["note"]:
        return f"Val against test: {check['note']}."
    rows = check["modes"]
    if not check["disagree"]:
        closest = min(row["p_holm"] for row in rows.values())
        return ("Val (selection) and test (reporting) do not differ significantly for any mode (Fisher's exact "
                f"test, Holm; {stats.format_p(closest)} for the closest).")
    told = [f"{mode} {_share(rows[mode]['val_correct'], rows[mode]['val_images'])} on val against "
            f"{_share(summary['modes'][mode]['correct'], summary['modes'][mode]['images'])} on test, "
            f"{stats.format_p(rows[mode]['p_holm'])}" for mode in check["disagree"]]
    return (f"**Val (selection) and test (reporting) disagree**: {'; '.join(told)} (Fisher's exact test, Holm). "
            f"Measurable causes: {causes_text(check['causes'])}.")


def causes_text(causes: dict) -> str:
    near = causes["near_duplicates_across_splits"]
    found = [f"{causes['byte_duplicates_across_splits']} val or test images byte-identical to training images"]
    if near is not None:
        found.append(f"{near} near-duplicate pairs across the splits (metrics/data.json"
                     + ("; data.group_duplicates: true keeps them on one side)" if near else ")"))
    mix = causes["class_mix_p"]
    found.append(f"the test class mix {'differs' if mix < 0.05 else 'does not differ significantly'} from "
                 f"train + val's (chi-square, {stats.format_p(mix)})")
    return "; ".join(found)
