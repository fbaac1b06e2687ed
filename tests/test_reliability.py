"""Reliability of the pipeline, on the CPU, in real git + DVC projects: a training stage interrupted
(SIGINT, SIGTERM, kill -9) keeps its last finished epoch, writes nothing half-done, and the next
`dvc repro` resumes there and ends exactly where an uninterrupted run ends; two runs with the same
params give identical metrics and another seed different ones; every file a stage writes appears
by a rename; odd datasets work or fail in one line.

All runs train EfficientNet-Lite0 at 32 px on a few generated images (finetune: 3 epochs)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import ROOT, Project, clone, make_project, tiny_row
from tests.imagegen import make_image, write_class_folders
from transfer.core.paths import (
    DATA_METRICS,
    MODELS_DIR,
    SPLIT_DIR,
    live_dir,
    live_tsv,
    mode_details,
    mode_metrics,
    model_file,
    resume_dir,
    resume_state,
    running_live_dir,
)

MODE = "finetune"
EPOCHS = 3
# wall-clock and memory fields: never compared
TIMING = {"train_seconds", "epoch_seconds", "seconds", "timestamp", "peak_memory_mib", "train_peak_memory_mib",
          "latency_ms", "inference_cost"}  # wall-clock measurements: they differ from run to run
INTERRUPTED = "train: interrupted; finished work is kept, the next run resumes"
EPOCH_LINE = re.compile(r"^epoch +(\d+) ", re.MULTILINE)
# The per-epoch series train writes with DVCLive (plots/metrics/<name>.tsv), besides epoch_seconds.
SERIES = ("train/loss", "train/acc", "val/loss", "val/acc", "lr")


# --- projects --------------------------------------------------------------------------------------

def small_dataset(root: Path) -> Path:
    write_class_folders(root / "train", {"ants": 8, "bees": 8})
    write_class_folders(root / "val", {"ants": 4, "bees": 4}, seed=1)
    return root


@pytest.fixture(scope="module")
def split_project(tmp_path_factory) -> Project:
    """finetune alone, 3 epochs at 32 px, on 16 train / 8 val images; download, split and pack already run."""
    root = tmp_path_factory.mktemp("reliability")
    project = make_project(root / "template", small_dataset(root / "data"), modes=[MODE])
    project.set_params(modes={MODE: {"epochs": EPOCHS}})
    project.dvc("repro", "pack")
    return project


@pytest.fixture(scope="module")
def reference(split_project, tmp_path_factory) -> dict:
    """What an uninterrupted `dvc repro` gives: every result file, minus wall-clock timings."""
    project = clone(split_project, tmp_path_factory.mktemp("reference") / "project")
    project.dvc("repro", f"evaluate@{MODE}")
    found = results(project)
    assert_every_epoch_logged(found, MODE, EPOCHS)
    return found


def without_timing(obj):
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def tsv_rows(tsv: Path) -> list[list[str]]:
    """A DVCLive TSV, header included, without its `timestamp` column (the one field that differs
    between runs; DVCLive writes it only when asked): `step` (the epoch) and the value stay."""
    header, *rows = [line.split("\t") for line in tsv.read_text().splitlines()]
    keep = [i for i, name in enumerate(header) if name != "timestamp"]
    return [[row[i] for i in keep] for row in (header, *rows)]


def results(project: Project, mode: str = MODE) -> dict:
    """metrics/*.json, dvclive/<mode>/ (summary and per-epoch TSVs: steps and values) and the
    checkpoint's weights and meta, timings removed: floats are compared exactly (one CPU, seeded)."""
    path = project.path
    found = {}
    names = [DATA_METRICS, live_dir(mode) / "metrics.json"]
    if (path / mode_metrics(mode)).exists():  # evaluate@<mode> may not have run
        names += [mode_metrics(mode), mode_details(mode)]
    for name in names:
        found[name.as_posix()] = without_timing(json.loads((path / name).read_text(encoding="utf-8")))
    for tsv in sorted((path / live_dir(mode) / "plots").rglob("*.tsv")):
        if tsv.stem not in TIMING:
            found[tsv.relative_to(path).as_posix()] = tsv_rows(tsv)
    checkpoint = torch.load(path / model_file(mode), map_location="cpu", weights_only=True)
    weights = checkpoint.pop("state_dict")
    found["state_dict bytes"] = {name: tensor.numpy().tobytes() for name, tensor in weights.items()}
    found["checkpoint meta"] = without_timing(checkpoint)
    return found


def assert_every_epoch_logged(found: dict, mode: str, epochs: int) -> None:
    """The results hold every per-epoch series, each with steps 1..epochs: else comparing them says little."""
    for series in SERIES:
        rows = found.get(live_tsv(mode, series).as_posix())
        assert rows is not None, f"{live_tsv(mode, series)} missing"
        assert rows[0] == ["step", series.rsplit("/", 1)[-1]], rows[0]
        assert [int(row[0]) for row in rows[1:]] == list(range(1, epochs + 1)), rows


def differences(a: dict, b: dict) -> list[str]:
    return [key for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def stray_files(root: Path) -> list[str]:
    """Half-written leftovers: atomic_path's aside folders (.<name>.<random>.tmp) outside .resume/."""
    return [p.relative_to(root).as_posix() for p in root.rglob(".*.tmp")
            if not p.relative_to(root).as_posix().startswith((".git/", ".dvc/", ".resume/"))]


# --- interruption ---------------------------------------------------------------------------------

def run_until_epoch(project: Project, sig: int, epoch: int = 2, mode: str = MODE) -> tuple[int, str, int]:
    """Start `python -m stages.train`, send `sig` as soon as its log says `epoch` is finished;
    return (exit code, the whole log, the last epoch the log said was finished)."""
    proc = subprocess.Popen([sys.executable, "-m", "stages.train", mode], cwd=project.path, env=project.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(600, proc.kill)
    watchdog.start()
    try:
        log = []
        for line in proc.stderr:
            log.append(line)
            if (m := EPOCH_LINE.match(line)) and int(m.group(1)) >= epoch:
                proc.send_signal(sig)
                break
        else:
            proc.wait()
            pytest.fail(f"training ended ({proc.returncode}) before epoch {epoch}:\n{''.join(log)}")
        _, rest = proc.communicate(timeout=600)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
    log = "".join(log) + rest
    return proc.returncode, log, max(int(n) for n in EPOCH_LINE.findall(log))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_interrupted_training_resumes_and_ends_like_an_uninterrupted_run(sig, split_project, reference, tmp_path):
    """Killed after epoch 2 (Ctrl-C, SIGTERM, kill -9): one line and exit 130 (kill -9: nothing to say),
    neither output (model, dvclive/<mode>/: published as a set) and no half-written file, the state and
    live logs (.resume/<mode>/dvclive/) of the last finished epoch kept; the next `dvc repro`
    says it resumes after that epoch (at most the epoch in progress is lost) and its model, metrics
    and logs equal those of a run never interrupted. After Ctrl-C the repro goes on to evaluate and its
    metrics are compared too; after the other signals it stops at train (evaluate reads only train's model,
    compared weight for weight: another evaluate would check nothing more)."""
    project = clone(split_project, tmp_path / "project")
    stages = [f"train@{MODE}", f"evaluate@{MODE}"] if sig == signal.SIGINT else [f"train@{MODE}"]
    code, log, last_epoch = run_until_epoch(project, sig)

    assert last_epoch < EPOCHS, f"the signal came too late to interrupt anything:\n{log}"
    assert "Traceback" not in log, log
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 130, log
        assert log.rstrip("\n").splitlines()[-1] == INTERRUPTED, log
        assert log.count("interrupted") == 1, log
    assert not (project.path / model_file(MODE)).exists()
    assert not (project.path / live_dir(MODE)).exists()
    # The live logs hold the finished epochs, each once (the next run starts them again).
    running_tsv = project.path / running_live_dir(MODE) / "plots" / "metrics" / "val" / "acc.tsv"
    steps = [row[0] for row in tsv_rows(running_tsv)[1:]]
    assert steps == [str(epoch) for epoch in range(1, last_epoch + 1)], steps
    assert stray_files(project.path) == []
    state = torch.load(project.path / resume_state(MODE), map_location="cpu", weights_only=True)
    assert state["epoch"] == last_epoch, "the last finished epoch was not kept"

    repro = project.dvc("repro", stages[-1])
    assert project.ran_stages(repro.stdout) == stages, repro.stdout
    resumed = re.search(r"resuming after epoch (\d+)", repro.stdout + repro.stderr)
    assert resumed and int(resumed.group(1)) == last_epoch >= 2, repro.stdout + repro.stderr
    assert [int(n) for n in EPOCH_LINE.findall(repro.stdout + repro.stderr)] == list(
        range(last_epoch + 1, EPOCHS + 1)), "the resumed run did not train exactly the epochs left"
    assert not (project.path / resume_dir(MODE)).exists(), "a finished run leaves no resumable state"
    evaluated = (mode_metrics(MODE).as_posix(), mode_details(MODE).as_posix())
    expected = {name: found for name, found in reference.items() if len(stages) == 2 or name not in evaluated}
    assert differences(results(project), expected) == []
    assert json.loads(project.dvc("status", stages[-1], "--json").stdout) == {}  # dvc.lock up to date


def test_two_phase_mode_resumes_inside_its_second_phase(split_project, tmp_path):
    """freeze_unfreeze (1 head-only epoch on cached features, then 2 of the whole network), Ctrl-C'd
    after epoch 2, inside its second phase: the next `dvc repro` skips the finished head phase, resumes
    the second one with its optimiser and schedule, and ends with the model and logs of an
    uninterrupted run."""
    mode = "freeze_unfreeze"
    row = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))["modes"][mode]
    tiny_row(row, epochs=1)
    row["phases"] = [{"trainable": "head", "epochs": 1, "lr": 0.1}, {"trainable": "all", "epochs": 2, "lr": 0.003}]
    # split_project's data, split and store (pack reads no mode's row), with the two-phase row added
    uninterrupted = clone(split_project, tmp_path / "uninterrupted")
    uninterrupted.set_params(modes={mode: row})
    project = clone(uninterrupted, tmp_path / "interrupted")
    uninterrupted.dvc("repro", f"train@{mode}")
    expected = results(uninterrupted, mode)
    assert_every_epoch_logged(expected, mode, 3)

    code, log, last_epoch = run_until_epoch(project, signal.SIGINT, epoch=2, mode=mode)
    assert code == 130 and last_epoch == 2, log
    repro = project.dvc("repro", f"train@{mode}")
    output = repro.stdout + repro.stderr
    assert f"resuming after epoch {last_epoch} " in output, output
    assert [int(n) for n in EPOCH_LINE.findall(output)] == [3], output
    assert differences(results(project, mode), expected) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_interrupt_while_starting_is_one_line(sig, split_project, tmp_path):
    """Ctrl-C (or SIGTERM) while the stage is still importing torch & co. (seconds, before any of its
    own code runs): one line and exit 130, not a traceback (nor a silent death), and no model written."""
    project = clone(split_project, tmp_path / "project")
    proc = subprocess.Popen([sys.executable, "-m", "stages.train", MODE], cwd=project.path, env=project.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        maps = Path(f"/proc/{proc.pid}/maps")
        deadline = time.monotonic() + 60
        if maps.exists():  # Linux: wait until torch's library is loaded, i.e. `import torch` is under way
            while time.monotonic() < deadline and proc.poll() is None and "libtorch" not in maps.read_text():
                time.sleep(0.01)
        else:
            time.sleep(0.5)
        proc.send_signal(sig)
        _, log = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, log
    assert len(log.strip().splitlines()) == 1 and log.startswith("train: interrupted"), log
    assert not (project.path / MODELS_DIR).exists()


# --- determinism and atomic writes ------------------------------------------------------------------

AUDIT = r'''
"""Run a stage (python AUDIT stages.<name> args...) and log, as JSON lines, every file it opens for
writing and every rename: Python's audit hooks, no mocks."""
import json, os, runpy, sys

LOG = os.environ["AUDIT_LOG"]
WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
events, done = [], [False]


def absolute(path):
    return os.path.abspath(os.fsdecode(os.fspath(path)))


def hook(event, args):
    if done[0]:
        return
    try:
        if event == "open" and not isinstance(args[0], int):
            mode, flags = args[1], args[2]
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & WRITING):
                events.append(["write", absolute(args[0])])
        elif event == "os.rename":
            events.append(["rename", absolute(args[0]), absolute(args[1])])
    except Exception:  # an argument of a shape we do not know (a descriptor, ...): not a path
        pass


def dump():
    done[0] = True
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(events) + "\n")


sys.addaudithook(hook)
import atexit
atexit.register(dump)
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
sys.path[0] = os.getcwd()  # as `python -m` has it
runpy.run_module(module, run_name="__main__", alter_sys=True)
'''

SKIP_PARTS = {".git", ".dvc", "__pycache__"}


def snapshot(root: Path) -> dict[str, tuple]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_PARTS]
        for name in filenames:
            stat = (Path(dirpath) / name).stat()
            found[os.path.join(dirpath, name)] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def audited(split_project, tmp_path_factory) -> tuple[Project, dict]:
    """Every stage of the pipeline run in turn (download to export) under an audit hook that logs
    what each writes; returns the project and, per stage, (events, files new or changed)."""
    project = clone(split_project, tmp_path_factory.mktemp("audited") / "project")
    wrapper = project.path.parent / "audit.py"
    wrapper.write_text(AUDIT, encoding="utf-8")
    log = project.path.parent / "audit.jsonl"
    audit = {}
    for stage in (["download"], ["split"], ["pack"], ["train", MODE], ["evaluate", MODE], ["compare"], ["export"]):
        before = snapshot(project.path.resolve())  # the resolved paths the audit hook logs
        proc = project.run(sys.executable, str(wrapper), f"stages.{stage[0]}", *stage[1:],
                           env={"AUDIT_LOG": str(log)}, check=False)
        assert proc.returncode == 0, f"{stage}: {proc.stderr}"
        events = json.loads(log.read_text().splitlines()[-1])
        after = snapshot(project.path.resolve())
        changed = sorted(path for path, stat in after.items() if before.get(path) != stat)
        audit["@".join(stage)] = (events, changed, set(after))
    return project, audit


def test_every_file_a_stage_writes_appears_by_a_rename(audited):
    """No stage writes a file in place: each file it creates or changes in the project arrived by a
    rename (of itself or of a folder holding it), and no file it opened for writing is still at that
    path when it ends (it wrote aside, then renamed). Train's live logs too: appended to in
    .resume/<mode>/dvclive/ as each epoch ends, they arrive in dvclive/<mode>/ with the model."""
    project, audit = audited
    root = str(project.path.resolve())
    live = str(project.path.resolve() / live_dir(MODE)) + os.sep
    assert any(path.startswith(live) for path in audit[f"train@{MODE}"][1])  # the logs were written
    for stage, (events, changed, existing) in audit.items():
        renamed = [dst for kind, *paths in events if kind == "rename" for dst in paths[1:]]
        written = {path for kind, path, *_ in events if kind == "write" and path.startswith(root + os.sep)}
        written = {p for p in written if not SKIP_PARTS & set(Path(p).relative_to(root).parts)}
        assert changed, f"{stage} wrote nothing?"
        # Every stage writes aside in the project first: none seen means the hook, not the stage, failed.
        assert written, f"{stage}: the audit hook saw no file opened for writing in the project"
        for path in changed:
            assert any(path == dst or path.startswith(dst + os.sep) for dst in renamed), \
                f"{stage}: {Path(path).relative_to(root)} appeared without a rename"
        in_place = sorted(Path(p).relative_to(root).as_posix() for p in written & existing)
        assert in_place == [], f"{stage} wrote these in place: {in_place}"
    assert stray_files(project.path) == []


def test_two_runs_with_the_same_params_give_identical_results(audited, reference):
    """Two separate runs (one by `dvc repro`, one stage by stage) with the same params: identical
    metrics, DVCLive logs and model weights, every field but wall-clock timings."""
    project, _ = audited
    assert differences(results(project), reference) == []


def test_another_seed_gives_other_results(audited, reference):
    """Changing train.seed changes the run: other metrics and other weights."""
    project, _ = audited
    project.set_params(train={"seed": 1})
    project.stage("train", MODE)
    project.stage("evaluate", MODE)
    changed = differences(results(project), reference)
    assert DATA_METRICS.as_posix() not in changed  # the split has its own seed, data.split_seed
    for name in ((live_dir(MODE) / "metrics.json").as_posix(), "state_dict bytes"):
        assert name in changed
    assert without_timing(json.loads((project.path / mode_metrics(MODE)).read_text()))["loss"] != \
        reference[mode_metrics(MODE).as_posix()]["loss"]


# --- odd datasets -------------------------------------------------------------------------------------

def odd_dataset(root: Path) -> Path:
    """ImageFolder data in a folder with spaces and non-ASCII characters: a class of one image, a
    3000x3000 image, file and class names with spaces and accents."""
    write_class_folders(root / "train", {"ants": 6, "abeilles à miel": 6})
    write_class_folders(root / "val", {"ants": 3, "abeilles à miel": 3}, seed=1)
    lone = root / "train" / "één klasse"
    lone.mkdir()
    make_image(2, 7).save(lone / "enige foto ü.jpg")
    big = Image.new("RGB", (3000, 3000), (200, 40, 40))
    big.paste(make_image(0, 99, size=(1500, 1500)), (750, 750))
    big.save(root / "train" / "ants" / "gross bild ß.jpg", quality=80)
    return root


def test_odd_dataset_trains_and_evaluates(tmp_path):
    """A path with spaces and non-ASCII characters (the project's and the data's), a one-image class
    and a 3000x3000 image: `dvc repro` trains and evaluates; the lone class is named in a warning."""
    data = odd_dataset(tmp_path / "données d'entrée")
    project = make_project(tmp_path / "mon projet ü", data, modes=["frozen"])
    repro = project.dvc("repro", "evaluate@frozen")
    assert "Traceback" not in repro.stdout + repro.stderr
    assert "warning: class één klasse has no validation images" in repro.stdout + repro.stderr
    split = json.loads((project.path / DATA_METRICS).read_text(encoding="utf-8"))
    assert split["train"]["per_class"] == {"abeilles à miel": 6, "ants": 7, "één klasse": 1}
    assert split["skipped"] == []
    details = json.loads((project.path / mode_details("frozen")).read_text(encoding="utf-8"))
    assert details["val_images"] == 6 and details["per_class"]["één klasse"]["support"] == 0
    assert details["confusion_matrix"]["labels"] == ["abeilles à miel", "ants", "één klasse"]
    checkpoint = torch.load(project.path / model_file("frozen"), map_location="cpu", weights_only=True)
    assert checkpoint["classes"] == ["abeilles à miel", "ants", "één klasse"]


@pytest.mark.parametrize("case", ["val class missing from train", "train folder of the class empty"])
def test_dataset_whose_val_has_a_class_train_lacks_fails_in_one_line(case, tmp_path):
    """Val holds a class that train lacks (no folder, or an empty one): the split stage stops with
    one line naming the class, no traceback, and writes no split."""
    data = small_dataset(tmp_path / "data")
    write_class_folders(data / "val", {"wasps": 2}, seed=2)
    if case == "train folder of the class empty":
        (data / "train" / "wasps").mkdir()
    project = make_project(tmp_path / "project", data, modes=["frozen"])
    repro = project.dvc("repro", "split", check=False)
    output = repro.stdout + repro.stderr
    assert repro.returncode != 0
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("split: error:")]
    assert len(errors) == 1 and "wasps" in errors[0], output
    expected = "class missing from" if case.startswith("val class") else "has no usable training images"
    assert expected in errors[0]
    assert not (project.path / SPLIT_DIR).exists()
    assert stray_files(project.path) == []

