"""Calibration and unsure, in-process on hand-made cases: the temperature fit against one whose best
temperature is known in closed form and against a brute-force grid, the ECE against hand-binned values,
the cross-fitting used when val also reports, the unsure threshold's choice, the ONNX graph giving the
calibrated probabilities through real onnxruntime (a tiny random-init network), and predict's "unsure"."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from stages import predict
from tests.conftest import run_in_process
from tests.imagegen import make_image
from transfer.core.errors import UserError
from transfer.data.transforms import eval_transform, working_preprocess
from transfer.evaluation.calibration import (
    BINS,
    calibrate,
    calibrated,
    cross_fitted,
    expected_calibration_error,
    fit_temperature,
    halves,
    nll,
    scores,
)
from transfer.evaluation.unsure import choose_threshold, parse_confidences, risk_coverage, unsure_report
from transfer.models.backbones import build_model
from transfer.models.checkpoints import save_calibrated, save_checkpoint
from transfer.models.onnx_model import OnnxClassifier, check_parity, export


def test_the_fit_finds_the_temperature_known_in_closed_form():
    """Every image has logits (z, 0) and a share p of them is class 0: the NLL is least where
    sigmoid(z / T) = p, at T = z / log(p / (1 - p))."""
    z, right, wrong = 4.0, 8, 2
    logits = torch.tensor([[z, 0.0]] * (right + wrong))
    labels = [0] * right + [1] * wrong
    p = right / (right + wrong)
    assert fit_temperature(logits, labels) == pytest.approx(z / math.log(p / (1 - p)), rel=1e-4)


def test_the_fit_is_the_best_of_a_fine_grid():
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(300, 5, generator=generator)
    labels = torch.distributions.Categorical(logits=logits / 2.5).sample().tolist()
    grid = np.exp(np.linspace(math.log(0.2), math.log(20), 4001))
    best = grid[int(np.argmin([nll(logits, torch.tensor(labels), t) for t in grid]))]
    found = fit_temperature(logits, labels)
    assert found == pytest.approx(best, rel=2e-3)
    assert nll(logits, torch.tensor(labels), found) <= nll(logits, torch.tensor(labels), best) + 1e-9


def test_ece_against_hand_binned_values():
    """Bins are (b/15, (b+1)/15]: 0.95 falls in bin 14, 0.85 in bin 12, 0.55 in bin 8, and 2/15 exactly
    in bin 1, with 1/15 + a little."""
    confidence = np.array([0.95, 0.95, 0.85, 0.55, 0.55, 0.55])
    correct = np.array([True, False, True, True, True, False])
    by_hand = (2 / 6) * abs(1 / 2 - 0.95) + (1 / 6) * abs(1 - 0.85) + (3 / 6) * abs(2 / 3 - 0.55)
    assert expected_calibration_error(confidence, correct) == pytest.approx(by_hand)
    edge = np.array([2 / BINS, 1 / BINS + 1e-3])  # one bin: mean confidence 1.5/15, accuracy 1/2
    assert expected_calibration_error(edge, np.array([True, False])) == pytest.approx(abs(0.5 - (3 / BINS + 1e-3) / 2))
    assert expected_calibration_error(np.array([0.5, 0.5]), np.array([True, False])) == pytest.approx(0.0)


def test_scores_carry_bootstrap_intervals_around_them():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]] * 5)
    found = scores(probs, [0, 1, 1, 0] * 5)
    for name in ("ece", "nll", "brier"):
        low, high = found[f"{name}_ci"]
        assert low <= found[name] <= high, name
    assert found["brier"] == pytest.approx(np.mean([0.02, 0.72, 0.18, 0.08]))  # sum over classes of (p - y)^2


def two_temperatures(count: int = 200):
    """Logits whose two halves (calibration.halves) want different temperatures: the first half's
    labels follow logits / 0.5, the second's logits / 4."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(count, 3, generator=generator)
    first, second = halves(count)
    scale = torch.ones(count)
    scale[first], scale[second] = 0.5, 4.0
    labels = torch.distributions.Categorical(logits=logits / scale[:, None]).sample().tolist()
    return logits, labels, first, second


def test_val_reporting_is_cross_fitted_and_test_reporting_is_not():
    """With val as the reporting split each half is scored with the temperature fit on the other half,
    and the published temperature is still the one fit on all of val; with a test split, test is
    scored with that one."""
    logits, labels, first, second = two_temperatures()
    target = torch.tensor(labels)
    on_all = fit_temperature(logits, labels)
    probs = cross_fitted(logits, labels)
    assert torch.allclose(probs[first], calibrated(logits[first], fit_temperature(logits[second], target[second])))
    assert torch.allclose(probs[second], calibrated(logits[second], fit_temperature(logits[first], target[first])))

    report, after = calibrate(logits, labels, logits, labels, "val")
    assert report["temperature"] == pytest.approx(on_all)
    assert report["fitted_on"] == "val" and report["scored_by"].startswith("cross-fitting")
    assert torch.equal(after, probs) and report["after"] == scores(probs, labels)

    test_logits, test_labels = logits[:50] * 2, labels[:50]
    report, after = calibrate(logits, labels, test_logits, test_labels, "test")
    assert report["scored_on"] == "test" and torch.allclose(after, calibrated(test_logits, on_all))


def test_the_threshold_is_the_lowest_that_reaches_the_target():
    """Accuracy of the kept images, highest confidence first: 1/1 at 0.99, 2/3 at 0.9 (both 0.9s kept),
    3/4 at 0.8, 4/5 at 0.7, 4/6 at 0.6."""
    confidence = np.array([0.6, 0.9, 0.99, 0.8, 0.9, 0.7])
    correct = np.array([False, True, True, True, False, True])
    curve = risk_coverage(confidence, correct)
    assert curve["threshold"].tolist() == [0.99, 0.9, 0.8, 0.7, 0.6]
    assert curve["accuracy"] == pytest.approx([1, 2 / 3, 3 / 4, 4 / 5, 4 / 6])
    assert curve["coverage"] == pytest.approx([1 / 6, 3 / 6, 4 / 6, 5 / 6, 1])
    assert choose_threshold(confidence, correct, 0.75) == 0.7
    assert choose_threshold(confidence, correct, 0.8) == 0.7
    assert choose_threshold(confidence, correct, 0.81) == 0.99
    assert choose_threshold(confidence, correct, 0.5) == 0.6
    assert choose_threshold(confidence[:2], ~correct[:2], 0.9) is None  # the most confident image is wrong


def test_the_unsure_report_on_test_and_cross_fitted_on_val():
    val = {"confidence": np.array([0.6, 0.9, 0.99, 0.8, 0.9, 0.7]),
           "correct": np.array([False, True, True, True, False, True])}
    test = {"confidence": np.array([0.95, 0.75, 0.65, 0.72]), "correct": np.array([True, False, True, True])}
    report = unsure_report(val, test, 0.75, "test")
    assert (report["threshold"], report["kept"], report["images"]) == (0.7, 3, 4)
    assert report["accuracy"] == pytest.approx(2 / 3) and report["coverage"] == pytest.approx(3 / 4)
    assert report["accuracy_ci"][0] < 2 / 3 < report["accuracy_ci"][1]

    report = unsure_report(val, val, 0.75, "val")
    first, second = halves(6)
    kept = right = 0
    for choose_on, score_on in ((first, second), (second, first)):
        threshold = choose_threshold(val["confidence"][choose_on], val["correct"][choose_on], 0.75)
        chosen = val["confidence"][score_on] >= threshold if threshold is not None else np.zeros(3, dtype=bool)
        kept += int(chosen.sum())
        right += int((chosen & val["correct"][score_on]).sum())
    assert report["threshold"] == 0.7 and report["scored_by"].startswith("cross-fitting")
    assert (report["kept"], report["accuracy"]) == (kept, right / kept if kept else 0.0)

    with pytest.raises(UserError, match=r"^params.yaml: export.target_accuracy: 0.999 is reached at no threshold"):
        unsure_report({"confidence": np.array([0.9, 0.8]), "correct": np.array([False, True])}, test, 0.999, "test")


def test_a_predictions_csv_that_is_not_one_is_one_line():
    good = b"path,actual,predicted,confidence,uncalibrated_confidence\na.jpg,ants,ants,0.9,0.95\n"
    assert parse_confidences(good, "x.csv")["confidence"].tolist() == [0.9]
    for bad in (b"path,actual,predicted\na.jpg,ants,ants\n", good.replace(b"0.9,", b"1.5,"), b"\xff\xfe",
                good.replace(b"0.9,", b"nan,")):
        with pytest.raises(UserError, match=r"^x.csv: "):
            parse_confidences(bad, "x.csv")


ARCH = "mobilenet_v3_small"
CLASSES = ["ants", "bees", "wasps"]
TEMPERATURE = 3.0


@pytest.fixture(scope="module")
def calibrated_files(tmp_path_factory):
    """A tiny random-init network whose head's bias sets clear logits (3, 1, 0: a random-init body gives
    nearly the same features for every image), saved as a checkpoint and as the published model.pt and
    model.onnx with a temperature and an unsure threshold."""
    torch.manual_seed(0)
    model, preprocess = build_model(ARCH, len(CLASSES), pretrained=False)
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([3.0, 1.0, 0.0]))
    model.eval()
    meta = {"arch": ARCH, "mode": "frozen", "classes": CLASSES, "class_names": CLASSES,
            "preprocess": working_preprocess(preprocess, 32)}
    folder = tmp_path_factory.mktemp("calibrated")
    save_checkpoint(folder / "frozen.pt", model, meta)
    calibration = {"temperature": TEMPERATURE, "min_confidence": 0.99}
    save_calibrated(folder / "frozen.pt", folder / "model.pt", calibration)
    export(model, {**meta, **calibration}, folder / "model.onnx")
    images = [make_image(i % 3, seed=i) for i in range(6)]
    for i, image in enumerate(images):
        image.save(folder / f"photo{i}.jpg")
    batch = torch.stack([eval_transform(meta["preprocess"])(image) for image in images])
    return {"folder": folder, "model": model, "batch": batch}


def test_the_onnx_graph_gives_the_calibrated_probabilities(calibrated_files):
    model, batch, path = calibrated_files["model"], calibrated_files["batch"], calibrated_files["folder"] / "model.onnx"
    session = OnnxClassifier(path)
    with torch.inference_mode():
        logits = model(batch)
    got = session.probabilities(batch)
    assert torch.allclose(got, torch.softmax(logits / TEMPERATURE, 1), atol=1e-5)
    assert (got - torch.softmax(logits, 1)).abs().max() > 0.05  # the temperature changes them
    assert session.meta["temperature"] == TEMPERATURE and session.meta["min_confidence"] == 0.99
    assert check_parity(model, path, [batch], TEMPERATURE)[0] == len(batch)
    with pytest.raises(UserError, match="differs from the PyTorch model"):
        check_parity(model, path, [batch])  # against the uncalibrated probabilities: refused


def predict_json(capsys, *args: str) -> list[dict]:
    assert run_in_process(lambda: predict.main(["--json", "--top-k", "1", *args])) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_says_unsure_below_the_models_threshold_for_pt_and_onnx(calibrated_files, capsys):
    folder = calibrated_files["folder"]
    photos = [str(folder / f"photo{i}.jpg") for i in range(6)]
    with torch.inference_mode():
        expected = torch.softmax(calibrated_files["model"](calibrated_files["batch"]) / TEMPERATURE, 1).max(1).values
    assert expected.min() < 0.99, "precondition: some images below the model's threshold"
    for model in ("model.pt", "model.onnx"):
        results = predict_json(capsys, "--model", str(folder / model), *photos)
        assert [r["top"][0]["probability"] for r in results] == pytest.approx(expected.tolist(), abs=2e-4), model
        assert [r["unsure"] for r in results] == (expected < 0.99).tolist(), model
        overridden = predict_json(capsys, "--model", str(folder / model), "--min-confidence", "0", *photos)
        assert not any(r["unsure"] for r in overridden), model
    results = predict_json(capsys, "--model", str(folder / "frozen.pt"), *photos)  # a mode's own file: T = 1
    assert not any(r["unsure"] for r in results)
    with torch.inference_mode():
        uncalibrated = torch.softmax(calibrated_files["model"](calibrated_files["batch"]), 1).max(1).values
    assert [r["top"][0]["probability"] for r in results] == pytest.approx(uncalibrated.tolist(), abs=2e-4)
    strict = float(uncalibrated.max()) + 1e-3
    assert run_in_process(lambda: predict.main(["--model", str(folder / "frozen.pt"), "--top-k", "1",
                                                "--min-confidence", f"{strict:.4f}", photos[0]])) == 0
    assert capsys.readouterr().out.startswith(f"{photos[0]}: unsure (")


def test_predict_min_confidence_outside_0_1_is_one_line(calibrated_files, capsys):
    assert run_in_process(lambda: predict.main(["--min-confidence", "1.5", "x.jpg"])) == 2
    assert "--min-confidence: must be a number from 0 to 1, got 1.5" in capsys.readouterr().err
