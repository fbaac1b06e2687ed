"""Model files given to `python -m stages.predict --model FILE`: every field is checked when the file
is opened, and a wrong one is one line naming the field (exit 2, no traceback), never a failure later.

The hostile files are real ones edited: a tiny random-init network exported to ONNX the way the
export stage does it, its metadata then changed with the `onnx` package; and a checkpoint saved with
save_checkpoint, its plain fields then changed."""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from stages import predict
from tests.conftest import ROOT, env_with_venv, run_in_process
from tests.imagegen import make_image
from transfer.core.errors import SHOWN_CHARS, UserError, name_count
from transfer.core.param_checks import INTERPOLATIONS, MIN_IMAGE_SIZE
from transfer.core.params import check
from transfer.data.transforms import working_preprocess
from transfer.models.backbones import build_model, check_arch
from transfer.models.checkpoints import load_checkpoint, save_checkpoint
from transfer.models.onnx_model import INPUT, OUTPUT, OnnxClassifier, export

ARCH = "mobilenet_v3_small"
CLASSES = ["ants", "bees"]
NAMES = ["Ants", "Bees"]
LONG = 100_000  # characters: the arch name that was echoed in full
RANDOM_FILES = 3  # files of random bytes, each from its own seed
RANDOM_BYTES = 4096
HEAD = "head.weight"
# The oversized head of the memory test: a thousand times what refusing a file takes, and big enough
# to tell read from unread at a glance.
HEAD_BYTES = 128 * 2**20
# Run in a fresh process: for each file, by how many KiB the process's peak memory grew while
# load_checkpoint opened or refused it. The peak is the process's own (VmHWM); ru_maxrss would start at
# the test runner's, which Linux carries over into a child through exec.
PEAK_GROWTH = """
import json, sys
from transfer.core.errors import UserError
from transfer.models.checkpoints import load_checkpoint

def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

for path in sys.argv[1:]:
    before = peak()
    try:
        load_checkpoint(path)
        said = None
    except UserError as err:
        said = str(err)
    print(json.dumps({"path": path, "grown": peak() - before, "said": said}))
"""


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """models/model.pt and models/model.onnx of one tiny network at the smallest image size."""
    torch.manual_seed(0)
    model, preprocess = build_model(ARCH, len(CLASSES), pretrained=False)
    model.eval()
    meta = {"arch": ARCH, "mode": "frozen", "classes": CLASSES, "class_names": NAMES,
            "preprocess": working_preprocess(preprocess, MIN_IMAGE_SIZE)}
    folder = tmp_path_factory.mktemp("models")
    save_checkpoint(folder / "model.pt", model, meta)
    export(model, meta, folder / "model.onnx")
    return {"pt": folder / "model.pt", "onnx": folder / "model.onnx"}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "photo.jpg"
    make_image(0, seed=1).save(path)
    return path


def onnx_with_metadata(source: Path, target: Path, **fields: str | None) -> Path:
    """A copy of the exported file with these metadata fields set (None: removed)."""
    graph = onnx.load(str(source))
    props = {p.key: p.value for p in graph.metadata_props} | fields
    del graph.metadata_props[:]
    onnx.helper.set_model_props(graph, {key: value for key, value in props.items() if value is not None})
    onnx.save(graph, str(target))
    return target


def metadata_of(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def checkpoint_with(source: Path, target: Path, edit) -> Path:
    """A copy of the saved checkpoint with `edit` applied to its loaded contents."""
    contents = torch.load(source, weights_only=True)
    edit(contents)
    torch.save(contents, target)
    return target


def predict_error(model: Path, image: Path, capsys) -> str:
    """The one line predict's real main writes for `model`, run in this process (fast); exit status 2
    checked. Any exception other than the exit would fail the test with its traceback."""
    assert run_in_process(lambda: predict.main(["--model", str(model), str(image)])) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"predict: error: {model}: "), lines
    return lines[0]


def test_the_files_as_written_load(model_files):
    """The check of the tests below: unedited, both files open, with the fields they were written with."""
    model, meta = load_checkpoint(model_files["pt"])
    assert meta["class_names"] == NAMES and meta["arch"] == ARCH
    onnx_meta = OnnxClassifier(model_files["onnx"]).meta
    assert onnx_meta["class_names"] == NAMES and onnx_meta["preprocess"] == meta["preprocess"]


# Metadata of one class more than the network's outputs (classes and names agree: the network is what differs).
ONE_CLASS_MORE = {"class_names": json.dumps(NAMES + ["Wasps"]), "classes": json.dumps(CLASSES + ["wasps"])}
# The line for a file whose class_names lack the last name.
FEWER_NAMES = f"class_names: {name_count(len(NAMES) - 1)} for the {len(CLASSES)} classes"


# (metadata fields set, None removing one; words the line must hold)
ONNX_EDITS = {
    "more class names than outputs": (
        ONE_CLASS_MORE,
        f"class_names: {name_count(len(NAMES) + 1)}, but the network gives {OUTPUT} of shape ['batch', {len(NAMES)}]"),
    "fewer class names than classes": ({"class_names": json.dumps(NAMES[:-1])}, FEWER_NAMES),
    "no arch": ({"arch": None}, "arch: missing"),
    "class_names not JSON": ({"class_names": ", ".join(NAMES)}, "class_names: not JSON"),
    "temperature 0": ({"temperature": "0"}, "temperature: must be a number above 0, got 0"),
    "temperature not JSON": ({"temperature": "hot"}, "temperature: not JSON"),
    "unsure threshold above 1": ({"min_confidence": "2"}, "min_confidence: must be null or a number from 0 to 1"),
}


@pytest.mark.parametrize("case", ONNX_EDITS)
def test_onnx_metadata_field_is_one_line(case, model_files, image, tmp_path, capsys):
    fields, words = ONNX_EDITS[case]
    hostile = onnx_with_metadata(model_files["onnx"], tmp_path / "model.onnx", **fields)
    line = predict_error(hostile, image, capsys)
    assert "damaged metadata" in line and words in line


PREPROCESS_EDITS = {
    "no mean": (lambda pre: pre.pop("mean"), "preprocess.mean: missing"),
    "image_size 0": (lambda pre: pre.update(image_size=0), f"preprocess.image_size: must be a whole number >= "
                                                            f"{MIN_IMAGE_SIZE}, got 0"),
    "image_size not the network's": (lambda pre: pre.update(image_size=2 * pre["image_size"],
                                                            resize_size=2 * pre["resize_size"]),
                                     f"but the network takes {INPUT} of shape"),
}


@pytest.mark.parametrize("case", PREPROCESS_EDITS)
def test_onnx_preprocess_field_is_one_line(case, model_files, image, tmp_path, capsys):
    edit, words = PREPROCESS_EDITS[case]
    preprocess = json.loads(metadata_of(model_files["onnx"])["preprocess"])
    edit(preprocess)
    hostile = onnx_with_metadata(model_files["onnx"], tmp_path / "model.onnx", preprocess=json.dumps(preprocess))
    line = predict_error(hostile, image, capsys)
    assert "damaged metadata" in line and words in line


def test_onnx_weights_outside_its_folder_are_named_as_such(model_files, image, tmp_path, capsys):
    """External data that points out of the model's folder: onnxruntime refuses it, and the line says
    why, not "not an ONNX model"."""
    folder = tmp_path / "models"
    folder.mkdir()
    graph = onnx.load(str(model_files["onnx"]))
    onnx.save_model(graph, str(folder / "model.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    shutil.move(folder / "weights.bin", tmp_path / "weights.bin")
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in graph.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    onnx.save(graph, str(folder / "model.onnx"))
    line = predict_error(folder / "model.onnx", image, capsys)
    assert "outside its folder (external data '../weights.bin')" in line and "not an ONNX model" not in line


# (edit of the loaded checkpoint, words the line must hold)
CHECKPOINT_EDITS = {
    "fewer class names than classes": (lambda ck: ck.update(class_names=ck["class_names"][:-1]), FEWER_NAMES),
    "image_size not a number": (lambda ck: ck["preprocess"].update(image_size="large"),
                                "preprocess.image_size: must be a whole number"),
    "unknown interpolation": (lambda ck: ck["preprocess"].update(interpolation="sinc"),
                              f"preprocess.interpolation: must be one of {', '.join(INTERPOLATIONS)}, got 'sinc'"),
    "invalid timm pretrained tag": (lambda ck: ck.update(arch="timm/resnet18.bogus"),
                                    ": arch: timm model resnet18 has no pretrained tag 'bogus' (its tags: "),
    "negative temperature": (lambda ck: ck.update(temperature=-1.0), "temperature: must be a number above 0, got -1.0"),
    "temperature not finite": (lambda ck: ck.update(temperature=float("nan")), "temperature: must be a number above 0"),
    "unsure threshold a string": (lambda ck: ck.update(min_confidence="0.9"),
                                  "min_confidence: must be null or a number from 0 to 1, got '0.9'"),
}


@pytest.mark.parametrize("case", CHECKPOINT_EDITS)
def test_checkpoint_field_is_one_line(case, model_files, image, tmp_path, capsys):
    edit, words = CHECKPOINT_EDITS[case]
    hostile = checkpoint_with(model_files["pt"], tmp_path / "model.pt", edit)
    assert words in predict_error(hostile, image, capsys)


@pytest.mark.parametrize("arch", ["x" * LONG, "timm/" + "x" * LONG])
def test_a_long_arch_is_cut_in_the_line(arch, model_files, image, tmp_path, capsys):
    hostile = checkpoint_with(model_files["pt"], tmp_path / "model.pt", lambda ck: ck.update(arch=arch))
    line = predict_error(hostile, image, capsys)
    assert ": arch: unknown" in line and "…" in line and "x" * SHOWN_CHARS not in line


def test_random_bytes_are_no_torch_file_not_python_objects(image, tmp_path, capsys):
    for seed in range(RANDOM_FILES):
        path = tmp_path / f"random{seed}.pt"
        path.write_bytes(random.Random(seed).randbytes(RANDOM_BYTES))
        line = predict_error(path, image, capsys)
        assert "not a torch file, or a damaged one" in line and "Python objects" not in line


def test_a_pretrained_tag_is_checked_with_the_name_in_params():
    """model.arch: timm/resnet18.bogus passed the name check and failed only when the model was built."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"]["arch"] = "timm/resnet18.bogus"
    with pytest.raises(UserError, match=r"params.yaml: model.arch: timm model resnet18 has no pretrained tag "
                                         r"'bogus' \(its tags: "):
        check(params, arch_check=check_arch)
    params["model"]["arch"] = "timm/resnet18.a1_in1k"  # a tag it has
    check(params, arch_check=check_arch)


def test_the_real_command_is_one_line_exit_2(model_files, image, tmp_path):
    """The same through `python -m stages.predict`: one line on stderr, exit 2, no traceback."""
    hostile_onnx = onnx_with_metadata(model_files["onnx"], tmp_path / "model.onnx", **ONE_CLASS_MORE)
    hostile_pt = checkpoint_with(model_files["pt"], tmp_path / "model.pt",
                                 lambda ck: ck.update(class_names=ck["class_names"][:-1]))
    for model in (hostile_onnx, hostile_pt):
        proc = subprocess.run([sys.executable, "-m", "stages.predict", "--model", str(model), str(image)],
                              cwd=ROOT, env=env_with_venv(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"predict: error: {model}: ") and "class_names: " in lines[0]


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak memory from /proc")
def test_a_file_torch_would_read_whole_is_refused_before_its_tensors_are_read(model_files, tmp_path, monkeypatch):
    """Files whose loading reads every tensor's bytes whatever its shape: torch's older, non-zip format,
    and a zip whose byte-order record is not this machine's (torch.load byte-swaps each tensor as it
    loads). With a 128 MB head, the process refusing them grows by far less than the head, and by less
    than loading the tiny network itself (the same process, the real file last)."""
    contents = torch.load(model_files["pt"], weights_only=True)
    contents["state_dict"][HEAD] = torch.zeros(len(CLASSES), HEAD_BYTES // 4 // len(CLASSES))
    old = tmp_path / "old.pt"
    torch.save(contents, old, _use_new_zipfile_serialization=False)
    other_order = tmp_path / "swapped.pt"
    with monkeypatch.context() as patch:  # torch.save writes sys.byteorder as the file's byte order
        patch.setattr(sys, "byteorder", "big" if sys.byteorder == "little" else "little")
        torch.save(contents, other_order)
    del contents
    proc = subprocess.run([sys.executable, "-c", PEAK_GROWTH, str(old), str(other_order), str(model_files["pt"])],
                          cwd=ROOT, env=env_with_venv(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = {row["path"]: row for row in map(json.loads, proc.stdout.splitlines())}
    real = results.pop(str(model_files["pt"]))
    assert real["said"] is None
    grown = {path: row["grown"] for path, row in results.items()}  # KiB
    assert all(kib * 1024 < HEAD_BYTES / 4 for kib in grown.values()), grown
    assert max(grown.values()) < real["grown"], (grown, real)
    for hostile, words in ((old, "not the zip archive torch.save writes"), (other_order, "another byte order")):
        said = results[str(hostile)]["said"]
        assert said is not None and said.startswith(f"{hostile}: ") and words in said and "\n" not in said, said


def padded_head(contents: dict) -> None:
    """The head as the left half of a storage twice its size: its shape the network's."""
    features = contents["state_dict"][HEAD].shape[1]
    contents["state_dict"][HEAD] = torch.zeros(len(CLASSES), 2 * features)[:, :features]


# (edit of the loaded checkpoint, words the line must hold)
STORAGE_EDITS = {
    "a head stored with twice its bytes": (padded_head, "its tensors hold"),
    "a tensor outside the state_dict": (lambda ck: ck.update(history=[{"epoch": 1, "loss": torch.zeros(1000)}]),
                                        "a tensor outside the state_dict"),
    "a head of another shape": (lambda ck: ck["state_dict"].update({HEAD: torch.zeros(len(CLASSES), 7)}),
                                f"its weights do not fit {ARCH} with {len(CLASSES)} classes ({HEAD}: "
                                f"[{len(CLASSES)}, 7] in the file, [{len(CLASSES)}, "),
}


@pytest.mark.parametrize("case", STORAGE_EDITS)
def test_tensor_sizes_are_checked_before_any_is_read(case, model_files, image, tmp_path, capsys):
    """The sizes the file declares (its storages' bytes, its tensors' shapes) are checked against what
    the network needs before a weight is copied: a small view of a larger storage would otherwise load,
    and export would save the whole storage again."""
    edit, words = STORAGE_EDITS[case]
    hostile = checkpoint_with(model_files["pt"], tmp_path / "model.pt", edit)
    assert words in predict_error(hostile, image, capsys)
