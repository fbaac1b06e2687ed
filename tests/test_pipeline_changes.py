"""The DVC experience end to end, continued: data.* and model.arch changes, and the README's setup command.

  `scratch`  the pipeline with the `scratch` mode alone and one epoch, after its first `dvc repro`, tagged
             `baseline`: cheap re-runs for the data.* and model.arch changes (random init, so a
             torchvision backbone works offline). Each test starts from that commit (git reset + dvc
             checkout) and checks exactly which stages DVC re-ran after its change.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import ROOT, make_project
from tests.test_pipeline import (
    CLASS_NAMES,
    assert_up_to_date,
    commit,
    md5,
    read_json,
    reran,
    restore,
    write_tiny_dataset,
)
from transfer.core.paths import mode_details


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> SimpleNamespace:
    """The pipeline with the scratch mode alone, one epoch, after its first `dvc repro` (tag `baseline`)."""
    root = tmp_path_factory.mktemp("scratch")
    data = write_tiny_dataset(root / "tiny_data")
    project = make_project(root / "project", data, modes=["scratch"])
    project.set_params(train={"epochs": 1})
    commit(project, "one epoch")
    first = project.dvc("repro")
    commit(project, "baseline", tag="baseline")
    return SimpleNamespace(project=project, first=first.stdout)


# ---------------------------------------------------------------------------------------------- 6. data / arch

def test_scratch_project_first_repro_runs_every_stage(scratch):
    """Promise 1 for a one-mode pipeline (the baseline of the data.* / model.arch tests below)."""
    assert reran(scratch.first) == sorted(["download", "split", "pack", "audit", "train@scratch",
                                           "evaluate@scratch", "compare", "export"])
    restore(scratch.project)


@pytest.mark.parametrize("key, value, stage", [("split_seed", 7, "split"), ("max_unpacked_mb", 100, "download")])
def test_data_param_with_unchanged_output_reruns_its_stage_only(scratch, key, value, stage):
    """Promise 6: a data.* param re-runs the stage that reads it; when its output comes out identical
    (the imagefolder layout ignores split_seed; a folder source ignores max_unpacked_mb) DVC stops
    there and nothing downstream runs."""
    project = scratch.project
    restore(project)
    assert read_json(project.path / "metrics/data.json")["layout"] == "imagefolder"
    lock = yaml.safe_load((project.path / "dvc.lock").read_text())["stages"]
    project.set_params(data={key: value})
    run = project.dvc("repro")
    assert reran(run.stdout) == [stage]
    after = yaml.safe_load((project.path / "dvc.lock").read_text())["stages"]
    assert after[stage]["outs"] == lock[stage]["outs"]
    assert {name: s for name, s in after.items() if name != stage} == \
        {name: s for name, s in lock.items() if name != stage}
    assert project.git("status", "--porcelain").stdout.split() == ["M", "dvc.lock", "M", "params.yaml"]
    assert_up_to_date(project)


def test_data_change_reruns_split_and_everything_after_it(scratch):
    """Promise 6: a data.* change that changes the split (data.class_names) re-runs split and every stage
    downstream of it (pack: the store records the split it was made from), but not download."""
    project = scratch.project
    restore(project)
    project.set_params(data={"class_names": "class_names.json"})
    run = project.dvc("repro")
    assert reran(run.stdout) == sorted(["split", "pack", "audit", "train@scratch", "evaluate@scratch", "compare",
                                        "export"])
    details = read_json(project.path / mode_details("scratch"))
    assert details["confusion_matrix"]["labels"] == list(CLASS_NAMES.values())
    assert_up_to_date(project)


def test_second_backbone_runs_the_same_stages(scratch):
    """Promise 6: changing model.arch alone (to resnet18) re-runs train, evaluate, compare and export,
    not download or split; the exported model and headline are the new backbone's."""
    project = scratch.project
    restore(project)
    model = md5(project.path / "models/model.pt")
    project.set_params(model={"arch": "resnet18"})
    run = project.dvc("repro")
    assert reran(run.stdout) == sorted(["train@scratch", "evaluate@scratch", "compare", "export"])
    assert md5(project.path / "models/model.pt") != model
    assert read_json(project.path / "results/headline.json")["arch"] == "resnet18"
    assert read_json(project.path / mode_details("scratch"))["arch"] == "resnet18"
    assert_up_to_date(project)


# ---------------------------------------------------------------------------------------------- README / repo

def readme_setup_command() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```[a-z]*\n(.*?)```", text, re.S)
    assert block, "README.md: no code block"
    return block.group(1).strip().splitlines()[0]


def test_readme_setup_command_runs_stages_with_the_venv_python(tmp_path):
    """README: the first command (after its venv creation and pip install, which need the network)
    runs the stages with the virtualenv's Python even when another `python` comes first on PATH (or
    none exists, as on a fresh Debian/Ubuntu machine). Checked on the first stage alone."""
    data = write_tiny_dataset(tmp_path / "tiny_data")
    project = make_project(tmp_path / "project", data, modes=["frozen"])
    (project.path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    fake = tmp_path / "fakebin"
    fake.mkdir()
    for name in ("python", "python3"):
        (fake / name).write_text("#!/bin/sh\necho \"$0: not the project's Python\" >&2\nexit 3\n")
        (fake / name).chmod(0o755)
    venv_bin = str(Path(sys.executable).parent)
    path = [str(fake)] + [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin]

    parts = [p.strip() for p in readme_setup_command().split("&&")]
    rest = [p for p in parts if not p.startswith("python3 -m venv") and "pip install" not in p]
    assert rest and rest[-1].endswith("dvc repro"), parts
    command = " && ".join(rest) + " download"
    env = {k: v for k, v in project.env.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(path)
    proc = subprocess.run(["sh", "-c", command], cwd=project.path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
    assert reran(proc.stdout) == ["download"]


def test_repository_is_a_dvc_repository():
    """README: `dvc repro` in a fresh clone needs the repository's .dvc/ (config) committed with it."""
    for name in (".dvc/config", ".dvc/.gitignore"):
        assert (ROOT / name).is_file(), f"{name} missing: run `dvc init` in the repository and commit it"
        ignored = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT)
        assert ignored.returncode == 1, f"{name} is git-ignored"
