"""Bad or odd input to the data stages and beyond: what download skips and what no class folder holds
reach metrics/data.json; class names that would merge classes, or a mapping DVC cannot see, are
refused; a full disk, CPU memory running out, a bad params.yaml, a class folder renamed after split and a
model file of another mode or project are each one line, a non-zero exit and nothing half-written."""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from stages import download, evaluate, split, train
from tests.conftest import ROOT, TINY_TRAIN, copy_code, env_with_venv, run_in_process, split_settings
from tests.imagegen import make_image, pack, write_class_folders
from transfer.core.errors import UserError
from transfer.core.paths import DATA_METRICS, PARAMS_FILE, RAW_DIR, SPLIT_DIR, STORE_DIR, model_file
from transfer.data import splitting
from transfer.models.backbones import build_model
from transfer.models.checkpoints import save_checkpoint


@pytest.fixture
def work(tmp_path: Path, monkeypatch) -> Path:
    """The stages and params.yaml (tiny training) in a plain folder, the current directory."""
    path = tmp_path / "work"
    copy_code(path)
    params = yaml.safe_load((ROOT / PARAMS_FILE).read_text())
    params["train"].update(TINY_TRAIN)
    (path / PARAMS_FILE).write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(path)
    return path


def set_params(work: Path, **data) -> None:
    params = yaml.safe_load((work / PARAMS_FILE).read_text())
    params["data"].update(data)
    (work / PARAMS_FILE).write_text(yaml.safe_dump(params, sort_keys=False))


def insects(root: Path) -> Path:
    write_class_folders(root / "train", {"ants": 3, "bees": 3})
    write_class_folders(root / "val", {"ants": 2, "bees": 2}, seed=1)
    return root


def one_error_line(err: str, stage: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"{stage}: error: "), err
    assert sum(line.startswith(f"{stage}: error: ") for line in lines) == 1 and "Traceback" not in err, err
    return lines[-1]


def data_metrics(work: Path) -> dict:
    return json.loads((work / DATA_METRICS).read_text())


# --- what is left out is reported in metrics/data.json ------------------------------------------------

def test_tar_devices_fifos_and_links_to_nothing_are_in_data_json(work, tmp_path, capsys):
    archive = tmp_path / "odd.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(insects(tmp_path / "insects"), arcname="insects")
        for name, kind in (("insects/train/ants/pipe", tarfile.FIFOTYPE), ("insects/val/bees/tty", tarfile.CHRTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            tf.addfile(info)
        link = tarfile.TarInfo("insects/train/bees/gone.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "missing.jpg"
        tf.addfile(link)
    set_params(work, url=str(archive))
    assert run_in_process(download.main) == 0 and run_in_process(split.main) == 0
    device = "not a regular file, folder or link (a device or FIFO)"
    assert data_metrics(work)["download_skipped"] == [
        {"path": "insects/train/ants/pipe", "reason": device}, {"path": "insects/val/bees/tty", "reason": device},
        {"path": "insects/train/bees/gone.jpg", "reason": "link to 'insects/train/bees/missing.jpg', which is not "
                                                          "a file in the archive"}]
    assert data_metrics(work)["download_skipped_count"] == 3
    assert "skipping 'insects/train/ants/pipe'" in capsys.readouterr().err


def test_unreadable_vanished_and_dangling_files_of_a_folder_are_in_data_json(work, tmp_path, monkeypatch):
    """A file the copy cannot read, one that vanishes between listing and copying, and a dangling link
    are left out of data/raw and listed in metrics/data.json; the rest of the dataset is used. (As root,
    permissions do not stop a read, so the unreadable file's copy raises the error the kernel would.)"""
    source = insects(tmp_path / "insects")
    (source / "train" / "bees" / "gone.jpg").symlink_to("nowhere.jpg")
    real_copy = shutil.copy2

    def copy2(src, dst, **kwargs):
        if Path(src).parts[-3:] == ("train", "ants", "ants_001.jpg"):
            raise PermissionError(13, "Permission denied", str(src))
        if Path(src).parts[-3:] == ("train", "bees", "bees_002.jpg"):
            Path(src).unlink()  # vanished after the folder was listed: the real copy fails
        return real_copy(src, dst, **kwargs)

    monkeypatch.setattr(download.shutil, "copy2", copy2)
    set_params(work, url=str(source))
    assert run_in_process(download.main) == 0 and run_in_process(split.main) == 0
    assert data_metrics(work)["download_skipped"] == [
        {"path": "train/ants/ants_001.jpg", "reason": "Permission denied"},
        {"path": "train/bees/bees_002.jpg", "reason": "No such file or directory"},
        {"path": "train/bees/gone.jpg", "reason": "dangling link to nowhere.jpg"}]
    assert data_metrics(work)["train"]["per_class"] == {"ants": 2, "bees": 2}


@pytest.mark.parametrize("layout", ["random", "imagefolder"])
def test_files_outside_the_class_folders_are_in_data_json(layout, tmp_path):
    raw = tmp_path / "raw"
    if layout == "random":
        write_class_folders(raw / "photos", {"cats": 3, "dogs": 3})
        loose = ["photos/stray.jpg", "photos/readme.txt"]
    else:
        insects(raw / "photos")
        loose = ["photos/train/stray.jpg", "photos/val/stray.jpg", "photos/stray.jpg", "notes.txt"]
    (raw / "photos" / "names.json").write_text(json.dumps({"cats": "Cat", "ants": "Ant"}))  # the mapping: used
    for name in loose:
        (raw / name).write_bytes(make_image(0, 5).tobytes() if name.endswith("jpg") else b"a note")
    result = splitting.make_split(raw, split_settings(class_names="names.json"))
    assert result.metrics()["unused_files"] == {"count": len(loose), "paths": sorted(loose)}
    assert f"{len(loose)} files outside the class folders are not used, e.g. {sorted(loose)[0]}" in \
        result.warnings[-1]


# --- class names ------------------------------------------------------------------------------------

def test_two_classes_shown_under_one_name_are_refused(tmp_path):
    raw = tmp_path / "raw"
    write_class_folders(raw, {"fist": 2, "palm": 2, "wave": 2})
    (raw / "names.json").write_text(json.dumps({"fist": "hand", "palm": "hand"}))
    with pytest.raises(UserError, match=r"^data.class_names: classes fist and palm both show as 'hand' in "
                                        r".*names.json; give each class its own name$"):
        splitting.make_split(raw, split_settings(class_names="names.json"))
    prefixed = tmp_path / "prefixed"
    write_class_folders(prefixed, {"000-hand": 5, "001-hand": 5})
    with pytest.raises(UserError, match="classes 000-hand and 001-hand both show as 'hand'; give each"):
        splitting.make_split(prefixed, split_settings())


@pytest.mark.parametrize("where", ["../names.json", "absolute"])
def test_a_class_names_file_outside_the_dataset_is_refused(where, tmp_path):
    """Only data/raw is a dep of split: a mapping elsewhere could change without DVC re-running it."""
    raw = tmp_path / "raw"
    write_class_folders(raw, {"cats": 2, "dogs": 2})
    outside = tmp_path / "names.json"
    outside.write_text(json.dumps({"cats": "Cat"}))
    setting = str(outside) if where == "absolute" else where
    with pytest.raises(UserError, match=r"^data.class_names: .*names.json: lies outside the dataset"):
        splitting.make_split(raw, split_settings(class_names=setting))


# --- one line, non-zero exit, nothing half-written ----------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ("mode: [frozen]\n", "params.yaml: mode: unknown mode ['frozen']"),
    ("train: {lr: 0.1\n", "params.yaml: not valid YAML"),
])
def test_a_stage_run_directly_with_bad_params_is_one_line(work, text, words):
    params = (work / PARAMS_FILE).read_text()
    if text.startswith("mode:"):
        text = "\n".join(line if not line.startswith("mode:") else text.strip() for line in params.splitlines())
    (work / PARAMS_FILE).write_text(text)
    for stage in ("export", "split"):
        proc = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=work, env=env_with_venv(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and words in one_error_line(proc.stderr, stage), proc.stderr


def limited_run(work: Path, stage: str, max_bytes: int) -> subprocess.CompletedProcess:
    """The stage as its own process, every file it writes held under `max_bytes` by the kernel (ulimit
    -f): a write past it fails with EFBIG, as one on a full disk fails with ENOSPC."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=work, env=env_with_venv(),
                          capture_output=True, text=True, timeout=120, preexec_fn=limit)


def leftovers(work: Path) -> list[str]:
    return sorted(p.relative_to(work).as_posix() for p in (work / "data").rglob("*") if ".tmp" in p.name
                  or p.name.startswith(".download."))


@pytest.mark.parametrize("source", ["folder", "archive"])
def test_a_disk_that_fills_while_unpacking_or_copying_is_one_line(source, work, tmp_path):
    data = insects(tmp_path / "insects")
    (data / "train" / "ants" / "big.png").write_bytes(os.urandom(300_000))  # over the limit, incompressible
    set_params(work, url=str(data if source == "folder" else pack(data, tmp_path / "insects.tar.gz")))
    proc = limited_run(work, "download", 100_000)
    line = one_error_line(proc.stderr, "download")
    assert proc.returncode == 2 and "the disk refused a write" in line and "big.png" in line, proc.stderr
    assert not (work / RAW_DIR).exists() and leftovers(work) == []


def test_a_disk_that_fills_while_packing_is_one_line_and_keeps_no_store(work, tmp_path):
    set_params(work, url=str(insects(tmp_path / "insects")))
    assert run_in_process(download.main) == 0 and run_in_process(split.main) == 0
    proc = limited_run(work, "pack", 20_000)
    line = one_error_line(proc.stderr, "pack")
    assert proc.returncode == 2 and "the disk refused a write" in line, proc.stderr
    assert not (work / STORE_DIR).exists() and leftovers(work) == []


def test_a_class_folder_renamed_after_split_is_one_line(work, tmp_path):
    """pack is the first stage after split to read data/raw (train and evaluate read only the store)."""
    set_params(work, url=str(insects(tmp_path / "insects")))
    assert run_in_process(download.main) == 0 and run_in_process(split.main) == 0
    (work / RAW_DIR / "train" / "bees").rename(work / RAW_DIR / "train" / "wasps")
    proc = subprocess.run([sys.executable, "-m", "stages.pack"], cwd=work, env=env_with_venv(),
                          capture_output=True, text=True, timeout=120)
    line = one_error_line(proc.stderr, "pack")
    assert proc.returncode == 2 and "train/bees/bees_000.jpg: missing (data/raw and data/split disagree)" in line
    assert not (work / STORE_DIR).exists() and leftovers(work) == []


def test_running_out_of_cpu_memory_in_training_is_one_line(work, tmp_path, monkeypatch, capsys):
    """The allocation is real: torch's CPU allocator refusing 64 TiB, where a too-large batch fails."""
    set_params(work, url=str(insects(tmp_path / "insects")))
    assert run_in_process(download.main) == 0 and run_in_process(split.main) == 0
    capsys.readouterr()
    monkeypatch.setattr(train, "run_training", lambda *args, **kwargs: torch.empty(1 << 46, dtype=torch.uint8))
    assert run_in_process(lambda: train.main(["frozen"])) == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert line.startswith("train: error: out of CPU memory at train.batch_size 8; try a smaller one"), line
    assert not (work / model_file("frozen")).exists()


@pytest.mark.parametrize("change, words", [
    ({"mode": "partial"}, "a model of mode 'partial', not 'frozen'"),
    ({"classes": ["cats", "dogs"]}, "trained on the classes cats, dogs, but data/split has ants, bees"),
])
def test_evaluate_refuses_a_model_of_another_mode_or_project(change, words, work, tmp_path, capsys):
    set_params(work, url=str(insects(tmp_path / "insects")))
    assert run_in_process(download.main) == 0 and run_in_process(split.main) == 0
    model, preprocess = build_model("efficientnet_lite0", 2, pretrained=False)
    meta = {"arch": "efficientnet_lite0", "mode": "frozen", "classes": ["ants", "bees"],
            "class_names": ["ants", "bees"], "preprocess": {**preprocess, "image_size": 32, "resize_size": 36},
            **change}
    save_checkpoint(work / model_file("frozen"), model, meta)
    capsys.readouterr()
    assert run_in_process(lambda: evaluate.main(["frozen"])) == 2
    line = one_error_line(capsys.readouterr().err, "evaluate")
    assert line.startswith(f"evaluate: error: {model_file('frozen')}: {words}"), line
    assert not (work / "metrics" / "frozen.json").exists()


def test_split_refuses_nothing_it_reported_before(work, tmp_path):
    """A plain dataset still splits with nothing skipped and nothing unused (the new reports are quiet)."""
    set_params(work, url=str(insects(tmp_path / "insects")))
    assert run_in_process(download.main) == 0 and run_in_process(split.main) == 0
    metrics = data_metrics(work)
    assert metrics["download_skipped"] == [] and metrics["unused_files"] == {"count": 0, "paths": []}
    assert sorted(p.name for p in (work / SPLIT_DIR).iterdir()) == ["classes.json", "test.csv", "train.csv", "val.csv"]
    assert not (work / RAW_DIR / ".skipped.json").exists()
