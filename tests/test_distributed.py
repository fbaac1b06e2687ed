"""train.nproc: 2 on the CPU (torchrun, gloo, 2 processes), in real git + DVC projects on generated
images: the same weights as one process where BatchNorm statistics are frozen, a resume after a kill
that ends like an uninterrupted run, and one process alone writing files."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from tests.conftest import Project, clone, make_project
from tests.imagegen import write_class_folders
from transfer.core.paths import live_dir, live_tsv, mode_metrics, model_file, resume_dir, resume_state, running_live_dir

# frozen: the head on cached features; finetune: every weight, BatchNorm on its ImageNet statistics.
MODES = ["frozen", "finetune"]
# 24 train images in batches of 7: 7, 7, 7, 3, so that two processes get unequal shares (4 + 3, 2 + 1).
BATCH = 7

# Logs, per process, every file it opens for writing, every folder it makes and every rename's target
# (Python's audit hooks: torch.save writes from C++, into a folder atomic_path made), with its rank.
AUDIT = r'''
import atexit, json, os, sys

WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
written = set()


def hook(event, args):
    if event == "open" and not isinstance(args[0], int):
        mode, flags = args[1], args[2]
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & WRITING):
            written.add(os.path.abspath(os.fsdecode(os.fspath(args[0]))))
    elif event in ("os.mkdir", "os.rename"):
        written.add(os.path.abspath(os.fsdecode(os.fspath(args[1] if event == "os.rename" else args[0]))))


def dump():
    with open(os.path.join(os.environ["AUDIT_DIR"], f"{os.getpid()}.json"), "w") as f:
        json.dump({"rank": os.environ.get("RANK"), "argv": sys.orig_argv, "written": sorted(written)}, f)


sys.addaudithook(hook)
atexit.register(dump)
'''


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Project:
    root = tmp_path_factory.mktemp("distributed")
    write_class_folders(root / "data" / "train", {"ants": 12, "bees": 12})
    write_class_folders(root / "data" / "val", {"ants": 6, "bees": 6}, seed=1)
    project = make_project(root / "template", root / "data", modes=MODES)
    project.set_params(train={"batch_size": BATCH, "epochs": 2}, modes={"finetune": {"epochs": 2}})
    project.dvc("repro", "pack")
    return project


def checkpoint(project: Project, mode: str) -> dict:
    return torch.load(project.path / model_file(mode), map_location="cpu", weights_only=True)


def weights(project: Project, mode: str) -> dict[str, torch.Tensor]:
    return checkpoint(project, mode)["state_dict"]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[n].double() - b[n].double()).abs().max().item() for n in a)


@pytest.fixture(scope="module")
def two_processes(packed, tmp_path_factory) -> tuple[Project, Path]:
    """`dvc repro` of both modes with train.nproc 2 (evaluate of frozen alone: what evaluate records of
    the processes is the same for every mode), every process audited."""
    project = clone(packed, tmp_path_factory.mktemp("nproc2") / "project")
    audit = project.path.parent / "audit"
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(AUDIT, encoding="utf-8")
    project.set_params(train={"nproc": 2})
    repro = project.dvc("repro", f"evaluate@{MODES[0]}", *(f"train@{m}" for m in MODES[1:]),
                        env={"PYTHONPATH": str(audit), "AUDIT_DIR": str(audit)})
    assert "2 processes under torchrun" in repro.stderr + repro.stdout
    return project, audit


def test_two_processes_train_the_weights_of_one(packed, two_processes, tmp_path):
    """frozen and finetune (keep_bn_stats): nproc 2 gives the weights of nproc 1 within 1e-5; the model
    file says how many processes trained, and metrics/<mode>.json repeats it (evaluate ran for frozen at
    nproc 2 alone: the one-process run stops at train, its weights and their record being train's)."""
    one = clone(packed, tmp_path / "one")
    one.dvc("repro", *(f"train@{m}" for m in MODES))
    two, _ = two_processes
    for mode in MODES:
        a, b = weights(one, mode), weights(two, mode)
        assert max_difference(a, b) < 1e-5, mode
        assert checkpoint(one, mode)["world_size"] == 1
        assert checkpoint(two, mode)["world_size"] == 2
    assert json.loads((two.path / mode_metrics(MODES[0])).read_text())["world_size"] == 2


def test_only_rank_0_writes_files(two_processes):
    """Of the processes a 2-process train stage runs (torchrun's agent, ranks 0 and 1), rank 0 alone
    writes in the project: the model, the live logs, the resumable state (DVC's and git's own folders
    aside: the launcher makes the resume key in .git once, before the ranks start)."""
    project, audit = two_processes
    root = str(project.path.resolve())
    writers = {}
    for log in audit.glob("*.json"):
        entry = json.loads(log.read_text())
        if "stages.train" in entry["argv"]:
            inside = [p for p in entry["written"] if p.startswith(root + "/") and "__pycache__" not in p
                      and not p.startswith((root + "/.dvc/", root + "/.git"))]  # the resume key: git's folder
            writers.setdefault(entry["rank"], []).extend(inside)
    assert set(writers) == {None, "0", "1"}, writers  # the agent and both ranks were audited, per mode
    assert writers[None] == [] and writers["1"] == [], writers
    for mode in MODES:
        # The live logs grow in .resume/<mode>/dvclive/ and are published with the model (transfer.core.publish).
        running_tsv = running_live_dir(mode) / live_tsv(mode, "val/acc").relative_to(live_dir(mode))
        for path in (model_file(mode), resume_state(mode), running_tsv):
            assert f"{root}/{path.as_posix()}" in writers["0"], (path, writers["0"])


def run_until_first_epoch(project: Project, sig: int, mode: str) -> str:
    proc = subprocess.Popen([sys.executable, "-m", "stages.train", mode], cwd=project.path, env=project.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(600, proc.kill)
    watchdog.start()
    log = []
    try:
        for line in proc.stderr:
            log.append(line)
            if line.startswith("epoch   1 "):
                proc.send_signal(sig)
                break
        _, rest = proc.communicate(timeout=600)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
    return "".join(log) + rest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_two_processes_killed_after_an_epoch_resume_and_end_as_uninterrupted(sig, packed, two_processes, tmp_path):
    """A 2-process finetune killed after its first epoch (SIGTERM: the processes stop; kill -9 of
    the stage: they end with it) leaves no model and the state of epoch 1; the next `dvc repro`
    resumes after epoch 1 and ends with the weights and logs of the uninterrupted 2-process run."""
    mode = "finetune"
    project = clone(packed, tmp_path / "project")
    project.set_params(train={"nproc": 2})
    log = run_until_first_epoch(project, sig, mode)
    assert not (project.path / model_file(mode)).exists(), log
    assert "Traceback" not in log, log
    state = torch.load(project.path / resume_state(mode), map_location="cpu", weights_only=True)
    assert state["epoch"] == 1, log

    repro = project.dvc("repro", f"train@{mode}")
    assert "resuming after epoch 1 " in repro.stderr + repro.stdout, repro.stderr
    assert not (project.path / resume_dir(mode)).exists()
    uninterrupted, _ = two_processes
    assert max_difference(weights(project, mode), weights(uninterrupted, mode)) == 0
    for series in ("train/loss", "val/acc"):
        assert series_rows(project, mode, series) == series_rows(uninterrupted, mode, series)


def series_rows(project: Project, mode: str, series: str) -> list[list[str]]:
    """A DVCLive series as (step, value) rows, without the timestamp column."""
    header, *rows = [line.split("\t") for line in (project.path / live_tsv(mode, series)).read_text().splitlines()]
    keep = [i for i, name in enumerate(header) if name != "timestamp"]
    return [[row[i] for i in keep] for row in (header, *rows)]


def test_nproc_below_one_is_one_line(packed, tmp_path):
    """train.nproc: 0 stops the stage before any work with one line naming the key; nothing written."""
    project = clone(packed, tmp_path / "project")
    project.set_params(train={"nproc": 0})
    proc = project.stage("train", "frozen", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "train: error: params.yaml: train.nproc: must be >= 1, got 0", proc.stderr
    assert not (project.path / model_file("frozen")).exists()
