"""The exported model in int8: onnxruntime's static quantization of the float ONNX file (QDQ format,
int8 weights per output channel, activation ranges calibrated on training images), and the gate that
keeps it only when a paired comparison with the float file on the same images allows:

- not significantly worse: exact McNemar on the images only one of the two gets right; refused when
  the float file gets more of them right and p < ALPHA;
- measurably faster: the two files timed at batch 1 in interleaved pairs (transfer.models.cost);
  kept when int8's median is lower AND int8 is faster in more pairs than not, significantly so by the
  sign test (the exact binomial test of faster against slower pairs, which is McNemar's exact test).
  Pairs make it hold on a noisy machine: a busy moment slows both runs of a pair, not one series.

Both onnxruntime steps keep the float file's metadata (class names, preprocessing), so predict reads the
int8 file as it reads the float one; OnnxClassifier checks it on every load."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from transfer.evaluation.stats import format_p, mcnemar_exact, paired, wilson_interval

ALPHA = 0.05


def quantize(float_path: Path, int8_path: Path, calibration: Iterable[np.ndarray], scratch: Path) -> None:
    """Write the int8 model of the ONNX file at `float_path` to `int8_path`, its activation ranges
    calibrated on the float32 NCHW batches of `calibration`; `scratch`: a folder for a temporary file."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self, batches: Iterable[np.ndarray], input_name: str):
            self.batches = iter(batches)
            self.input_name = input_name

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {self.input_name: batch}

    input_name = onnx.load(str(float_path), load_external_data=False).graph.input[0].name
    # onnxruntime's pre-processing (shape inference, graph optimisation) first, as its docs advise:
    # it lets quantization fold more operators (a smaller, faster file; docs/deploy.md).
    prepared = scratch / "prepared.onnx"
    quant_pre_process(str(float_path), str(prepared))
    quantize_static(str(prepared), str(int8_path), Batches(calibration, input_name),
                    quant_format=QuantFormat.QDQ, per_channel=True)
    prepared.unlink()


def accuracy(correct: Sequence[bool]) -> dict:
    """Images right of all, the accuracy and its 95% Wilson interval."""
    right, total = int(sum(correct)), len(correct)
    low, high = wilson_interval(right, total)
    return {"correct": right, "total": total, "accuracy": right / total if total else 0.0, "low": low, "high": high}


def verdict(float_correct: Sequence[bool], int8_correct: Sequence[bool],
            float_seconds: Sequence[float], int8_seconds: Sequence[float], alpha: float = ALPHA) -> dict:
    """The gate: int8 against float on the same images (right or wrong each) and in the same paired
    timings (seconds each); kept only when not significantly worse and measurably faster."""
    test = paired(int8_correct, float_correct)  # only_a: int8 alone right; only_b: float alone right
    worse = test["only_b"] > test["only_a"] and test["p"] < alpha
    faster_pairs = sum(i < f for f, i in zip(float_seconds, int8_seconds, strict=True))
    slower_pairs = sum(i > f for f, i in zip(float_seconds, int8_seconds, strict=True))
    sign_p = mcnemar_exact(faster_pairs, slower_pairs)
    float_median, int8_median = float(np.median(float_seconds)), float(np.median(int8_seconds))
    faster = int8_median < float_median and faster_pairs > slower_pairs and sign_p < alpha
    return {"kept": bool(faster and not worse), "not_significantly_worse": not worse, "measurably_faster": bool(faster),
            "alpha": alpha,
            "accuracy": {"float": accuracy(float_correct), "int8": accuracy(int8_correct),
                         "only_float_right": test["only_b"], "only_int8_right": test["only_a"], "p": test["p"]},
            "latency_pairs": {"pairs": len(float_seconds), "int8_faster": faster_pairs, "int8_slower": slower_pairs,
                              "sign_test_p": sign_p, "float_median_ms": round(float_median * 1000, 3),
                              "int8_median_ms": round(int8_median * 1000, 3)}}


def verdict_line(result: dict) -> str:
    """One line: kept, or which rule failed, with the numbers."""
    acc, speed = result["accuracy"], result["latency_pairs"]
    accuracy_text = (f"{acc['int8']['correct']} vs {acc['float']['correct']} of {acc['float']['total']} right "
                     f"(only int8 {acc['only_int8_right']}, only float {acc['only_float_right']}, McNemar "
                     f"{format_p(acc['p'])})")
    speed_text = (f"median {speed['int8_median_ms']:.2f} vs {speed['float_median_ms']:.2f} ms at batch 1, "
                  f"faster in {speed['int8_faster']} of {speed['pairs']} paired runs (sign test "
                  f"{format_p(speed['sign_test_p'])})")
    if result["kept"]:
        return f"int8 kept: not significantly worse, {accuracy_text}; measurably faster, {speed_text}"
    failed = []
    if not result["not_significantly_worse"]:
        failed.append(f"significantly worse than float, {accuracy_text}")
    if not result["measurably_faster"]:
        failed.append(f"not measurably faster, {speed_text}")
    return "int8 not kept: " + "; ".join(failed)
