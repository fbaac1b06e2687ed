"""The compare stage on hand-made inputs in the exact formats train@ and evaluate@ write."""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

from stages import compare as compare_stage
from tests.conftest import ROOT, copy_code, env_with_venv, run_in_process
from transfer.evaluation.choice import COST_NAMES, SAVINGS
from transfer.evaluation.comparison_figures import confusion_figures, plot_accuracy_cost, plot_error_curves
from transfer.evaluation.limits import NO_TEST_SPLIT
from transfer.evaluation.mode_results import load_mode
from transfer.evaluation.stats import wilson_interval
from transfer.models.cost import model_cost

MODES = ["frozen", "finetune", "freeze_unfreeze"]
RUNS = {"frozen": (0.85, 4), "finetune": (0.9, 5), "freeze_unfreeze": (0.95, 6)}  # mode: (accuracy, epochs)
SUMMARY_KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "best_epoch", "epochs", "train_seconds",
                "latency_ms", "params", "trainable_params", "total_params"}
FIGURES = ["plots/compare/val_error.png", "plots/compare/accuracy_time.png", "plots/compare/accuracy_cost.png",
           "plots/compare/confusion/all_modes.png"]
OUTPUTS = [*FIGURES, "plots/compare/val_acc.csv", "plots/compare/train_loss.csv",
           "results/summary.json", "results/summary.md"]


# split's metrics/data.json as far as compare reads it: ants is the most common training class
DATA_METRICS = {"layout": "imagefolder", "classes": 2, "train": {"total": 40, "per_class": {"ants": 24, "bees": 16}},
                "val": {"total": 20, "per_class": {"ants": 10, "bees": 10}},
                "test": {"total": 0, "per_class": {"ants": 0, "bees": 0}}, "duplicates_count": 0}


def fake_metrics(mode: str, accuracy: float, epochs: int) -> dict:
    """A metrics/<mode>.json as evaluate@<mode> writes it: the headline numbers only."""
    return {"accuracy": accuracy, "balanced_accuracy": accuracy - 0.01, "macro_f1": accuracy - 0.02, "loss": 0.3,
            "best_epoch": epochs - 1, "train_seconds": 12.5 * epochs, "train_peak_memory_mib": 900.0,
            "latency_ms": 4.0 + 0.1 * epochs, "params": 3_400_000}


def fake_details(mode: str, accuracy: float, epochs: int) -> dict:
    """A results/details/<mode>.json as evaluate@<mode> writes it (two classes, 20 val images)."""
    wrong = round(20 * (1 - accuracy))
    return {
        "mode": mode, "arch": "efficientnet_lite0", "val_images": 20, "epochs": epochs,
        "trainable_params": 1281 if mode == "frozen" else 3_400_000, "total_params": 3_400_000,
        "per_class": {name: {"precision": accuracy, "recall": accuracy, "f1": accuracy, "support": 10}
                      for name in ("ants", "bees")},
        "confusion_matrix": {"labels": ["ants", "bees"], "matrix": [[10, 0], [wrong, 10 - wrong]]},
    }


def write_tsv(path: Path, name: str, values: list[float]) -> None:
    """A DVCLive plot file: `timestamp<TAB>step<TAB><name>`, steps from 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"timestamp\tstep\t{name}"]
    lines += [f"{1700000000000 + 1000 * step}\t{step}\t{value}" for step, value in enumerate(values, start=1)]
    path.write_text("\n".join(lines) + "\n")


def write_run(root: Path, mode: str, accuracy: float, epochs: int) -> None:
    for path, content in ((f"metrics/{mode}.json", fake_metrics(mode, accuracy, epochs)),
                          (f"results/details/{mode}.json", fake_details(mode, accuracy, epochs))):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(json.dumps(content, indent=2))
    logs = root / "dvclive" / mode / "plots" / "metrics"
    val_acc = [accuracy * (step / epochs) ** 0.5 for step in range(1, epochs + 1)]
    for split, accs in (("val", val_acc), ("train", [min(1.0, a + 0.05) for a in val_acc])):
        write_tsv(logs / split / "acc.tsv", "acc", accs)
        write_tsv(logs / split / "loss.tsv", "loss", [1 - a for a in accs])
    write_tsv(logs / "lr.tsv", "lr", [0.01] * epochs)
    write_tsv(logs / "epoch_seconds.tsv", "epoch_seconds", [12.5] * epochs)
    summary = {"train": {"loss": 0.2, "acc": val_acc[-1]}, "val": {"loss": 0.3, "acc": val_acc[-1]},
               "lr": 0.01, "epoch_seconds": 12.5, "step": epochs}
    (root / "dvclive" / mode / "metrics.json").write_text(json.dumps(summary))
    write_predictions(root / "plots" / "predictions" / f"{mode}.csv", round(20 * accuracy))


def write_predictions(path: Path, right: int, images: int = 20) -> None:
    """plots/predictions/<mode>.csv as evaluate writes it: the first `right` of the images right."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ["path,actual,predicted,confidence"]
    for i in range(images):
        actual = ("ants", "bees")[i % 2]
        predicted = actual if i < right else ("bees", "ants")[i % 2]
        rows.append(f"val/{actual}/{i}.jpg,{actual},{predicted},0.9")
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture
def compare_dir(tmp_path: Path) -> Path:
    """The stage code and params (3 modes) plus the inputs of every mode; metrics/data.json too."""
    root = tmp_path / "proj"
    root.mkdir()
    copy_code(root)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["modes"] = {mode: params["modes"][mode] for mode in MODES}
    params["mode"] = "freeze_unfreeze"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for mode, (accuracy, epochs) in RUNS.items():
        write_run(root, mode, accuracy, epochs)
    # The split stage's metrics share the folder; compare must not take it for a mode, and reads its counts.
    (root / "metrics" / "data.json").write_text(json.dumps(DATA_METRICS))
    return root


def tsv_values(path: Path) -> list[tuple[int, float]]:
    """(step, value) of each line of a DVCLive TSV."""
    with open(path, newline="") as f:
        return [(int(row["step"]), float(row[list(row)[-1]])) for row in csv.DictReader(f, delimiter="\t")]


def curve_csv(path: Path) -> dict[str, list[tuple[int, float]]]:
    """{mode: [(epoch, value), ...]} of a combined curve file compare writes, modes in file order."""
    curves: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        assert next(reader)[:2] == ["epoch", "mode"]
        for epoch, mode, value in reader:
            curves.setdefault(mode, []).append((int(epoch), float(value)))
    return curves


def run_compare(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.compare"], cwd=root, env=env_with_venv(),
                          capture_output=True, text=True, timeout=300, check=False)


def test_compare_writes_figures_and_summary(compare_dir: Path):
    proc = run_compare(compare_dir)
    assert proc.returncode == 0, proc.stderr

    for name in FIGURES:
        with Image.open(compare_dir / name) as img:
            img.verify()  # a complete, valid PNG
            assert img.format == "PNG"
    assert sorted(p.name for p in (compare_dir / "plots" / "compare").iterdir()) == \
        ["accuracy_cost.png", "accuracy_time.png", "confusion", "train_loss.csv", "val_acc.csv", "val_error.png"]
    assert [p.name for p in (compare_dir / "plots" / "compare" / "confusion").iterdir()] == ["all_modes.png"]

    summary = json.loads((compare_dir / "results" / "summary.json").read_text())
    assert list(summary["modes"]) == MODES  # params order, and data.json is not a mode
    # Expected values from the inputs the fixture wrote, not from the summary itself.
    for mode, (accuracy, epochs) in RUNS.items():
        written = {**fake_metrics(mode, accuracy, epochs), **fake_details(mode, accuracy, epochs)}
        # evaluated_on: these metrics files predate it, so they are of val
        right = round(20 * accuracy)
        assert summary["modes"][mode] == {**{key: written[key] for key in SUMMARY_KEYS}, "evaluated_on": "val",
                                          "arch": "efficientnet_lite0", "image_size": None,
                                          "correct": right, "images": 20,
                                          "accuracy_ci": list(wilson_interval(right, 20))}, mode
    # 17, 18 and 19 of the same 20 images: no pair differs significantly, so the cheapest is recommended
    verdict = summary["verdict"]
    assert sorted(verdict["tied"]) == sorted(MODES) and verdict["worse"] == []
    assert verdict["recommended"] == min(RUNS, key=lambda mode: RUNS[mode][1]) == "frozen"

    table = (compare_dir / "results" / "summary.md").read_text().splitlines()
    assert table[0].startswith("frozen, finetune and freeze_unfreeze are tied on val (17/20, 18/20 and 19/20, ")
    # one backbone: compare.cost auto means train time, as the summary says
    assert verdict["cost"] == "train_seconds" and verdict["selected_on"] == "val"
    assert "frozen is the cheapest by train time (50 s against 62 s and 75 s)" in table[0]
    rows = [line for line in table if line.startswith("|")]
    assert rows[0].startswith("| mode | verdict | val accuracy (95% interval) |")
    assert [row.split("|")[1].strip() for row in rows[2:]] == MODES
    assert [row.split("|")[2].strip() for row in rows[2:]] == ["recommended", "tied", "tied"]
    assert "85.0%" in rows[2] and "17/20" in rows[2] and "1,281" in rows[2]
    # always answering ants gets the 10 ants of the 20 val images; without a test split, val reports
    assert table[2].startswith("Baseline: always answering ants (the most common training class) gets 10/20 (50.0%)")
    assert table[4] == f"Val against test: {NO_TEST_SPLIT}."
    assert summary["baseline"]["correct"] == 10 and summary["baseline"]["not_above"] == []


def test_compare_reads_resumed_log_and_missing_train_curve(compare_dir: Path, monkeypatch):
    """A resumed run logs a step twice (the later line wins); a log without a timestamp column (as
    DVCLive writes with timestamp off) reads the same; a log without the train curve still compares.
    Checked on the lines of the error-curve figure, drawn from the files the stage reads."""
    logs = compare_dir / "dvclive" / "frozen" / "plots" / "metrics"
    (logs / "val" / "acc.tsv").write_text("step\tacc\n1\t0.5\n2\t0.6\n3\t0.7\n3\t0.8\n4\t0.85\n")
    (logs / "train" / "acc.tsv").unlink()
    proc = run_compare(compare_dir)
    assert proc.returncode == 0, proc.stderr

    monkeypatch.chdir(compare_dir)
    runs = {mode: load_mode(mode) for mode in MODES}
    lines = {line.get_label(): line for line in plot_error_curves(runs).axes[0].get_lines()}
    assert "frozen (train)" not in lines and "finetune (train)" in lines
    frozen = lines["frozen (val)"]
    assert list(frozen.get_xdata()) == [1, 2, 3, 4]
    assert list(frozen.get_ydata()) == pytest.approx([0.5, 0.4, 0.2, 0.15])  # error rate: 1 - the later 0.8


@pytest.mark.parametrize("missing", ["metrics/finetune.json", "results/details/freeze_unfreeze.json",
                                     "dvclive/frozen/plots/metrics/val/acc.tsv", "metrics/data.json"])
def test_compare_missing_input_is_one_line_and_writes_nothing(compare_dir: Path, missing: str):
    (compare_dir / missing).unlink()
    proc = run_compare(compare_dir)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and missing in lines[0], proc.stderr
    for name in OUTPUTS:
        assert not (compare_dir / name).exists(), name
    assert not (compare_dir / "plots" / "compare").exists()
    assert [p.name for p in (compare_dir / "results").iterdir()] == ["details"]  # the inputs alone


@pytest.mark.parametrize("name, key", [("metrics/frozen.json", "macro_f1"), ("results/details/frozen.json", "epochs")])
def test_compare_malformed_metrics_is_one_line(compare_dir: Path, name: str, key: str):
    path = compare_dir / name
    metrics = json.loads(path.read_text())
    del metrics[key]
    path.write_text(json.dumps(metrics))
    proc = run_compare(compare_dir)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and name in proc.stderr
    assert key in proc.stderr
    assert not (compare_dir / "results" / "summary.json").exists()
    assert not (compare_dir / "plots" / "compare").exists()


# ---------------------------------------------------------------------------------------------- dvc metrics

# ---------------------------------------------------------------------------------------------- plots

def plot_specs(html: str) -> dict[str, dict]:
    """{div id: Vega-Lite spec} of the plots in an HTML file that `dvc plots show` wrote."""
    found = re.finditer(r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*var spec = (.*?);\s*vegaEmbed\(',
                        html, re.S)
    return {match.group(1): json.loads(match.group(2)) for match in found}


def test_a_sixth_mode_joins_the_all_modes_charts_without_touching_dvc_yaml(compare_dir: Path):
    """A new row in params `modes` is a new line on dvc.yaml's all-modes charts: compare puts every
    mode's curve in one file (epoch, mode, value) and `dvc plots show`, with the repository's dvc.yaml
    as it is, draws it coloured by mode."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["modes"]["frozen_long"] = {**params["modes"]["frozen"], "epochs": 80}
    modes = list(params["modes"])
    assert len(modes) == 6
    (compare_dir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for index, mode in enumerate(modes):
        write_run(compare_dir, mode, 0.6 + 0.05 * index, 3 + index)
    proc = run_compare(compare_dir)
    assert proc.returncode == 0, proc.stderr

    logs = compare_dir / "dvclive"
    for name, tsv in (("val_acc.csv", "val/acc.tsv"), ("train_loss.csv", "train/loss.tsv")):
        curves = curve_csv(compare_dir / "plots" / "compare" / name)
        assert list(curves) == modes, name  # params order
        assert curves == {mode: tsv_values(logs / mode / "plots" / "metrics" / tsv) for mode in modes}, name

    shutil.copy2(ROOT / "dvc.yaml", compare_dir / "dvc.yaml")  # as committed: no line names a mode
    env = env_with_venv()
    for args in (["init", "--no-scm", "-q"], ["plots", "show", "-o", "html"]):
        dvc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=compare_dir, env=env, capture_output=True,
                             text=True, timeout=300, check=False)
        assert dvc.returncode == 0, dvc.stdout + dvc.stderr
    specs = plot_specs((compare_dir / "html" / "index.html").read_text())
    spec = specs["val_accuracy_per_epoch__all_modes"]
    assert spec["encoding"]["color"]["field"] == "mode"
    drawn = {(v["mode"], int(v["epoch"]), float(v["acc"])) for v in spec["data"]["values"]}
    written = curve_csv(compare_dir / "plots" / "compare" / "val_acc.csv")
    assert drawn == {(mode, step, value) for mode, points in written.items() for step, value in points}
    assert {v["mode"] for v in specs["train_loss_per_epoch__all_modes"]["data"]["values"]} == set(modes)


def with_classes(root: Path, mode: str, n_classes: int) -> list[list[int]]:
    """Give a mode's details a confusion matrix of n classes (uneven class sizes); returns the matrix."""
    matrix = [[(3 + i % 4) * 10 if i == j else (1 if j == (i + 1) % n_classes else 0) for j in range(n_classes)]
              for i in range(n_classes)]
    path = root / "results" / "details" / f"{mode}.json"
    details = json.loads(path.read_text())
    details["confusion_matrix"] = {"labels": [f"class_{i:03d}" for i in range(n_classes)], "matrix": matrix}
    path.write_text(json.dumps(details))
    return matrix


def test_confusion_matrices_of_100_classes_are_normalised_one_image_per_mode(compare_dir: Path, monkeypatch):
    """Past a few classes one image per mode (not one wide image of all), each showing the share of each
    actual class (rows sum to 1, whatever the class sizes), not counts."""
    matrices = {mode: with_classes(compare_dir, mode, 100) for mode in MODES}
    proc = run_compare(compare_dir)
    assert proc.returncode == 0, proc.stderr
    folder = compare_dir / "plots" / "compare" / "confusion"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{mode}.png" for mode in MODES)
    for mode in MODES:
        with Image.open(folder / f"{mode}.png") as img:
            assert img.format == "PNG" and img.width < 2000  # one mode's matrix, not five side by side

    monkeypatch.chdir(compare_dir)
    figures = confusion_figures({mode: load_mode(mode) for mode in MODES})
    assert list(figures) == [f"{mode}.png" for mode in MODES]
    for mode in MODES:
        drawn = figures[f"{mode}.png"].axes[0].get_images()[0].get_array()
        expected = np.array([[value / sum(row) for value in row] for row in matrices[mode]])
        assert drawn.shape == (100, 100) and np.allclose(drawn, expected), mode
        assert np.allclose(drawn.sum(axis=1), 1.0)


# ---------------------------------------------------------------------------------------------- backbones

TINY_BACKBONES = {"small": "test_efficientnet", "large": "test_resnet"}  # timm's tiny test networks


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    """Each tiny random-init backbone's cost to run, measured as evaluate measures it (32 px, batch 16)."""
    found = {}
    for mode, name in TINY_BACKBONES.items():
        model = timm.create_model(name, pretrained=False, num_classes=2)
        cost = model_cost(model, 32, torch.device("cpu"), 16)
        found[mode] = {"arch": f"timm/{name}", "latency_ms": cost["latency_batch_1"]["median_ms"],
                       "params": sum(p.numel() for p in model.parameters()), "image_size": 32}
    return found


def candidates_dir(root: Path, rows: dict[str, dict], images: int, test: bool = False, cost: str = "auto") -> Path:
    """A compare project of the candidates `rows` ({mode: arch, latency_ms, params, image_size, train_seconds,
    val_right and, with a test split, test_right}) on `images` images a split, their files as evaluate writes them."""
    root.mkdir(parents=True, exist_ok=True)
    copy_code(root)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["modes"] = {mode: {**params["modes"]["frozen"], "arch": row["arch"]} for mode, row in rows.items()}
    params["compare"] = {"cost": cost}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    half = {"ants": images // 2, "bees": images - images // 2}
    data = {**DATA_METRICS, "val": {"total": images, "per_class": half},
            "test": {"total": images if test else 0, "per_class": half if test else {"ants": 0, "bees": 0}}}
    for mode, row in rows.items():
        write_run(root, mode, 0.9, 4)
        metrics = json.loads((root / f"metrics/{mode}.json").read_text())
        metrics.update(latency_ms=row["latency_ms"], params=row["params"], train_seconds=row["train_seconds"],
                       accuracy=row["test_right" if test else "val_right"] / images)
        details = json.loads((root / f"results/details/{mode}.json").read_text())
        details.update(arch=row["arch"], inference_cost={"image_size": row["image_size"]})
        write_predictions(root / "plots" / "predictions" / f"{mode}.csv", row["test_right" if test else "val_right"],
                          images)
        if test:
            metrics.update(evaluated_on="test", val={"correct": row["val_right"], "images": images})
            write_predictions(root / "results" / "val_predictions" / f"{mode}.csv", row["val_right"], images)
        (root / f"metrics/{mode}.json").write_text(json.dumps(metrics))
        (root / f"results/details/{mode}.json").write_text(json.dumps(details))
    (root / "metrics" / "data.json").write_text(json.dumps(data))
    return root


def compare_in(root: Path, monkeypatch) -> tuple[dict, str]:
    """compare run in-process in `root`: (results/summary.json, results/summary.md up to its table)."""
    monkeypatch.chdir(root)
    assert run_in_process(compare_stage.main) == 0
    opening = (root / "results" / "summary.md").read_text().split("\n| mode |")[0]
    return json.loads((root / "results" / "summary.json").read_text()), opening


@pytest.mark.parametrize("cost", ["auto", "latency_ms", "params", "train_seconds"])
def test_two_backbones_tied_the_cheapest_by_compare_cost_is_recommended(tmp_path, monkeypatch, measured, cost):
    """52/60 against 50/60 (p = 0.5): tied, so the cheaper by compare.cost is recommended; auto means the
    latency, the backbones differing. The train-cheaper is the slower to run, so each measure picks its own."""
    slow = max(measured, key=lambda mode: measured[mode]["latency_ms"])
    rows = {mode: {**row, "val_right": 52 if mode == slow else 50, "train_seconds": 10.0 if mode == slow else 90.0}
            for mode, row in measured.items()}
    summary, opening = compare_in(candidates_dir(tmp_path / "p", rows, 60, cost=cost), monkeypatch)
    verdict = summary["verdict"]
    measure = "latency_ms" if cost == "auto" else cost
    expected = min(rows, key=lambda mode: rows[mode][measure])
    assert verdict["cost"] == measure and sorted(verdict["tied"]) == sorted(rows)
    assert verdict["recommended"] == expected
    assert f"{expected} is the cheapest by {COST_NAMES[measure]}" in opening, opening
    if expected != slow:  # the pick gives up the most accurate: what it saves and what it costs, with the interval
        ratio = rows[slow][measure] / rows[expected][measure]
        assert f"Against the most accurate on val, {slow} (52/60), {expected} is {ratio:.1f}x {SAVINGS[measure]}" \
            in opening, opening
        assert "paired bootstrap interval" in opening
        assert summary["verdict"]["price"]["difference"] == pytest.approx(-2 / 60)


def test_two_backbones_not_tied_the_better_is_recommended_however_costly(tmp_path, monkeypatch, measured):
    """58/60 against 30/60: the more accurate is recommended though it is the slower; the figure marks it
    (filled) and the worse (hollow) on a log-scaled cost axis."""
    slow = max(measured, key=lambda mode: measured[mode]["latency_ms"])
    rows = {mode: {**row, "val_right": 58 if mode == slow else 30, "train_seconds": 50.0}
            for mode, row in measured.items()}
    summary, opening = compare_in(candidates_dir(tmp_path / "p", rows, 60), monkeypatch)
    assert summary["verdict"]["recommended"] == slow and summary["verdict"]["tied"] == [slow]
    assert [worse["mode"] for worse in summary["verdict"]["worse"]] == [mode for mode in rows if mode != slow]
    assert f"{slow} is significantly better on val than every other mode" in opening
    axes = plot_accuracy_cost(summary).axes[0]
    assert axes.get_xscale() == "log"
    filled = {text.get_text(): len(points.get_facecolors()) > 0 and points.get_facecolors()[0][3] > 0
              for points, text in zip(axes.collections[1::2], axes.texts)}
    assert filled == {mode: mode == slow for mode in rows}


def test_modes_of_one_backbone_break_a_tie_by_val_accuracy_before_train_time(tmp_path, monkeypatch, measured):
    """Two modes of one network cost the same to run (their latencies differ by noise alone): the more
    accurate on val is recommended though it trained longer and measured a little slower."""
    small = min(measured, key=lambda mode: measured[mode]["latency_ms"])
    base = measured[small]
    rows = {"quick": {**base, "val_right": 50, "train_seconds": 10.0},
            "careful": {**base, "latency_ms": base["latency_ms"] * 1.05, "val_right": 52, "train_seconds": 90.0},
            "other": {**measured[max(measured, key=lambda mode: measured[mode]["latency_ms"])], "val_right": 52,
                      "train_seconds": 5.0}}
    if rows["other"]["arch"] == base["arch"]:
        pytest.skip("the two tiny backbones measured alike")
    summary, opening = compare_in(candidates_dir(tmp_path / "p", rows, 60), monkeypatch)
    assert summary["verdict"]["recommended"] == "careful"
    assert summary["verdict"]["costs"]["careful"] == summary["verdict"]["costs"]["quick"] == base["latency_ms"]
    assert "quick costs the same to run, so the more accurate on val, then the faster to train" in opening


def test_with_a_test_split_the_choice_is_made_on_val_and_test_only_reports(tmp_path, monkeypatch, measured):
    """Val ties the two (52/60 against 50/60), test does not (the slower 58/60 against 30/60): the cheaper
    is recommended from val, test's paired tests are reported beside it, and the verdict says val was too
    small to separate them, and what the pick gives up on test with its interval."""
    slow = max(measured, key=lambda mode: measured[mode]["latency_ms"])
    fast = next(mode for mode in measured if mode != slow)
    rows = {mode: {**row, "val_right": 52 if mode == slow else 50, "test_right": 58 if mode == slow else 30,
                   "train_seconds": 50.0} for mode, row in measured.items()}
    summary, opening = compare_in(candidates_dir(tmp_path / "p", rows, 60, test=True), monkeypatch)
    verdict = summary["verdict"]
    assert (verdict["selected_on"], summary["reporting"]) == ("val", "test")
    assert verdict["recommended"] == fast and sorted(verdict["tied"]) == sorted(rows)
    assert [worse["mode"] for worse in verdict["on_test"]["worse"]] == [fast]
    assert summary["modes"][fast]["correct"] == 30 and verdict["selection_correct"][fast] == 50
    assert f"Val is too small to separate {fast} from the better" in opening, opening
    price = verdict["price"]
    assert (price["most_accurate"], price["split"]) == (slow, "test")
    assert price["difference"] == pytest.approx(-28 / 60)
    low, high = price["difference_ci"]
    assert low < price["difference"] < high < 0
    assert f"Against the most accurate on test, {slow} (58/60)" in opening
    assert f"{100 * 28 / 60:.1f} points less accurate" in opening
    assert f"On test (which only reports) {fast} is worse than {slow} (30/60 against 58/60, " in opening
