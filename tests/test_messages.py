"""Messages built from untrusted names and files: one line each, naming what is wrong. Each case runs
in-process on tiny files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from stages import audit, predict
from tests.conftest import ROOT, run_in_process
from transfer.core import publish
from transfer.core.devices import pick_device
from transfer.core.errors import UserError, printable
from transfer.core.params import mode_key
from transfer.core.paths import PARAMS_FILE, PUBLISH_DIR
from transfer.core.tree_guard import check_data_paths
from transfer.data.layouts import class_folders
from transfer.evaluation.mode_results import parse_predictions
from transfer.models.inference import image_files
from transfer.review.dvc_diff import MAX_CHARS, capped
from transfer.review.report import PREDICTIONS, workspace_predictions

FORGED = "ants\nsplit: error: forged line\x1b[2J"


def one_line(text: str) -> str:
    assert "\n" not in text and "\r" not in text and "\x1b" not in text, text
    return text


def test_ordinary_names_are_shown_as_they_are():
    assert printable("ants") == "ants"
    assert printable("abeille ouvrière 1.jpg") == "abeille ouvrière 1.jpg"
    assert printable(Path("data/raw/bees")) == "data/raw/bees"


def test_predict_text_escapes_paths_and_class_names():
    line = predict.text_line({"path": f"photos/{FORGED}.jpg", "top": [{"class": FORGED, "probability": 0.9}],
                              "unsure": False})
    assert one_line(line).count("forged line") == 2
    error = predict.text_line({"path": FORGED, "error": f"unreadable image ({FORGED})"})
    assert one_line(error).startswith(repr(FORGED))


def test_a_missing_path_with_a_newline_is_one_line(tmp_path):
    with pytest.raises(UserError) as err:
        image_files([str(tmp_path / FORGED)])
    assert one_line(str(err.value)).endswith("no such file or folder")


def test_a_class_folder_with_a_newline_is_one_line(tmp_path):
    (tmp_path / FORGED).mkdir()
    with pytest.raises(UserError) as err:
        class_folders(tmp_path, "random", [])
    assert "need at least two" in one_line(str(err.value))


@pytest.mark.parametrize("make, said", [
    (lambda path: os.mkfifo(path), "a FIFO, not an image file or a folder"),
    (lambda path: os.symlink(path, path), "a loop of symbolic links, not an image file or a folder"),
    (lambda path: None, "no such file or folder"),
])
def test_predict_says_what_a_path_is(tmp_path, make, said):
    path = tmp_path / "photo.jpg"
    make(path)
    with pytest.raises(UserError) as err:
        image_files([str(path)])
    assert str(err.value) == f"{path}: {said}"


def test_predict_names_a_character_device():
    with pytest.raises(UserError) as err:
        image_files(["/dev/zero"])
    assert str(err.value) == "/dev/zero: a character device, not an image file or a folder"


@pytest.mark.parametrize("data", [b"", b"path,actual,predicted\n"])
def test_an_empty_predictions_file_is_named_empty(data):
    where = "plots/predictions/frozen.csv at main"
    with pytest.raises(UserError) as err:
        parse_predictions(data, where)
    assert str(err.value) == f"{where}: empty (no predictions); re-run dvc repro evaluate"


def test_a_huge_param_line_is_cut_and_its_section_kept():
    huge = "| params.yaml | data.url | " + "x" * (2 * MAX_CHARS) + " | y |"
    text = "\n".join(["summary", "## Params", "", "| Path | Param | HEAD | workspace |", huge,
                      "| params.yaml | train.lr | 0.01 | 0.02 |", "", "## Metrics", "", "No metrics changed."])
    report = capped(text, "main", "workspace")
    assert "| params.yaml | train.lr | 0.01 | 0.02 |" in report and "No metrics changed." in report
    assert "| params.yaml | data.url | xxx" in report and len(report) < MAX_CHARS


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_missing_device_names_the_key_it_came_from(tmp_path, monkeypatch):
    with pytest.raises(UserError) as err:
        pick_device("cuda", "audit.device")
    assert str(err.value).startswith("audit.device: cuda asked for, but no CUDA GPU is available")
    params = {"train": {"device": "cpu"}, "modes": {"frozen": {}, "finetune": {"device": "cuda"}}}
    assert mode_key(params, "frozen", "device") == "train.device"
    assert mode_key(params, "finetune", "device") == "modes.finetune.device"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_audit_names_audit_device(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text = (ROOT / PARAMS_FILE).read_text()
    (tmp_path / PARAMS_FILE).write_text(text.replace("  device: auto               # auto | cpu | cuda | cuda:N",
                                                     "  device: cuda               # auto | cpu | cuda | cuda:N"))
    code = run_in_process(audit.main)
    err = capsys.readouterr().err
    assert code == 2 and err.strip().startswith("audit: error: audit.device: cuda asked for"), err


def test_a_regular_file_at_publish_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path(PUBLISH_DIR).write_text("committed by a checkout")
    with pytest.raises(UserError) as err:
        with publish.outputs("split", ["out.txt"]) as staged:
            staged("out.txt").write_text("never published")
    assert str(err.value) == f"{PUBLISH_DIR}: not a folder, where the pipeline keeps one; remove it and run again"
    assert not Path("out.txt").exists()


def test_a_regular_file_at_plots_predictions_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("plots").mkdir()
    Path(PREDICTIONS).write_text("committed by a checkout")
    with pytest.raises(UserError) as err:
        workspace_predictions()
    assert str(err.value).startswith(f"{PREDICTIONS}: a regular file, where evaluate writes a folder")


@pytest.mark.parametrize("key", ["url", "watch"])
def test_check_tree_refuses_a_fifo_as_data_source(tmp_path, key):
    fifo = tmp_path / "dataset.zip"
    os.mkfifo(fifo)
    data = {"url": "https://example.com/data.zip", "watch": "params.yaml", key: str(fifo)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": data}))
    with pytest.raises(UserError) as err:
        check_data_paths(tmp_path / "params.yaml")
    assert str(err.value) == f"params.yaml: data.{key}: {str(fifo)!r} is a FIFO; name a regular file or a folder"
