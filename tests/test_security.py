"""No code runs from a model file or a resume state: checkpoints load as tensors and plain data only.

The hostile file is a real pickle whose loading opens (creates) a marker file: each test first shows
that a trusting torch.load would run it, then that predict, evaluate and a resumed train never do."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import make_project
from tests.imagegen import make_image, write_class_folders
from transfer.core.errors import UserError
from transfer.core.paths import model_file
from transfer.models.backbones import build_model
from transfer.models.checkpoints import FORMAT, load_checkpoint, save_checkpoint

EPOCH_LINE = re.compile(r"^epoch +(\d+) ", re.MULTILINE)


class Payload:
    """Unpickling this calls open(marker, "w"): code run by loading the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def hostile_file(path: Path, marker: Path, **plain) -> Path:
    torch.save({"format": FORMAT, **plain, "payload": Payload(marker)}, path)
    return path


def test_the_hostile_file_runs_code_when_trusted(tmp_path):
    """The check of the tests below: loading the file the old way does create the marker."""
    marker = tmp_path / "ran"
    torch.load(hostile_file(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


def test_predict_refuses_a_model_file_that_would_run_code(tmp_path):
    marker = tmp_path / "ran"
    model = hostile_file(tmp_path / "evil.pt", marker, arch="efficientnet_lite0", classes=["a"], class_names=["a"])
    image = tmp_path / "x.jpg"
    make_image(0, 1).save(image)
    proc = subprocess.run([sys.executable, "-m", "stages.predict", "--model", str(model), str(image)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"predict: error: {model}: not a model checkpoint of this pipeline (it holds Python objects besides "
        "tensors and plain data, which are never loaded)"]
    assert not marker.exists()


def test_evaluate_and_a_resumed_train_never_run_code_from_their_files(tmp_path):
    """models/modes/<mode>.pt given to evaluate, and .resume/<mode>/state.pt found by train: refused or
    ignored, the marker never created; train then trains from the start."""
    data = tmp_path / "data"
    write_class_folders(data / "train", {"ants": 4, "bees": 4})
    write_class_folders(data / "val", {"ants": 2, "bees": 2}, seed=1)
    project = make_project(tmp_path / "project", data, modes=["frozen"])
    project.dvc("repro", "pack")
    marker = tmp_path / "ran"
    (project.path / model_file("frozen")).parent.mkdir(parents=True)
    hostile_file(project.path / model_file("frozen"), marker)
    proc = project.stage("evaluate", "frozen", check=False)
    assert proc.returncode == 2 and "not a model checkpoint of this pipeline" in proc.stderr
    assert "Traceback" not in proc.stderr and not marker.exists()

    (project.path / ".resume" / "frozen").mkdir(parents=True)
    torch.save({"fingerprint": "x", "epoch": 1, "payload": Payload(marker)},
               project.path / ".resume" / "frozen" / "state.pt")
    proc = project.stage("train", "frozen")
    assert "resuming" not in proc.stderr and EPOCH_LINE.search(proc.stderr).group(1) == "1"
    assert not marker.exists()
    model, meta = load_checkpoint(project.path / model_file("frozen"))  # the trained file loads safely
    assert meta["mode"] == "frozen" and "last_state_dict" not in meta


def test_a_resume_state_of_other_code_is_not_resumed(tmp_path):
    """Interrupted after epoch 1, then a training module edited: the next run starts over, where the
    unedited code resumes."""
    data = tmp_path / "data"
    write_class_folders(data / "train", {"ants": 4, "bees": 4})
    write_class_folders(data / "val", {"ants": 2, "bees": 2}, seed=1)
    project = make_project(tmp_path / "project", data, modes=["finetune"])
    project.set_params(modes={"finetune": {"epochs": 3}})
    project.dvc("repro", "pack")

    def interrupted_after_epoch_1():
        proc = subprocess.Popen([sys.executable, "-m", "stages.train", "finetune"], cwd=project.path,
                                env=project.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:
            if EPOCH_LINE.match(line):
                proc.kill()
                break
        proc.wait(timeout=300)
        assert (project.path / ".resume" / "finetune" / "state.pt").exists()

    interrupted_after_epoch_1()
    state = project.path / ".resume" / "finetune" / "state.pt"
    saved = state.read_bytes()
    sources = project.path / "transfer" / "training" / "sources.py"
    original = sources.read_text()
    sources.write_text(original + "\n# edited\n")
    edited = project.stage("train", "finetune")
    assert "resuming" not in edited.stderr

    sources.write_text(original)
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_bytes(saved)
    same = project.stage("train", "finetune")
    assert "resuming after epoch 1" in same.stderr


@pytest.mark.parametrize("damage, words", [
    (lambda ck: ck.pop("format"), "no pipeline checkpoint format tag"),
    (lambda ck: ck.pop("preprocess"), "missing or malformed: preprocess"),
    (lambda ck: ck["preprocess"].pop("image_size"), "missing or malformed: preprocess.image_size"),
    (lambda ck: ck.update(classes=["a", "b", "c"]), "its weights do not fit efficientnet_lite0 with 3 classes"),
    (lambda ck: ck.update(arch="resnet19"), "unknown backbone 'resnet19'"),
])
def test_a_tampered_checkpoint_is_one_line(tmp_path, damage, words):
    model, pre = build_model("efficientnet_lite0", 2, pretrained=False)
    save_checkpoint(tmp_path / "m.pt", model, {"arch": "efficientnet_lite0", "classes": ["a", "b"],
                                               "class_names": ["A", "B"], "preprocess": pre})
    contents = torch.load(tmp_path / "m.pt", weights_only=True)
    damage(contents)
    torch.save(contents, tmp_path / "m.pt")
    with pytest.raises(UserError) as err:
        load_checkpoint(tmp_path / "m.pt")
    assert str(err.value).startswith(f"{tmp_path / 'm.pt'}: ") and words in str(err.value)
    assert "\n" not in str(err.value)


def test_a_file_that_is_no_checkpoint_is_one_line(tmp_path):
    for name, content in (("text.pt", b"hello"), ("weights.pt", None)):
        path = tmp_path / name
        if content is None:
            torch.save(build_model("efficientnet_lite0", 2, pretrained=False)[0].state_dict(), path)  # bare weights
        else:
            path.write_bytes(content)
        with pytest.raises(UserError, match=r"not a model checkpoint of this pipeline \(") as err:
            load_checkpoint(path)
        assert "\n" not in str(err.value)
