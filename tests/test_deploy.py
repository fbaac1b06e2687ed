"""int8 for deployment: the gate on hand-made right/wrong vectors and timings (kept only when not
significantly worse and measurably faster, by the paired rules), and a real onnxruntime int8 file of a
tiny random-init CNN at 32 px: QDQ with per-channel weights, its metadata carried, run by predict like
the float file, and refused by the gate once its predictions are corrupted. No test asserts on speed."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from stages import predict as predict_stage
from tests.conftest import run_in_process
from tests.imagegen import make_image, write_class_folders
from transfer.data.transforms import eval_transform, working_preprocess
from transfer.evaluation.deployment import ALPHA, report, table, verdict, verdict_line
from transfer.evaluation.stats import mcnemar_exact
from transfer.models.backbones import build_model
from transfer.models.cost import LATENCY_RUNS, THREADS, THROUGHPUT_BATCH
from transfer.models.folding import fold_batchnorm
from transfer.models.onnx_model import OnnxClassifier, export
from transfer.models.quantization import quantize

CLASSES = ["ants", "bees", "wasps"]
IMAGES = 40


def timings(pairs: int, ratio: float, seed: int = 0) -> tuple[list[float], list[float]]:
    """Float and int8 seconds of `pairs` paired runs, int8 taking `ratio` x float's time, with noise
    shared by both runs of a pair (a busy moment of the machine)."""
    busy = np.random.default_rng(seed).uniform(0.01, 0.03, pairs)
    return list(busy), list(busy * ratio)


def worse_by(count: int) -> tuple[list[bool], list[bool]]:
    """Float right on every image; int8 wrong on the first `count` of them."""
    return [True] * IMAGES, [i >= count for i in range(IMAGES)]


def smallest_significant_loss() -> int:
    """The fewest images only float gets right (none only int8) that McNemar finds significant."""
    return next(k for k in range(1, IMAGES) if mcnemar_exact(k, 0) < ALPHA)


def test_the_gate_keeps_an_equal_faster_int8():
    result = verdict(*worse_by(0), *timings(50, 0.6))
    assert result["kept"] and result["not_significantly_worse"] and result["measurably_faster"]
    assert verdict_line(result).startswith("int8 kept: ")


def test_the_gate_refuses_an_int8_made_significantly_worse():
    lost = smallest_significant_loss()
    result = verdict(*worse_by(lost), *timings(50, 0.6))
    assert not result["kept"] and not result["not_significantly_worse"] and result["measurably_faster"]
    assert result["accuracy"]["only_float_right"] == lost and result["accuracy"]["p"] < ALPHA
    line = verdict_line(result)
    assert line.startswith("int8 not kept: significantly worse than float, ")
    assert f"{IMAGES - lost} vs {IMAGES} of {IMAGES} right" in line and "not measurably faster" not in line
    # one image fewer is not significant: kept, being faster
    assert verdict(*worse_by(lost - 1), *timings(50, 0.6))["kept"]


def test_the_gate_refuses_an_int8_that_is_not_measurably_faster():
    """As fast, or faster by its median but in too few of the pairs for the sign test, or slower."""
    same = verdict(*worse_by(0), *timings(50, 1.0))
    float_seconds, int8_seconds = timings(30, 0.9)
    slower_pairs = [i % 30 < 13 for i in range(30)]  # int8 faster in 17 of 30 pairs: a median lower, p > 0.05
    int8_seconds = [f * 1.1 if slow else s for f, s, slow in zip(float_seconds, int8_seconds, slower_pairs)]
    mixed = verdict(*worse_by(0), float_seconds, int8_seconds)
    slower = verdict(*worse_by(0), *timings(50, 1.3))
    for result in (same, mixed, slower):
        assert not result["kept"] and result["not_significantly_worse"] and not result["measurably_faster"]
        assert verdict_line(result).startswith("int8 not kept: not measurably faster, median ")
    assert mixed["latency_pairs"]["int8_median_ms"] < mixed["latency_pairs"]["float_median_ms"]
    assert mixed["latency_pairs"]["int8_faster"] == 17 and mixed["latency_pairs"]["sign_test_p"] >= ALPHA


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    """A tiny random-init CNN at 32 px exported as float ONNX and quantized to int8 (real onnxruntime)."""
    root = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    model, preprocess = build_model("timm/mobilenetv3_small_050", len(CLASSES), pretrained=False)
    preprocess = working_preprocess(preprocess, 32)
    model.eval()
    fold_batchnorm(model, preprocess["image_size"])
    meta = {"arch": "timm/mobilenetv3_small_050", "mode": "frozen", "classes": CLASSES,
            "class_names": [c.title() for c in CLASSES], "preprocess": preprocess}
    transform = eval_transform(preprocess)
    images = torch.stack([transform(make_image(i % 3, seed=i, size=(60, 50))) for i in range(IMAGES)])
    float_path, int8_path = root / "model.onnx", root / "model.int8.onnx"
    export(model, meta, float_path)
    quantize(float_path, int8_path, (images[i:i + 8].numpy() for i in range(0, 16, 8)), root)
    checkpoint = root / "model.pt"
    torch.save(model.state_dict(), checkpoint)
    return SimpleNamespace(float_path=float_path, int8_path=int8_path, images=images, model=model,
                           checkpoint=checkpoint)


def test_int8_file_is_qdq_per_channel_with_the_float_metadata(onnx_pair):
    float_path, int8_path = onnx_pair.float_path, onnx_pair.int8_path
    graph = onnx.load(str(int8_path)).graph
    kinds = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    weight_scales = [node for node in graph.node if node.op_type == "DequantizeLinear" and node.input[0] in initializers
                     and initializers[node.input[0]].data_type == onnx.TensorProto.INT8
                     and len(initializers[node.input[0]].dims) == 4]
    assert weight_scales and all(len(initializers[n.input[1]].dims) == 1 for n in weight_scales)  # a scale per channel
    assert int8_path.stat().st_size < float_path.stat().st_size
    assert OnnxClassifier(int8_path).meta == OnnxClassifier(float_path).meta


def test_predict_runs_the_int8_file_like_the_float_file(onnx_pair, tmp_path, capsys, monkeypatch):
    float_path, int8_path = onnx_pair.float_path, onnx_pair.int8_path
    photos = tmp_path / "photos"
    write_class_folders(photos, {"ants": 2, "bees": 2}, seed=3)
    monkeypatch.chdir(tmp_path)

    def predict(model) -> dict:
        capsys.readouterr()
        assert run_in_process(lambda: predict_stage.main(["--json", "--top-k", "3", "--model", str(model),
                                                          str(photos)])) == 0
        results = json.loads(capsys.readouterr().out)
        return {r["path"]: {t["class"]: t["probability"] for t in r["top"]} for r in results}

    from_float, from_int8 = predict(float_path), predict(int8_path)
    assert from_int8.keys() == from_float.keys() and len(from_int8) == 4
    for path, probabilities in from_int8.items():
        assert set(probabilities) == {"Ants", "Bees", "Wasps"}
        assert all(abs(p - from_float[path][name]) < 0.05 for name, p in probabilities.items()), path


def test_the_gate_refuses_the_real_int8_file_once_its_predictions_are_corrupted(onnx_pair):
    """Labels: the float file's own answers, so float is right on every image; int8's real answers,
    then the same with its right answers turned wrong on as many images as McNemar finds significant."""
    float_path, int8_path, images = onnx_pair.float_path, onnx_pair.int8_path, onnx_pair.images
    labels = OnnxClassifier(float_path).probabilities(images).argmax(1)
    int8_answers = OnnxClassifier(int8_path).probabilities(images).argmax(1)
    float_correct = [True] * IMAGES
    int8_correct = (int8_answers == labels).tolist()
    fast = timings(50, 0.6)
    honest = verdict(float_correct, int8_correct, *fast)
    assert honest["accuracy"]["only_float_right"] == IMAGES - sum(int8_correct)
    corrupted = list(int8_correct)
    for index in [i for i, right in enumerate(corrupted) if right][:smallest_significant_loss()]:
        corrupted[index] = False
    refused = verdict(float_correct, corrupted, *fast)
    assert not refused["kept"] and not refused["not_significantly_worse"]


def test_deploy_report_names_the_machine_and_each_file_size_speed_and_accuracy(onnx_pair):
    """results/deploy.json's fields from real timings of the three files (their values are not checked:
    timings vary), and results/deploy.md's table of them with the verdict's line."""
    images = onnx_pair.images.numpy()
    correct = ([True] * IMAGES, [i % 10 != 0 for i in range(IMAGES)])
    batch = np.resize(images, (THROUGHPUT_BATCH, *images.shape[1:]))
    result = report(onnx_pair.model, onnx_pair.checkpoint, onnx_pair.float_path, onnx_pair.int8_path, correct,
                    batch[:1], batch)
    result["evaluated_on"] = "val"
    assert result["machine"]["cpu"] and result["machine"]["threads"] == THREADS and result["machine"]["cpu_cores"] >= 1
    paths = (onnx_pair.checkpoint, onnx_pair.float_path, onnx_pair.int8_path)
    assert [row["file"] for row in result["files"]] == ["models/model.pt", "models/model.onnx",
                                                        "models/int8/model.int8.onnx"]
    for row, path in zip(result["files"], paths):
        latency = row["latency_batch_1"]
        assert row["megabytes"] == round(path.stat().st_size / 1e6, 3)
        assert latency["runs"] >= LATENCY_RUNS >= 50 and latency["threads"] == THREADS
        assert 0 < latency["median_ms"] <= latency["p95_ms"]
        assert row[f"images_per_second_batch_{THROUGHPUT_BATCH}"] > 0
    gate = result["int8"]
    assert [row["published"] for row in result["files"]] == [True, True, gate["kept"]]
    assert gate["accuracy"]["float"]["correct"] == IMAGES and gate["accuracy"]["int8"]["correct"] == sum(correct[1])
    assert gate["accuracy"]["int8"]["low"] < gate["accuracy"]["int8"]["accuracy"] < gate["accuracy"]["int8"]["high"]
    assert gate["size_ratio"] == round(result["files"][1]["megabytes"] / result["files"][2]["megabytes"], 3)
    assert gate["latency_pairs"]["int8_median_ms"] == result["files"][2]["latency_batch_1"]["median_ms"]
    text = table(result)
    assert result["machine"]["cpu"] in text.splitlines()[0] and text.rstrip().endswith(gate["line"])
    rows = [line for line in text.splitlines() if line.startswith("| models/")]
    assert [row.split(" | ")[0] for row in rows] == [f"| {row['file']}" for row in result["files"]]
    assert f"{sum(correct[1])}/{IMAGES} = " in rows[2] and f"{IMAGES}/{IMAGES} = " in rows[1]
