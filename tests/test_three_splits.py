"""A dataset with train/, val/ and test/: val selects the kept epoch, test reports (real `dvc repro`)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import make_project
from tests.imagegen import write_class_folders
from transfer.core.paths import (
    DATA_METRICS,
    HEADLINE_JSON,
    SUMMARY_JSON,
    SUMMARY_MD,
    mode_details,
    mode_metrics,
    model_file,
    predictions_csv,
    val_predictions_csv,
)

MODE = "frozen"


def three_folders(root: Path) -> Path:
    write_class_folders(root / "train", {"ants": 8, "bees": 8})
    write_class_folders(root / "val", {"ants": 4, "bees": 4}, seed=1)
    write_class_folders(root / "test", {"ants": 2, "bees": 4}, seed=2)
    return root


def swap_test_labels(root: Path) -> None:
    """The same test images under the other class: only test labels change."""
    test = root / "test"
    (test / "ants").rename(test / "was_ants")
    (test / "bees").rename(test / "ants")
    (test / "was_ants").rename(test / "bees")


def kept(project) -> tuple[dict, dict]:
    checkpoint = torch.load(project.path / model_file(MODE), map_location="cpu", weights_only=True)
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in checkpoint["history"]]
    return checkpoint["state_dict"], {"best_epoch": checkpoint["best_epoch"], "history": history}


def read(project, path: Path) -> dict:
    return json.loads((project.path / path).read_text(encoding="utf-8"))


def test_test_folder_reports_and_never_moves_the_kept_epoch(tmp_path):
    """evaluate's headline scores are test's, val's beside them; compare and export say so. Swapping
    the test labels (and nothing else) leaves the kept epoch and weights as they were, and turns the
    test accuracy of these two classes into 1 minus what it was."""
    data = three_folders(tmp_path / "data")
    project = make_project(tmp_path / "project", data, modes=[MODE])
    project.set_params(modes={MODE: {"epochs": 3}})
    project.dvc("repro", "export")  # all but the audit, a leaf
    assert read(project, DATA_METRICS)["test"] == {"total": 6, "per_class": {"ants": 2, "bees": 4}}
    before = read(project, mode_metrics(MODE))
    assert before["evaluated_on"] == "test" and set(before["val"]) >= {"accuracy", "macro_f1", "balanced_accuracy"}
    assert read(project, HEADLINE_JSON)["evaluated_on"] == "test"
    summary_md = (project.path / SUMMARY_MD).read_text(encoding="utf-8")
    assert "| test accuracy (95% interval) |" in summary_md and "| val accuracy (selection) |" in summary_md
    assert "Val (selection) and test (reporting)" in summary_md  # agree or disagree, said before the table
    assert read(project, SUMMARY_JSON)["selection"]["modes"][MODE]["val_correct"] == before["val"]["correct"]
    # chosen on val (whose predictions it read), reported on test
    assert read(project, SUMMARY_JSON)["verdict"]["selection_correct"][MODE] == before["val"]["correct"]
    # the cost to run, timed by evaluate on this machine: headline scalars, the rest in the details
    cost = read(project, mode_details(MODE))["inference_cost"]
    assert before["latency_ms"] == cost["latency_batch_1"]["median_ms"] > 0 and cost["latency_batch_1"]["runs"] >= 50
    assert before["params"] == cost["params"] == read(project, mode_details(MODE))["total_params"]
    assert cost["machine"]["threads"] == 1 and cost["model_file_megabytes"] > 0
    # the temperature is fit on val and scored on test, which it never saw: no cross-fitting
    calibration = read(project, mode_details(MODE))["calibration"]
    assert (calibration["fitted_on"], calibration["scored_on"]) == ("val", "test")
    assert calibration["scored_by"] == "the temperature fit on all of val"
    lines = {path: (project.path / path).read_text(encoding="utf-8").splitlines()
             for path in (predictions_csv(MODE), val_predictions_csv(MODE))}
    assert [len(rows) - 1 for rows in lines.values()] == [6, 8]  # test's images, val's images
    assert lines[predictions_csv(MODE)][0] == lines[val_predictions_csv(MODE)][0]  # the same columns
    weights, selection = kept(project)

    swap_test_labels(data)
    shutil.rmtree(project.path / "data" / "raw")  # the files behind the same data.url changed (README)
    out = project.dvc("repro", "--force", "download").stdout + project.dvc("repro", f"evaluate@{MODE}").stdout
    assert f"Running stage 'evaluate@{MODE}'" in out, out
    after = read(project, mode_metrics(MODE))
    new_weights, new_selection = kept(project)
    assert new_selection == selection
    assert all(torch.equal(weights[name], new_weights[name]) for name in weights)
    assert after["val"] == before["val"]
    assert after["accuracy"] == pytest.approx(1 - before["accuracy"]) and after["accuracy"] != before["accuracy"]
