"""The predict command on real image files with a real (tiny, untrained) checkpoint.

The checkpoint's head has zero weights and a fixed bias, so every image gets the same, known
probabilities (Wasps 0.7, Bees 0.2, Ants 0.1): the output can be checked exactly."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import copy_code, env_with_venv, with_stage_server
from tests.imagegen import make_image, write_class_folders
from transfer.models.backbones import build_model
from transfer.models.checkpoints import save_checkpoint

FOLDERS = ["ants", "bees", "wasps"]
NAMES = ["Ants", "Bees", "Wasps"]
PROBABILITIES = [0.1, 0.2, 0.7]
EXPECTED_TOP = "Wasps 0.70, Bees 0.20, Ants 0.10"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model, preprocess = build_model("mobilenet_v3_small", len(FOLDERS), pretrained=False)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.log(torch.tensor(PROBABILITIES)))
    preprocess = {**preprocess, "image_size": 32, "resize_size": 36}  # small and fast
    meta = {"arch": "mobilenet_v3_small", "mode": "frozen", "classes": FOLDERS, "class_names": NAMES,
            "preprocess": preprocess, "best_epoch": 1, "val_accuracy": 0.5}
    path = tmp_path_factory.mktemp("checkpoint") / "model.pt"
    save_checkpoint(path, model.eval(), meta)
    return path


@pytest.fixture
def workdir(tmp_path: Path, checkpoint: Path) -> Path:
    """A project copy with models/model.pt and some images: photos/ holds a nested folder, a text file
    (not an image), a hidden macOS resource fork and a PNG; single.jpg lies beside it."""
    root = tmp_path / "proj"
    root.mkdir()
    copy_code(root)
    (root / "models").mkdir()
    shutil.copy2(checkpoint, root / "models" / "model.pt")
    write_class_folders(root / "photos", {"ants": 2, "bees": 1})
    make_image(2, seed=7).save(root / "photos" / "wasp.PNG")
    (root / "photos" / "notes.txt").write_text("not an image")
    (root / "photos" / "ants" / "._ants_000.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    make_image(1, seed=9).save(root / "single.jpg")
    return root


def predict(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m stages.predict ARGS`, started in the stage server (tests/launcher.py)."""
    return subprocess.run(["python", "-m", "stages.predict", *args], cwd=root, env=with_stage_server(env_with_venv()),
                          capture_output=True, text=True, timeout=300, check=False)


FOLDER_FILES = ["photos/ants/ants_000.jpg", "photos/ants/ants_001.jpg", "photos/bees/bees_000.jpg", "photos/wasp.PNG"]


def test_predict_file_and_folder(workdir: Path):
    proc = predict(workdir, "single.jpg", "photos")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{path}: {EXPECTED_TOP}" for path in ["single.jpg", *FOLDER_FILES]]


def test_predict_json_and_top_k(workdir: Path):
    proc = predict(workdir, "--json", "--top-k", "10", "photos")  # 10 > 3 classes: clipped
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["path"] for r in results] == FOLDER_FILES
    for result in results:
        assert [t["class"] for t in result["top"]] == ["Wasps", "Bees", "Ants"]
        assert [t["probability"] for t in result["top"]] == pytest.approx([0.7, 0.2, 0.1], abs=1e-3)
        assert math.isclose(sum(t["probability"] for t in result["top"]), 1.0, abs_tol=1e-3)

    proc = predict(workdir, "--top-k", "1", "single.jpg")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "single.jpg: Wasps 0.70\n"


def test_predict_other_model_file(workdir: Path):
    (workdir / "models" / "model.pt").rename(workdir / "models" / "frozen.pt")
    proc = predict(workdir, "--model", "models/frozen.pt", "single.jpg")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"single.jpg: {EXPECTED_TOP}\n"


def test_predict_unreadable_image_is_reported_and_exit_1(workdir: Path):
    (workdir / "photos" / "bees" / "broken.jpg").write_bytes(b"this is not a JPEG")
    proc = predict(workdir, "photos")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 5  # every file has its line, in order
    assert lines[3].startswith("photos/bees/broken.jpg: unreadable image (")
    assert [line for i, line in enumerate(lines) if i != 3] == [f"{path}: {EXPECTED_TOP}" for path in FOLDER_FILES]
    assert "1 of 5" in proc.stderr

    proc = predict(workdir, "--json", "photos/bees")
    assert proc.returncode == 1
    results = json.loads(proc.stdout)
    assert results[0]["top"][0]["class"] == "Wasps"
    assert results[1]["path"] == "photos/bees/broken.jpg"
    assert "unreadable" in results[1]["error"] and "top" not in results[1]


def test_predict_missing_model_is_one_clear_line(workdir: Path):
    (workdir / "models" / "model.pt").unlink()
    proc = predict(workdir, "single.jpg")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "models/model.pt" in lines[0] and "dvc repro" in lines[0]


def test_predict_user_mistakes(workdir: Path):
    proc = predict(workdir, "no_such.jpg")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("error: no_such.jpg: no such file or folder")

    (workdir / "empty").mkdir()
    proc = predict(workdir, "empty")
    assert proc.returncode == 2 and "no image files" in proc.stderr and "Traceback" not in proc.stderr

    proc = predict(workdir, "--top-k", "0", "single.jpg")
    assert proc.returncode == 2 and "--top-k" in proc.stderr

    proc = predict(workdir, "--help")
    assert proc.returncode == 0 and "--top-k" in proc.stdout and "dvc repro" in proc.stdout
