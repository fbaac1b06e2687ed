"""Bounds on what params.yaml, a model file or an image may ask of the machine, and one-line errors for
values that used to end in a traceback, a hang or the out-of-memory killer. Each case runs in-process
on tiny files."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from stages import predict
from tests import test_model_files
from tests.conftest import run_in_process
from tests.test_model_files import checkpoint_with, predict_error
from tests.test_params import problems, variant
from transfer.core.param_checks import MAX_IMAGE_SIZE, MAX_NPROC, MAX_WORKERS
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
    from transfer.data.packing import encoded_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    thin = tmp_path / "thin.png"
    Image.new("RGB", (20_000, 1)).save(thin)
    settings = {"short_side": 256, "jpeg_draft": True, "interpolation": "bicubic", "encoding": "png",
                "jpeg_quality": 90}
    with pytest.raises(UserError, match=f"^{thin}: 20000x1 px: at a short side of 256 px .*data.exclude$"):
        encoded_image(Path(thin), settings)
