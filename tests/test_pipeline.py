"""The DVC experience end to end: the real `dvc` CLI in temporary git repos, on tiny generated images.

One project is built once per run and shared by the tests that use it (tests/test_pipeline_changes.py
holds the one-mode project's data.* and model.arch changes, so that the two files run side by side):
  `full`     a clean `git clone` of a pipeline repo with three modes (one epoch each; scratch on its own
             random-init backbone, frozen and finetune sharing model.arch's, so two backbones are candidates
             and two rows share one), after one `dvc repro`, tagged `baseline`; each test starts from that
             commit (git reset + dvc checkout) and checks exactly which stages DVC re-ran after its change.
             partial and freeze_unfreeze (a two-phase row) are left out: each of their stages costs a
             process or two, and what they add is checked elsewhere (tests/test_training.py trains them,
             tests/test_reliability.py resumes freeze_unfreeze inside its second phase through its stage).
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from stages.export import HEADLINE_KEYS
from stages.report import files_dir
from tests.conftest import ALWAYS_RUNS, Project, make_project
from tests.imagegen import write_class_folders
from transfer.core.paths import calibration_png, mode_details, model_file, predictions_csv, val_predictions_csv
from transfer.evaluation.unsure import choose_threshold, read_confidences
from transfer.models.backbones import build_model

# The rows of `full`: scratch on its own backbone, frozen and finetune on model.arch's (frozen second: the
# report test takes the others as MODES[:1] + MODES[2:]).
MODES = ["scratch", "frozen", "finetune"]
ALL_STAGES = ["download", "split", "pack", "audit", *[f"train@{m}" for m in MODES],
              *[f"evaluate@{m}" for m in MODES], "compare", "export"]
FROZEN_BRANCH = ["train@frozen", "evaluate@frozen", "compare"]
VAL_IMAGES = 12
OLD_LR, NEW_LR = 0.1, 0.0001  # modes.frozen.lr as params.yaml sets it, and frozen-lr's
CLASS_NAMES = {"ants": "Ant", "bees": "Honey bee"}
QUEUE_TIMEOUT = 600  # seconds for the queued experiment to finish
TARGET_ACCURACY = 0.05  # reached at some threshold on val by any model that gets one val image right
SCRATCH_ARCH = "resnet18"  # scratch's own backbone in `full` (random init: no weights needed offline)


# ---------------------------------------------------------------------------------------------- helpers

def reran(output: str) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` output says it re-ran, sorted: executed ("Running stage")
    or restored from the run-cache ("is cached - skipping run"); both mean the stage was out of date."""
    names = [line.split("'")[1] for line in output.splitlines()
             if line.startswith("Running stage '") or
             (line.startswith("Stage '") and "is cached - skipping run" in line)]
    return sorted(name for name in names if name not in ALWAYS_RUNS)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def git_json(project: Project, rev: str, path: str) -> dict:
    return json.loads(project.git("show", f"{rev}:{path}").stdout)


def assert_up_to_date(project: Project) -> None:
    changed = project.changed_stages()
    assert changed == {}, f"dvc status is not clean: {changed}"


def restore(project: Project, rev: str = "baseline") -> None:
    """Workspace, params, lock and every output back to `rev` (each test then asserts the exact stages
    its change re-runs, which also fails on anything left out of date)."""
    project.git("reset", "-q", "--hard", rev)
    project.git("clean", "-q", "-fd")
    project.dvc("checkout", "-f", "-q")


def commit(project: Project, message: str, tag: str | None = None) -> None:
    project.git("add", "-A")
    project.git("commit", "-q", "-m", message)
    if tag:
        project.git("tag", "-f", tag)


def write_tiny_dataset(root: Path) -> Path:
    """The conftest `tiny_dataset` (train/ and val/, ants and bees) plus a class-name mapping beside them."""
    write_class_folders(root / "train", {"ants": 12, "bees": 12})
    write_class_folders(root / "val", {"ants": 6, "bees": 6}, seed=1)
    (root / "class_names.json").write_text(json.dumps(CLASS_NAMES))
    return root


def clone(origin: Project, path: Path) -> Project:
    subprocess.run(["git", "clone", "-q", str(origin.path), str(path)], check=True, capture_output=True)
    project = Project(path)
    project.git("config", "user.email", "tests@example.com")
    project.git("config", "user.name", "tests")
    return project


def plot_specs(html: str) -> dict[str, dict]:
    """{div id: Vega-Lite spec} of the plots in an HTML file that `dvc plots show/diff` wrote."""
    found = re.finditer(r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*var spec = (.*?);\s*vegaEmbed\(',
                        html, re.S)
    return {match.group(1): json.loads(match.group(2)) for match in found}


def published(project: Project) -> dict:
    """models/model.pt's contents."""
    return torch.load(project.path / "models/model.pt", weights_only=True)


def assert_published_from(project: Project, mode: str) -> None:
    """models/model.pt is models/modes/<mode>.pt's network with the temperature evaluate@<mode> fit (in
    models/model.onnx's graph too)."""
    model, source = published(project), torch.load(project.path / model_file(mode), weights_only=True)
    assert model["mode"] == mode and model["state_dict"].keys() == source["state_dict"].keys()
    assert all(torch.equal(model["state_dict"][k], v) for k, v in source["state_dict"].items())
    temperature = read_json(project.path / mode_details(mode))["calibration"]["temperature"]
    assert model["temperature"] == temperature and "temperature" not in source
    onnx_meta = {p.key: p.value for p in onnx.load(str(project.path / "models/model.onnx")).metadata_props}
    assert json.loads(onnx_meta["temperature"]) == temperature


def tsv_points(path: Path, column: str) -> set[tuple[int, float]]:
    with open(path, newline="") as f:
        return {(int(row["step"]), float(row[column])) for row in csv.DictReader(f, delimiter="\t")}


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def full(tmp_path_factory) -> SimpleNamespace:
    """A clean clone of a three-mode pipeline repo, after its first `dvc repro`, committed as `baseline`."""
    root = tmp_path_factory.mktemp("full")
    data = write_tiny_dataset(root / "tiny_data")
    origin = make_project(root / "origin", data, modes=MODES)
    # scratch names its own backbone, the rest model.arch's; `mode: auto` as shipped (make_project names a
    # row when given some)
    origin.set_params(mode="auto", train={"epochs": 1}, modes={"scratch": {"arch": SCRATCH_ARCH}})
    commit(origin, "one epoch, scratch on its own backbone")
    project = clone(origin, root / "clone")
    assert not (project.path / "dvc.lock").exists() and not (project.path / "models").exists()
    first = project.dvc("repro")
    commit(project, "baseline: the first dvc repro", tag="baseline")
    return SimpleNamespace(project=project, first=first.stdout, frozen_commits=None)


# ---------------------------------------------------------------------------------------------- 1. repro

def test_clean_clone_repro_runs_every_stage_then_nothing(full):
    """Promise 1: from a clean clone `dvc repro` runs every stage once; a second `dvc repro` runs nothing,
    changes no file, and `dvc status` is clean."""
    assert reran(full.first) == sorted(ALL_STAGES)
    assert "is cached - skipping run" not in full.first  # a fresh clone has no run-cache: all really ran
    project = full.project
    restore(project)
    second = project.dvc("repro")
    assert reran(second.stdout) == []
    assert "didn't change, skipping" in second.stdout
    assert project.git("status", "--porcelain").stdout == ""
    assert_up_to_date(project)
    status = project.dvc("status")
    assert status.stdout.strip() == "Data and pipelines are up to date.", status.stdout


def test_summary_shows_the_baseline_and_that_val_both_selects_and_reports(full):
    """The verdict's baseline is the most common training class (split's metrics/data.json) scored on
    the val images; without a test split the summary says that val both selects and reports."""
    project = full.project
    restore(project)
    data = read_json(project.path / "metrics/data.json")
    train = list(data["train"]["per_class"].items())
    majority = max(train, key=lambda item: (item[1], -train.index(item)))[0]
    baseline = read_json(project.path / "results/summary.json")["baseline"]
    assert (baseline["class"], baseline["correct"]) == (majority, data["val"]["per_class"][majority])
    text = (project.path / "results/summary.md").read_text(encoding="utf-8")
    assert f"Baseline: always answering {majority} (the most common training class)" in text
    assert "Val against test: no test split: val both selects and reports." in text


def test_each_mode_is_calibrated_on_val_and_its_confidences_are_the_calibrated_ones(full):
    """evaluate@<mode> fits a temperature on val and, val being the reporting split here, scores it
    cross-fitted; the predictions CSVs (val's for export, and the reporting split's, here the same
    images) give the confidence the temperature makes of the network's own; the figure is drawn."""
    project = full.project
    restore(project)
    for mode in MODES:
        calibration = read_json(project.path / mode_details(mode))["calibration"]
        metrics = read_json(project.path / f"metrics/{mode}.json")
        assert (calibration["fitted_on"], calibration["scored_on"]) == ("val", "val")
        assert calibration["scored_by"].startswith("cross-fitting")
        assert "temperature" not in metrics and calibration["temperature"] > 0  # details only: short metrics diff
        assert metrics["calibrated_ece"] == calibration["after"]["ece"]
        for when in ("before", "after"):
            low, high = calibration[when]["ece_ci"]
            assert low <= calibration[when]["ece"] <= high, (mode, when)
        assert (project.path / calibration_png(mode)).stat().st_size > 0
        reported = (project.path / predictions_csv(mode)).read_text()
        assert (project.path / val_predictions_csv(mode)).read_text() == reported
        with open(project.path / predictions_csv(mode), newline="") as f:
            rows = list(csv.DictReader(f))
        own = np.array([float(r["uncalibrated_confidence"]) for r in rows]).clip(0.5, 1 - 1e-4)
        # two classes: the top class's logit lead is log(p / (1 - p)), divided by T
        expected = 1 / (1 + np.exp(-np.log(own / (1 - own)) / calibration["temperature"]))
        assert np.abs(np.array([float(r["confidence"]) for r in rows]) - expected).max() < 2e-3, mode


def test_two_backbones_in_one_run_each_row_trains_its_own_and_the_verdict_weighs_their_latency(full):
    """Backbones as candidates: scratch's row names its own backbone, the other rows take model.arch. Each
    row's stages trained and evaluated its own network (checkpoint and details name it, its parameters
    counted, its latency at batch 1 measured), and compare, the backbones differing, weighs the tied by
    latency (compare.cost auto): the modes of one network share its fastest measurement, the recommended
    is the cheapest of the tied, and export published its network."""
    project = full.project
    restore(project)
    params = project.params
    assert params["compare"]["cost"] == "auto"
    arch = {m: params["modes"][m].get("arch", params["model"]["arch"]) for m in MODES}
    assert arch["scratch"] == SCRATCH_ARCH != arch["frozen"]
    details = {m: read_json(project.path / mode_details(m)) for m in MODES}
    metrics = {m: read_json(project.path / f"metrics/{m}.json") for m in MODES}
    assert {m: details[m]["arch"] for m in MODES} == arch
    assert {m: torch.load(project.path / model_file(m), weights_only=True)["arch"] for m in MODES} == arch
    for name in set(arch.values()):
        network, _ = build_model(name, len(CLASS_NAMES), pretrained=False)
        counted = sum(p.numel() for p in network.parameters())
        assert {m: metrics[m]["params"] for m in MODES if arch[m] == name} == \
            {m: counted for m in MODES if arch[m] == name}, name
    assert all(metrics[m]["latency_ms"] > 0 for m in MODES), metrics

    verdict = read_json(project.path / "results/summary.json")["verdict"]
    assert verdict["cost"] == "latency_ms", verdict
    network = {m: (arch[m], details[m]["inference_cost"]["image_size"]) for m in MODES}
    fastest = {m: min(metrics[o]["latency_ms"] for o in MODES if network[o] == network[m]) for m in MODES}
    assert verdict["costs"] == fastest
    recommended = verdict["recommended"]
    assert recommended in verdict["tied"]
    assert verdict["costs"][recommended] == min(verdict["costs"][m] for m in verdict["tied"])
    headline = read_json(project.path / "results/headline.json")
    assert (headline["mode"], headline["arch"]) == (recommended, arch[recommended])


# ---------------------------------------------------------------------------------------------- 4. review

def test_exp_show_lists_every_mode_accuracy(full):
    """Promise 4: `dvc exp show` (JSON and CSV) lists the accuracy of every mode and the headline."""
    project = full.project
    restore(project)
    expected = {f"metrics/{m}.json": read_json(project.path / "metrics" / f"{m}.json")["accuracy"] for m in MODES}
    expected["results/headline.json"] = read_json(project.path / "results/headline.json")["accuracy"]

    rows = json.loads(project.dvc("exp", "show", "--json").stdout)
    workspace = next(row for row in rows if row["rev"] == "workspace")
    metrics = workspace["data"]["metrics"]
    assert {path: metrics[path]["data"]["accuracy"] for path in expected} == expected

    table = list(csv.DictReader(project.dvc("exp", "show", "--csv").stdout.splitlines()))
    row = next(r for r in table if r["rev"] == "workspace")
    for path, accuracy in expected.items():
        assert float(row[f"{path}:accuracy"]) == pytest.approx(accuracy), path


def test_plots_show_renders_all_modes_curves_and_confusions(full, tmp_path):
    """Promise 4: `dvc plots show` writes HTML with every mode's curves (val accuracy, train loss, from
    each mode's TSV) on one chart, every mode's confusion matrix, and the comparison images."""
    project = full.project
    restore(project)
    out = tmp_path / "plots"
    project.dvc("plots", "show", "-o", str(out))
    html = (out / "index.html").read_text()
    specs = plot_specs(html)

    for plot_id, split, column in (("val_accuracy_per_epoch__all_modes", "val", "acc"),
                                   ("train_loss_per_epoch__all_modes", "train", "loss")):
        values = specs[plot_id]["data"]["values"]
        for mode in MODES:
            tsv = f"{mode}/plots/metrics/{split}/{column}.tsv"
            points = {(int(v["epoch"]), float(v[column])) for v in values if v["mode"] == mode}
            assert points, f"{plot_id}: no curve of {mode}"
            assert points == tsv_points(project.path / "dvclive" / tsv, column), f"{plot_id}: {mode}"

    for mode in MODES:
        spec = specs[f"plots_predictions_{mode}_csv"]
        with open(project.path / "plots" / "predictions" / f"{mode}.csv", newline="") as f:
            rows = [(r["actual"], r["predicted"]) for r in csv.DictReader(f)]
        assert len(rows) == VAL_IMAGES
        assert sorted((v["actual"], v["predicted"]) for v in spec["data"]["values"]) == sorted(rows), mode
        encoding = spec["spec"]["encoding"]
        assert (encoding["x"]["field"], encoding["y"]["field"]) == ("actual", "predicted"), mode

    for image in ["plots_compare_val_error.png", "plots_compare_accuracy_time.png",
                  "plots_compare_confusion_all_modes.png", *[f"plots_errors_{m}.png" for m in MODES]]:
        assert (out / "static" / f"workspace_{image}").stat().st_size > 0, image
        assert f"static/workspace_{image}" in html, image


# ---------------------------------------------------------------------------------------------- 2. a mode's row

def test_a_rows_arch_change_leaves_every_other_rows_stages_up_to_date(full):
    """A row's backbone is a param of its own stages alone: on the committed dvc.lock, changing
    modes.<row>.arch (scratch's own, or frozen's where it took model.arch) makes `dvc status` call
    train@<row>, evaluate@<row> and compare (which reads every row) changed, and no other row's stage
    (export follows only when compare's outputs change). `dvc status` trains nothing: it compares the
    params with the lock."""
    project = full.project
    restore(project)
    for row, arch in (("scratch", "resnet34"), ("frozen", "efficientnet_lite1")):
        assert project.params["modes"][row].get("arch") != arch
        project.set_params(modes={row: {"arch": arch}})
        try:
            changed = project.changed_stages()
            assert sorted(changed) == sorted([f"train@{row}", f"evaluate@{row}", "compare"]), changed
            assert f"modes.{row}" in json.dumps(changed[f"train@{row}"]), changed
        finally:
            project.git("checkout", "-q", "--", "params.yaml")


def test_exp_run_switching_mode_trains_nothing(full):
    """Promise 3: `dvc exp run -S mode=<another mode>` runs export alone (no training stage) and changes
    models/model.pt (now that mode's network and temperature) and the headline (now its numbers); with
    export.target_accuracy set in the same run, the unsure threshold chosen on val's calibrated
    confidences is in the headline and in both model files."""
    project = full.project
    restore(project)
    model = md5(project.path / "models/model.pt")
    before = read_json(project.path / "results/headline.json")
    assert before["mode"] == read_json(project.path / "results/summary.json")["verdict"]["recommended"]
    target = next(m for m in MODES if m != before["mode"])

    run = project.dvc("exp", "run", "-S", f"mode={target}", "-S", f"export.target_accuracy={TARGET_ACCURACY}")
    assert reran(run.stdout) == ["export"]
    assert md5(project.path / "models/model.pt") != model
    assert_published_from(project, target)
    headline = read_json(project.path / "results/headline.json")
    val = read_confidences(project.path / val_predictions_csv(target))
    threshold = choose_threshold(val["confidence"], val["correct"], TARGET_ACCURACY)
    assert headline["unsure"]["threshold"] == threshold and published(project)["min_confidence"] == threshold
    onnx_meta = {p.key: p.value for p in onnx.load(str(project.path / "models/model.onnx")).metadata_props}
    assert json.loads(onnx_meta["min_confidence"]) == threshold
    assert headline["unsure"]["scored_by"].startswith("cross-fitting")  # val reports: chosen and scored on halves
    scores = read_json(project.path / f"metrics/{target}.json")
    assert headline["mode"] == target
    assert headline["accuracy"] == scores["accuracy"]
    assert headline["macro_f1"] == scores["macro_f1"]
    assert 50 < scores["train_peak_memory_mib"] < 3 * 1024  # the train stage's own max RSS, recorded
    assert project.params["mode"] == target  # the experiment is applied to the workspace
    assert_up_to_date(project)


def frozen_commits(full) -> SimpleNamespace:
    """Two commits on top of baseline: `published-frozen` (mode: frozen, by `dvc repro`) and `frozen-lr`
    (then `dvc exp run -S ++modes.frozen.lr=0.0001`). Made once, shared by the tests below."""
    if full.frozen_commits is None:
        project = full.project
        restore(project)
        project.set_params(mode="frozen")
        publish = project.dvc("repro")
        commit(project, "publish frozen", tag="published-frozen")
        assert project.params["modes"]["frozen"]["lr"] == OLD_LR
        change = project.dvc("exp", "run", "-S", f"++modes.frozen.lr={NEW_LR}")
        commit(project, f"frozen: lr {NEW_LR}", tag="frozen-lr")
        full.frozen_commits = SimpleNamespace(publish=publish.stdout, change=change.stdout)
    return full.frozen_commits


def test_frozen_row_change_reruns_export_when_frozen_is_published(full):
    """Promise 2: with mode: frozen, changing modes.frozen.* re-runs train@frozen, evaluate@frozen,
    compare and export, and nothing else (and switching `mode` by `dvc repro` re-ran export alone)."""
    runs = frozen_commits(full)
    assert reran(runs.publish) == ["export"]
    assert reran(runs.change) == sorted(FROZEN_BRANCH + ["export"])
    project = full.project
    assert git_json(project, "frozen-lr", "results/headline.json")["accuracy"] == \
        git_json(project, "frozen-lr", "metrics/frozen.json")["accuracy"]


def test_metrics_and_plots_diff_between_commits(full, tmp_path):
    """Promise 4: `dvc metrics diff` between two commits shows the changed mode's accuracy and the
    headline accuracy (old, new, diff), and nothing for the modes that did not change; `dvc plots diff`
    draws both commits."""
    frozen_commits(full)
    project = full.project
    old_rev, new_rev = "published-frozen", "frozen-lr"
    old_acc = git_json(project, old_rev, "metrics/frozen.json")["accuracy"]
    new_acc = git_json(project, new_rev, "metrics/frozen.json")["accuracy"]
    assert old_acc != new_acc, "precondition: lr 0.0001 should change frozen's accuracy on the tiny data"
    old_head = git_json(project, old_rev, "results/headline.json")["accuracy"]
    new_head = git_json(project, new_rev, "results/headline.json")["accuracy"]
    assert (old_head, new_head) == (old_acc, new_acc)

    diff = json.loads(project.dvc("metrics", "diff", old_rev, new_rev, "--json").stdout)
    for path in ("metrics/frozen.json", "results/headline.json"):
        entry = diff[path]["accuracy"]
        assert (entry["old"], entry["new"]) == (old_acc, new_acc), path
        assert entry["diff"] == pytest.approx(new_acc - old_acc), path
    assert not any(f"metrics/{m}.json" in diff for m in MODES if m != "frozen")

    everything = json.loads(project.dvc("metrics", "diff", old_rev, new_rev, "--all", "--json").stdout)
    for mode in MODES:
        assert everything[f"metrics/{mode}.json"]["accuracy"]["new"] == \
            git_json(project, new_rev, f"metrics/{mode}.json")["accuracy"], mode

    text = project.dvc("metrics", "diff", old_rev, new_rev).stdout
    assert re.search(r"^metrics/frozen\.json\s+accuracy\s", text, re.M), text
    assert re.search(r"^results/headline\.json\s+accuracy\s", text, re.M), text

    out = tmp_path / "plots_diff"
    project.dvc("plots", "diff", old_rev, new_rev, "-o", str(out))
    specs = plot_specs((out / "index.html").read_text())
    values = specs["val_accuracy_per_epoch__all_modes"]["data"]["values"]
    assert {v["rev"] for v in values} == {old_rev, new_rev}
    assert {v["rev"] for v in specs["plots_predictions_frozen_csv"]["data"]["values"]} == {old_rev, new_rev}


def markdown_rows(markdown: str) -> list[list[str]]:
    """The body rows of a Markdown table (`dvc metrics diff --md`, a report section), as stripped cells."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in markdown.splitlines() if line.startswith("|")]
    return rows[2:]  # past the header and the |---| line


def test_metrics_show_lists_each_number_once_and_a_one_mode_diff_fits_a_screen(full):
    """Review: `dvc metrics show` lists each number once (summary.json, the per-class scores and DVCLive's
    last-epoch summary are not metrics; a mode's file holds scalars); after a change to frozen's row (the
    exported mode) `dvc metrics diff` lists frozen's metrics and the headline's alone, the headline
    repeating frozen's changed scores, at most 20 rows."""
    frozen_commits(full)
    project = full.project
    shown = json.loads(project.dvc("metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]  # the workspace: the one revision shown
    assert sorted(files) == sorted(["metrics/data.json", "results/audit.json", "results/headline.json",
                                    *[f"metrics/{m}.json" for m in MODES]])
    for mode in MODES:
        scores = files[f"metrics/{mode}.json"]["data"]
        # scalars: numbers, and the name of the split they are of (val here: the dataset has no test set)
        assert scores.pop("evaluated_on") == "val"
        assert len(scores) <= 14 and all(isinstance(v, (int, float)) for v in scores.values()), scores
        scores["evaluated_on"] = "val"
        assert scores == read_json(project.path / f"metrics/{mode}.json")

    diff = json.loads(project.dvc("metrics", "diff", "published-frozen", "frozen-lr", "--json").stdout)
    assert set(diff) == {"metrics/frozen.json", "results/headline.json"}, diff
    frozen = diff["metrics/frozen.json"]
    assert diff["results/headline.json"] == {key: frozen[key] for key in HEADLINE_KEYS if key in frozen}
    rows = markdown_rows(project.dvc("metrics", "diff", "published-frozen", "frozen-lr", "--md").stdout)
    assert rows and len(rows) <= 20, rows
    assert {row[0] for row in rows} == set(diff)


# ---------------------------------------------------------------------------------------------- 4. the PR report

def on_review_branch(full) -> Project:
    """The report's revisions on the shared project: `base` (published-frozen: mode frozen), `frozen-lr`
    (modes.frozen.lr changed, reproduced) checked out clean as branch `review`, and `main`: base plus a
    commit that changes no param, metric or plot (stages/report.py's default base is the merge base
    with main)."""
    frozen_commits(full)
    project = full.project
    project.git("tag", "-f", "base", "published-frozen")
    if project.git("tag", "-l", "notes").stdout.strip() != "notes":
        project.git("checkout", "-q", "-f", "--detach", "base")
        (project.path / "NOTES.md").write_text("A change that touches no param, metric or plot.\n")
        project.git("add", "NOTES.md")
        project.git("commit", "-q", "-m", "notes")
        project.git("tag", "notes")
    project.git("checkout", "-q", "-f", "-B", "review", "frozen-lr")
    project.git("clean", "-q", "-fd")
    project.git("branch", "-f", "main", "notes")
    project.dvc("checkout", "-f", "-q")
    return project


def report(project: Project, out: Path, *revs: str) -> str:
    project.stage("report", *revs, "-o", str(out))
    return out.read_text()


def table_rows(text: str, section: str) -> list[list[str]]:
    """The body rows of the Markdown table under `## <section>`, as lists of stripped cells."""
    return markdown_rows(text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0])


def image_links(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def test_report_shows_the_changed_param_metrics_and_plots_and_nothing_of_the_unchanged_modes(full, tmp_path):
    project = on_review_branch(full)
    out = tmp_path / "pr" / "report.md"
    text = report(project, out, "base", "frozen-lr")
    old = git_json(project, "base", "metrics/frozen.json")
    new = git_json(project, "frozen-lr", "metrics/frozen.json")
    assert old["accuracy"] != new["accuracy"], f"precondition: lr {NEW_LR} should change frozen's accuracy"

    summary = text.splitlines()[0]
    assert "1 param changed" in summary, summary
    assert f"frozen {old['accuracy']:.3f} -> {new['accuracy']:.3f}" in summary, summary
    assert f"headline {old['accuracy']:.3f} -> {new['accuracy']:.3f}" in summary, summary

    assert table_rows(text, "Params") == [["params.yaml", "modes.frozen.lr", str(OLD_LR), str(NEW_LR)]]

    # Exactly the rows `dvc metrics diff` calls changed, among them frozen's accuracy with both values.
    changed = json.loads(project.dvc("metrics", "diff", "base", "frozen-lr", "--json").stdout)
    rows = table_rows(text, "Metrics")
    assert sorted((path, metric) for path, metric, *_ in rows) == \
        sorted((path, metric) for path, metrics in changed.items() for metric in metrics)
    assert ["metrics/frozen.json", "accuracy", f"{old['accuracy']:.5g}", f"{new['accuracy']:.5g}"] == \
        next(row for row in rows if row[:2] == ["metrics/frozen.json", "accuracy"])[:4]

    # The changed images at both revisions, written beside the report and linked relatively.
    files = files_dir(out)
    links = image_links(text)
    assert links and all((out.parent / link).is_file() for link in links), links
    assert all(not Path(link).is_absolute() and link.startswith(f"{files.name}/") for link in links)
    section = text.split("### plots/errors/frozen.png\n", 1)[1].split("\n### ", 1)[0]
    base_link, head_link = image_links(section)
    for link, rev in ((base_link, "base"), (head_link, "frozen-lr")):
        committed = subprocess.run(["git", "show", f"{rev}:plots/errors/frozen.png"], cwd=project.path,
                                   capture_output=True, check=True).stdout
        assert (out.parent / link).read_bytes() == committed, (link, rev)
    assert base_link != head_link
    assert "### val accuracy per epoch, all modes" in text  # an all-modes curve, drawn from its data

    for mode in MODES[:1] + MODES[2:]:  # the modes nothing changed in: no row, no plot
        assert mode not in text.lower(), mode
        assert not any(mode in path.name for path in files.iterdir()), mode


def test_report_between_revisions_that_change_nothing_says_so(full, tmp_path):
    project = on_review_branch(full)
    for revs in (("base", "main"), ("main", "main")):  # a docs-only commit; the same revision twice
        out = tmp_path / f"{'-'.join(revs)}.md"
        text = report(project, out, *revs)
        assert "nothing changed" in text.splitlines()[0], text
        for section in ("params", "metrics", "plots"):
            assert f"No {section} changed." in text, text
        assert "|" not in text and not image_links(text), text
        assert list(files_dir(out).iterdir()) == []


def test_report_defaults_to_the_merge_base_with_main_and_the_workspace(full, tmp_path):
    """On a branch at frozen-lr, with main one commit past where that branch left it: the branch's own change."""
    project = on_review_branch(full)
    merge_base = project.git("merge-base", "main", "HEAD").stdout.strip()
    assert merge_base != project.git("rev-parse", "main").stdout.strip()
    out = tmp_path / "report.md"
    text = report(project, out)
    assert text.splitlines()[0].startswith(f"**{merge_base[:12]} -> workspace**: 1 param changed"), text
    assert table_rows(text, "Params") == [["params.yaml", "modes.frozen.lr", str(OLD_LR), str(NEW_LR)]]


# ---------------------------------------------------------------------------------------------- 5. queue

def queue_status(project: Project) -> dict[str, str]:
    """{experiment name: status} from the table `dvc queue status` prints."""
    statuses = {}
    for line in project.dvc("queue", "status").stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[-1] in ("Queued", "Running", "Success", "Failed", "Killed"):
            statuses[fields[1]] = fields[-1]
    return statuses


def test_queued_experiments_run_with_queue_start(full):
    """Promise 5: `dvc exp run --queue -S ...` then `dvc queue start` run the queued experiment; `dvc exp
    show` lists it with its params and accuracy; the workspace is untouched. One experiment: a second
    would run the same code path again at the cost of a whole branch.
    Promise 2 with `mode: auto`: the change to modes.frozen re-ran train@frozen, evaluate@frozen,
    compare and export (a change to any mode can change the one compare recommends), and nothing else:
    applied, the other modes' models are as they were and the published model is the recommended one."""
    project = full.project
    restore(project)
    assert project.params["mode"] == "auto"
    others = {m: md5(project.path / model_file(m)) for m in MODES if m != "frozen"}
    lrs = {"frozen-lr-high": 0.03}
    for name, lr in lrs.items():
        project.dvc("exp", "run", "--queue", "-n", name, "-S", f"++modes.frozen.lr={lr}")
    assert queue_status(project) == {name: "Queued" for name in lrs}
    try:
        project.dvc("queue", "start")  # returns at once; a worker runs the queue in the background
        deadline = time.monotonic() + QUEUE_TIMEOUT
        while True:
            statuses = queue_status(project)
            if all(statuses.get(name) in ("Success", "Failed", "Killed") for name in lrs):
                break
            assert time.monotonic() < deadline, f"queued experiments still not finished: {statuses}"
            time.sleep(3)
    finally:
        project.dvc("queue", "stop", check=False, timeout=120)
    for name in lrs:
        assert statuses[name] == "Success", project.dvc("queue", "logs", name, check=False).stdout
        assert reran(project.dvc("queue", "logs", name).stdout) == sorted(FROZEN_BRANCH + ["export"]), name

    rows = json.loads(project.dvc("exp", "show", "--json").stdout)
    baseline = project.git("rev-parse", "baseline").stdout.strip()
    experiments = next(row for row in rows if row["rev"] == baseline)["experiments"] or []
    shown = {exp["name"]: exp["revs"][0]["data"] for exp in experiments if exp.get("name") in lrs}
    assert set(shown) == set(lrs)
    for name, data in shown.items():
        params = data["params"]["params.yaml"]["data"]
        assert params["modes"]["frozen"]["lr"] == lrs[name]
        for mode in MODES:
            assert isinstance(data["metrics"][f"metrics/{mode}.json"]["data"]["accuracy"], float), (name, mode)
    assert project.git("status", "--porcelain").stdout == ""
    assert_up_to_date(project)

    project.dvc("exp", "apply", next(iter(lrs)))
    assert {m: md5(project.path / model_file(m)) for m in others} == others
    recommended = read_json(project.path / "results/summary.json")["verdict"]["recommended"]
    assert read_json(project.path / "results/headline.json")["mode"] == recommended
    assert_published_from(project, recommended)
    assert_up_to_date(project)
