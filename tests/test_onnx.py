"""models/model.onnx: the same network as the PyTorch model (timm CNN and ViT, ResNet-18, at random
init), refused when it is not, written by the real export stage of a real DVC project, run by
predict, and by the README's snippet with onnxruntime, Pillow and numpy alone."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, make_project
from tests.imagegen import make_image, write_class_folders
from transfer.core.errors import UserError
from transfer.core.files import atomic_path
from transfer.data.transforms import eval_transform, working_preprocess
from transfer.models.backbones import build_model
from transfer.models.folding import fold_batchnorm
from transfer.models.onnx_model import OnnxClassifier, check_parity, export

CLASSES = ["ants", "bees", "wasps"]


def model_and_meta(arch: str, size: int | None):
    torch.manual_seed(0)
    model, preprocess = build_model(arch, len(CLASSES), pretrained=False)
    preprocess = working_preprocess(preprocess, size)
    model.eval()
    fold_batchnorm(model, preprocess["image_size"])  # as load_checkpoint gives it to export
    meta = {"arch": arch, "mode": "frozen", "classes": CLASSES, "class_names": [c.title() for c in CLASSES],
            "preprocess": preprocess}
    return model, meta


def image_batches(preprocess: dict, count: int = 10, batch: int = 4) -> list[torch.Tensor]:
    transform = eval_transform(preprocess)
    images = [transform(make_image(i % 3, seed=i, size=(90 + 7 * i, 80))) for i in range(count)]
    return [torch.stack(images[i:i + batch]) for i in range(0, count, batch)]


@pytest.mark.parametrize("arch, size", [("timm/mobilenetv3_small_050", 64), ("timm/test_vit", None),
                                        ("resnet18", 64)])
def test_onnx_gives_the_pytorch_probabilities(arch, size, tmp_path):
    model, meta = model_and_meta(arch, size)
    path = tmp_path / "model.onnx"
    export(model, meta, path)
    count, largest = check_parity(model, path, image_batches(meta["preprocess"]))
    assert count == 10 and largest <= 1e-4
    loaded = OnnxClassifier(path).meta
    assert loaded["class_names"] == ["Ants", "Bees", "Wasps"] and loaded["preprocess"] == meta["preprocess"]


def test_an_onnx_file_that_differs_is_one_line_and_not_published(tmp_path):
    """Checked against another network (another head), the export fails with one line and writes nothing."""
    model, meta = model_and_meta("timm/mobilenetv3_small_050", 64)
    other, _ = model_and_meta("timm/mobilenetv3_small_050", 64)
    with torch.no_grad():
        other.head.bias.add_(torch.tensor([0.0, 0.0, 3.0]))
    target = tmp_path / "model.onnx"
    with pytest.raises(UserError) as err, atomic_path(target) as tmp:  # as stages.export publishes it
        export(model, meta, tmp)
        check_parity(other, tmp, image_batches(meta["preprocess"]))
    assert re.fullmatch(r"the ONNX model differs from the PyTorch model on the 10 val images \(largest probability "
                        r"difference \S+, most allowed 0.0001; top-1 class differs on \d+\); not published",
                        str(err.value))
    assert list(tmp_path.iterdir()) == []


def assert_deploy_files(project, output: str) -> None:
    """export's deployment files: int8 published exactly when the verdict keeps it (its folder empty
    otherwise, and DVC content with that), the verdict's line logged and closing results/deploy.md,
    and a row of results/deploy.json per file measured."""
    deploy = json.loads((project.path / "results/deploy.json").read_text())
    kept = deploy["int8"]["kept"]
    assert sorted(p.name for p in (project.path / "models/int8").iterdir()) == (["model.int8.onnx"] if kept else [])
    assert f"export: {deploy['int8']['line']}" in output
    assert deploy["int8"]["line"].startswith("int8 kept: " if kept else "int8 not kept: ")
    assert (project.path / "results/deploy.md").read_text().rstrip().endswith(deploy["int8"]["line"])
    assert deploy["evaluated_on"] == "val" and deploy["machine"]["cpu"]
    assert [row["file"] for row in deploy["files"]][:2] == ["models/model.pt", "models/model.onnx"]
    assert "export" not in project.changed_stages()  # up to date (the audit, not run, is not)


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Deploying with ONNX"):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_export_writes_onnx_that_predict_and_the_readme_snippet_run(tmp_path):
    """dvc repro of a frozen-only project: export publishes models/model.onnx beside models/model.pt;
    predict gives the same classes from both (probabilities within 1e-4), and so does the README's
    snippet, run as it is written."""
    data = tmp_path / "data"
    write_class_folders(data / "train", {"ants": 6, "bees": 6})
    write_class_folders(data / "val", {"ants": 3, "bees": 3}, seed=1)
    project = make_project(tmp_path / "project", data, modes=["frozen"])
    project.set_params(export={"calibration_images": 8})  # make_project's projects skip int8: this one quantizes
    repro = project.dvc("repro", "export")  # the audit, a leaf, is not needed here
    assert "models/model.onnx gives the same top-1 on all 6 val images" in repro.stderr + repro.stdout
    assert_deploy_files(project, repro.stderr + repro.stdout)
    photos = tmp_path / "photos"
    write_class_folders(photos, {"ants": 2, "bees": 2}, seed=5)

    def predict(model: str) -> list[dict]:
        return json.loads(project.stage("predict", "--json", "--top-k", "2", "--model", model, str(photos)).stdout)

    from_pt, from_onnx = predict("models/model.pt"), predict("models/model.onnx")
    assert [[t["class"] for t in r["top"]] for r in from_pt] == [[t["class"] for t in r["top"]] for r in from_onnx]
    assert all(abs(a["probability"] - b["probability"]) <= 2e-4
               for r, s in zip(from_pt, from_onnx) for a, b in zip(r["top"], s["top"]))

    photo = sorted(photos.rglob("*.jpg"))[0]
    (project.path / "photo.jpg").write_bytes(photo.read_bytes())
    snippet = subprocess.run([sys.executable, "-c", readme_snippet()], cwd=project.path, capture_output=True,
                             text=True, timeout=300, check=True).stdout.split()
    top = next(r["top"][0] for r in from_pt if r["path"] == str(photo))
    assert snippet[0] == top["class"] and float(snippet[1]) == pytest.approx(top["probability"], abs=2e-3)
