"""Bounds on what params.yaml, a model file or an image may ask of the machine, and one-line errors for
values that used to end in a traceback, a hang or the out-of-memory killer. Each case runs in-process
on tiny files."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from stages import download, predict
from tests import test_model_files
from tests.conftest import ROOT, Project, copy_code, run_in_process
from tests.imagegen import write_class_folders
from tests.test_model_files import checkpoint_with, predict_error
from tests.test_params import problems, variant
from transfer.core.param_checks import MAX_IMAGE_SIZE, MAX_NPROC, MAX_WORKERS
from transfer.core.paths import PARAMS_FILE, RAW_DIR
from transfer.models.checkpoints import MAX_RESIZE_SIZE

model_files = test_model_files.model_files  # fixtures: a tiny network's .pt and .onnx, a photo
image = test_model_files.image

# ---------------------------------------------------------------------------------------------- params.yaml


@pytest.mark.parametrize("changes, key, words", [
    ({"train__workers": 10**6}, "train.workers", f"from 0 to {MAX_WORKERS}, got 1000000"),
    ({"train__nproc": 10**5}, "train.nproc", f"must be <= {MAX_NPROC}, got 100000"),
    ({"modes__frozen__nproc": 10**4}, "modes.frozen.nproc", f"must be <= {MAX_NPROC}"),
    ({"train__image_size": 10**6}, "train.image_size", f"must be at most {MAX_IMAGE_SIZE} px"),
    ({"modes__scratch__image_size": 10**5}, "modes.scratch.image_size", "must be at most"),
    ({"audit__image_size": 10**6}, "audit.image_size", f"must be at most {MAX_IMAGE_SIZE} px"),
    ({"pack__short_side": 10**6}, "pack.short_side", f"must be <= {MAX_IMAGE_SIZE}, got 1000000"),
    ({"train__augment__crop_size": 10**6}, "train.augment.crop_size", "must be at most"),
    ({"modes__finetune__augment__crop_size": 10**6}, "modes.finetune.augment.crop_size", "must be at most"),
])
def test_sizes_and_process_counts_are_bounded(changes, key, words):
    lines = problems(variant(**changes))
    assert any(line.startswith(f"params.yaml: {key}: ") and words in line for line in lines), lines


# ---------------------------------------------------------------------------------------------- model files

@pytest.mark.parametrize("preprocess, words", [
    ({"resize_size": 10**6}, f"preprocess.resize_size: must be a whole number from image_size (32) to "
                             f"{MAX_RESIZE_SIZE}, got 1000000"),
    ({"resize_size": 16}, "preprocess.resize_size: must be a whole number from image_size (32)"),
    ({"image_size": 10**6}, f"preprocess.image_size: must be at most {MAX_IMAGE_SIZE}, got 1000000"),
])
def test_a_model_file_asking_for_a_huge_or_too_small_resize_is_one_line(preprocess, words, model_files, image,
                                                                        tmp_path, capsys):
    hostile = checkpoint_with(model_files["pt"], tmp_path / "model.pt",
                              lambda ck: ck["preprocess"].update(preprocess))
    assert words in predict_error(hostile, image, capsys)


def test_an_image_too_large_once_resized_is_refused_before_resizing(model_files, tmp_path, monkeypatch, capsys):
    """A thin image passes the decompression-bomb limit decoded but not resized to the model's short side
    (the limit lowered here so that the image stays tiny and, without the check, the resize cheap)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1, 20_000)).save(thin)
    assert run_in_process(lambda: predict.main(["--model", str(model_files["pt"]), str(thin)])) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(f"{thin}: unreadable image (1x20000 px: at a short side of "), out
    assert "over the decompression-bomb limit (1000000 pixels)" in out[0]


def test_pack_names_an_image_too_large_once_resized(tmp_path, monkeypatch):
    from transfer.core.errors import UserError
    from transfer.core.settings import PackSettings
    from transfer.data.packing import encoded_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    thin = tmp_path / "thin.png"
    Image.new("RGB", (20_000, 1)).save(thin)
    settings = PackSettings(short_side=256, jpeg_draft=True, interpolation="bicubic", encoding="png", jpeg_quality=90,
                            shard_mb=256)
    with pytest.raises(UserError, match=f"^{thin}: 20000x1 px: at a short side of 256 px .*data.exclude$"):
        encoded_image(Path(thin), settings)


# ---------------------------------------------------------------------------------------------- data.url, data.watch

def data_problem(tmp_path: Path, monkeypatch, **data) -> str:
    """The one problem params.check reports with these data settings, run from an empty folder."""
    monkeypatch.chdir(tmp_path)
    [line] = problems(variant(**{f"data__{key}": value for key, value in data.items()}))
    return line


@pytest.mark.parametrize("url, words", [
    ("/proc/self", "data.url: '/proc/self' lies in /proc, a system or private folder"),
    ("/etc", "data.url: '/etc' lies in /etc"),
    ("/", "data.url: '/' lies in /,"),
    ("~/.cache/huggingface", "lies in {home}/.cache, a system or private folder"),
    ("link-to-etc", "data.url: 'link-to-etc' lies in /etc"),
    ("http://[::1", "data.url: not a valid URL (Invalid IPv6 URL), got 'http://[::1'"),
    ("data:,x", "data.url: unsupported scheme data: (use http(s)://"),
])
def test_data_url_never_names_a_system_folder_or_a_bad_url(url, words, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "link-to-etc").symlink_to("/etc")
    line = data_problem(tmp_path, monkeypatch, url=url)
    assert words.format(home=tmp_path / "home") in line, line


@pytest.mark.parametrize("make, words", [
    (lambda path: os.mkfifo(path), "is a FIFO; name a regular file or a folder"),
    (lambda path: path.symlink_to("/dev/zero"), "lies in /dev, a system or private folder"),
    (lambda path: path.symlink_to(path.name), "is a loop of symbolic links; name a regular file or a folder"),
])
@pytest.mark.parametrize("key", ["url", "watch"])
def test_data_url_and_watch_are_a_regular_file_or_folder(key, make, words, tmp_path, monkeypatch):
    """What DVC hashes (data.watch) or download reads: a FIFO or /dev/zero hung `dvc status`."""
    make(tmp_path / "special")
    line = data_problem(tmp_path, monkeypatch, **{key: "special"})
    assert line.startswith(f"params.yaml: data.{key}: ") and words in line, line


def test_a_folder_copy_is_capped_like_an_archive(tmp_path, monkeypatch, capsys):
    project = Project(tmp_path / "work")
    copy_code(project.path)
    shutil.copy2(ROOT / PARAMS_FILE, project.path / PARAMS_FILE)
    dataset = tmp_path / "insects"
    write_class_folders(dataset / "train", {"ants": 2, "bees": 2})
    size_mb = sum(path.stat().st_size for path in dataset.rglob("*") if path.is_file()) / 2**20
    project.set_params(data={"url": str(dataset), "max_unpacked_mb": size_mb / 2})
    monkeypatch.chdir(project.path)
    assert run_in_process(download.main) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"download: error: data.url: {dataset}: its files take more than "
                           f"data.max_unpacked_mb = {size_mb / 2:g} MiB"), line
    assert not (project.path / RAW_DIR).exists()
    project.set_params(data={"max_unpacked_mb": size_mb})
    assert run_in_process(download.main) == 0


# ---------------------------------------------------------------------------------------------- tracebacks

def test_seeds_leave_out_a_nan_or_infinite_accuracy_and_a_seed_that_is_no_number():
    """metrics/<mode>.json of an experiment may hold NaN or Infinity (json reads both) and params.yaml a
    list as train.seed: neither is a seed's accuracy (they ended in a traceback)."""
    from tests.test_report import exp_document, exp_entry
    from transfer.review.seeds import seeds_text, summarize

    document = exp_document([exp_entry("nan", 1, {"frozen": float("nan")}),
                             exp_entry("inf", 2, {"frozen": float("inf")}),
                             exp_entry("list", [3, 4], {"frozen": 0.5}), exp_entry("s0", 0, {"frozen": 0.75})])
    summary = summarize(json.loads(json.dumps(document)))
    assert summary["seeds"] == [0] and summary["modes"]["frozen"]["seeds"] == 1
    assert "frozen: 1 seed, accuracy 0.7500" in seeds_text(summary)


def test_onnx_metadata_nested_too_deep_is_one_line(model_files, image, tmp_path, capsys):
    hostile = test_model_files.onnx_with_metadata(model_files["onnx"], tmp_path / "model.onnx",
                                                  preprocess="[" * 100_000 + "]" * 100_000)
    assert "damaged metadata (preprocess: JSON nested too deep)" in predict_error(hostile, image, capsys)


def test_a_checkpoint_with_unknown_fields_is_refused(model_files, image, tmp_path, capsys):
    hostile = checkpoint_with(model_files["pt"], tmp_path / "model.pt", lambda ck: ck.update(payload=[0] * 10))
    assert "not a model checkpoint of this pipeline (unknown fields: payload)" in predict_error(hostile, image, capsys)


def test_a_checkpoint_record_is_size_checked_before_unpickling(model_files, image, tmp_path, monkeypatch, capsys):
    """The pickled fields are built whole in memory when loaded: their size is read from the zip first
    (the limit lowered here so that the file stays tiny; the tensors' bytes are mapped, not read)."""
    from transfer.models import checkpoints

    monkeypatch.setattr(checkpoints, "MAX_RECORD_BYTES", 1000)
    hostile = checkpoint_with(model_files["pt"], tmp_path / "model.pt", lambda ck: ck.update(history=["x" * 2000]))
    assert "its record takes" in predict_error(hostile, image, capsys)


def test_a_number_past_pythons_digit_limit_is_one_line(tmp_path):
    from transfer.core import params
    from transfer.core.errors import UserError

    (tmp_path / "params.yaml").write_text("mode: " + "7" * 5000 + "\n")
    with pytest.raises(UserError, match=r"^\S+params.yaml: holds a value that cannot be read \(Exceeds the limit "
                                        r"\(4300 digits\) for integer string conversion: value has 5000 digits\)$"):
        params.load(tmp_path / "params.yaml")
