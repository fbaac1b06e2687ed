"""DVCLive logs as training runs: each epoch's metrics are on disk (.resume/<mode>/dvclive/) once the
epoch ends, before the stage does, so that a reader can follow it; the stage publishes them as
dvclive/<mode>/ with the model, and a resumed run's logs hold every epoch once."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

from tests.conftest import make_project
from tests.imagegen import write_class_folders
from transfer.core.paths import live_dir, running_live_dir

EPOCH_LINE = re.compile(r"^epoch +(\d+) ")
EPOCHS = 3


def logged(project, mode: str, folder=live_dir) -> tuple[list[int], dict]:
    """(the epochs in the logs' val accuracy TSV, their metrics.json summary), read from outside."""
    with open(project.path / folder(mode) / "plots" / "metrics" / "val" / "acc.tsv", newline="") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f, delimiter="\t")]
    return steps, json.loads((project.path / folder(mode) / "metrics.json").read_text())


def test_logs_grow_while_training_runs_and_a_resumed_run_logs_each_epoch_once(tmp_path):
    data = tmp_path / "data"
    write_class_folders(data / "train", {"ants": 4, "bees": 4})
    write_class_folders(data / "val", {"ants": 2, "bees": 2}, seed=1)
    project = make_project(tmp_path / "project", data, modes=["finetune"])
    project.set_params(modes={"finetune": {"epochs": EPOCHS}})
    project.dvc("repro", "pack")
    proc = subprocess.Popen([sys.executable, "-m", "stages.train", "finetune"], cwd=project.path, env=project.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in proc.stderr:
            if m := EPOCH_LINE.match(line):
                epoch = int(m.group(1))
                steps, summary = logged(project, "finetune", running_live_dir)  # the stage is still running
                seen.append((epoch, steps, summary["step"]))
                if epoch == 2:
                    proc.kill()  # as kill -9: a run interrupted after epoch 2
                    break
    finally:
        proc.kill()
        proc.wait(timeout=300)
    assert seen == [(1, [1], 1), (2, [1, 2], 2)]
    assert not (project.path / live_dir("finetune")).exists()  # published with the model only

    resumed = project.dvc("repro", "train@finetune")
    assert "resuming after epoch 2" in resumed.stdout + resumed.stderr
    steps, summary = logged(project, "finetune")
    assert steps == [1, 2, 3] and summary["step"] == 3
    assert (project.path / live_dir("finetune") / "plots" / "images" / "train_batch.png").stat().st_size > 0
