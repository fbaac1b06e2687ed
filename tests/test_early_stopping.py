"""Early stopping through the real `dvc repro`: killed and resumed, a run stops at the epoch an
uninterrupted run stops at, and the metrics say which."""
from __future__ import annotations

import json
import re
import signal

from tests.conftest import make_project
from tests.test_reliability import EPOCH_LINE, clone, differences, results, run_until_epoch, small_dataset
from transfer.core.paths import mode_metrics

MODE = "finetune"
# So small a rate that val accuracy never moves: epoch 1 is the best, epochs 2 and 3 tie it, 3 of 8 is the last.
STALLED = {"epochs": 8, "lr": 1e-9, "patience": 2, "stop_on": "val_acc"}


def test_killed_and_resumed_run_stops_at_the_same_epoch(tmp_path):
    uninterrupted = make_project(tmp_path / "uninterrupted", small_dataset(tmp_path / "data"), modes=[MODE])
    uninterrupted.set_params(modes={MODE: STALLED})
    uninterrupted.dvc("repro", "pack")
    project = clone(uninterrupted, tmp_path / "interrupted")
    out = uninterrupted.dvc("repro", f"evaluate@{MODE}")
    assert [int(n) for n in EPOCH_LINE.findall(out.stderr + out.stdout)] == [1, 2, 3]
    assert json.loads((uninterrupted.path / mode_metrics(MODE)).read_text())["stopped_epoch"] == 3

    code, log, last_epoch = run_until_epoch(project, signal.SIGINT, epoch=2, mode=MODE)
    assert code == 130 and last_epoch == 2, log
    repro = project.dvc("repro", f"evaluate@{MODE}")
    output = repro.stdout + repro.stderr
    assert re.search(r"resuming after epoch 2 ", output) and [int(n) for n in EPOCH_LINE.findall(output)] == [3]
    assert "early stopping after epoch 3" in output, output
    assert differences(results(project), results(uninterrupted)) == []
