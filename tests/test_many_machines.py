"""scripts/exp_on_machine.sh: experiments run on several machines, each in its own clone, against a
shared DVC remote, end up in the main clone's `dvc exp show`. Here two clones on this machine play
the machines, with a bare git repository (file://) and a local folder as the DVC remote."""
from __future__ import annotations

import csv
import io

from tests.conftest import ROOT, make_project

SCRIPT = ROOT / "scripts" / "exp_on_machine.sh"


def test_experiments_of_two_machines_end_in_the_main_clone(tmp_path, tiny_dataset):
    """The main clone runs download, split and pack once and pushes them; two experiments with
    different params, one per machine, train there without running those again, push their
    experiments and the run cache, and after `dvc exp pull origin` the main clone's `dvc exp show`
    lists both with their params and accuracy."""
    main = make_project(tmp_path / "main", tiny_dataset, modes=["frozen"])
    storage = tmp_path / "dvc-storage"
    main.dvc("remote", "add", "-d", "storage", str(storage))
    main.dvc("repro", "pack")
    main.git("add", "-A")
    main.git("commit", "-q", "-m", "DVC remote; data prepared")
    main.dvc("push", "--run-cache")
    branch = main.git("rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
    origin = tmp_path / "origin.git"
    main.git("init", "-q", "--bare", f"--initial-branch={branch}", str(origin))
    main.git("remote", "add", "origin", origin.as_uri())
    main.git("push", "-q", "origin", branch)

    ran = {}
    for machine, lr in (("machine-a", "0.05"), ("machine-b", "0.2")):
        proc = main.run("bash", str(SCRIPT), origin.as_uri(), str(tmp_path / machine), f"lr-{lr}",
                        "-S", f"modes.frozen.lr={lr}")
        ran[machine] = main.ran_stages(proc.stdout)
    for stages in ran.values():
        assert "train@frozen" in stages and not {"download", "split", "pack"} & set(stages), ran
    assert list((storage / "runs").rglob("*")), "no run cache was pushed"

    main.dvc("exp", "pull", "origin")
    shown = list(csv.DictReader(io.StringIO(main.dvc("exp", "show", "--csv").stdout)))
    lrs = {row["Experiment"]: row["modes.frozen.lr"] for row in shown if row["Experiment"]}
    assert lrs == {"lr-0.05": "0.05", "lr-0.2": "0.2"}, shown
    assert all(row["metrics/frozen.json:accuracy"] for row in shown if row["Experiment"]), shown
