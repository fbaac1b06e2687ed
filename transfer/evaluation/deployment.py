"""What export publishes beside the float model for deployment: the int8 ONNX file (quantized by
transfer.models.quantization) when the paired gate keeps it, and what each published file costs on this machine
(transfer.models.cost) with the accuracy of float and int8 on the reporting split, as
results/deploy.json and a short table, results/deploy.md."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from transfer.core.files import write_json
from transfer.core.paths import DEPLOY_JSON, DEPLOY_MD, EXPORTED_INT8, EXPORTED_INT8_DIR, EXPORTED_MODEL, EXPORTED_ONNX
from transfer.core.publish import SCRATCH
from transfer.data.images import StoreImages
from transfer.data.split_files import read_split
from transfer.data.transforms import eval_batches
from transfer.evaluation.stats import format_p, mcnemar_exact, paired, wilson_interval
from transfer.models.cost import THROUGHPUT_BATCH, file_cost, machine, onnx_runner, paired_latency, torch_runner
from transfer.models.onnx_model import OnnxClassifier
from transfer.models.quantization import quantize

CALIBRATION_BATCH = 16
ALPHA = 0.05
# The gate keeps the int8 file only when a paired comparison with the float file on the same images allows:
# - not significantly worse: exact McNemar on the images only one of the two gets right; refused when
#   the float file gets more of them right and p < ALPHA;
# - measurably faster: the two files timed at batch 1 in interleaved pairs (transfer.models.cost);
#   kept when int8's median is lower AND int8 is faster in more pairs than not, significantly so by the
#   sign test (the exact binomial test of faster against slower pairs, which is McNemar's exact test).
#   Pairs make it hold on a noisy machine: a busy moment slows both runs of a pair, not one series.


def calibration_batches(count: int, preprocess: dict) -> Iterator[np.ndarray]:
    """`count` train images (all if fewer), spread evenly over the split so that every class is among
    them, as the float model's normalised input."""
    images = StoreImages("train", preprocess)
    picks = np.unique(np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int))
    chosen = [images[int(i)] for i in picks]
    for x, _ in eval_batches(chosen, [0] * len(chosen), preprocess, CALIBRATION_BATCH):
        yield x.numpy()


def timing_inputs(split: str, preprocess: dict) -> tuple[np.ndarray, np.ndarray]:
    """The first image of `split` (batch 1) and a batch of THROUGHPUT_BATCH (repeated where fewer)."""
    rows = read_split(split)
    x, _ = next(eval_batches(StoreImages(split, preprocess), rows.labels, preprocess, THROUGHPUT_BATCH))
    batch = np.resize(x.numpy(), (THROUGHPUT_BATCH, *x.shape[1:]))
    return batch[:1], batch


def right_or_wrong(path: Path, split: str, preprocess: dict) -> list[bool]:
    """The ONNX file's right (True) or wrong on every image of `split`."""
    model = OnnxClassifier(path)
    rows = read_split(split)
    correct: list[bool] = []
    for x, y in eval_batches(StoreImages(split, preprocess), rows.labels, preprocess, THROUGHPUT_BATCH):
        correct += (model.probabilities(x).argmax(1) == y).tolist()
    return correct


def table(report: dict) -> str:
    """results/deploy.md: a row per file (size, latency, throughput, accuracy) and the verdict."""
    gate = report["int8"]
    host = report["machine"]
    accuracies = {EXPORTED_ONNX.as_posix(): gate["accuracy"]["float"],
                  EXPORTED_INT8.as_posix(): gate["accuracy"]["int8"]} if "accuracy" in gate else {}
    lines = [f"# Deployment: size and speed on {host['cpu']} ({host['cpu_cores']} cores, {host['threads']} thread "
             f"per timing)", "",
             f"| file | published | MB | latency batch 1, median / p95 (ms) | images/s at batch {THROUGHPUT_BATCH} "
             f"| {report['evaluated_on']} accuracy [95% interval] |", "|---|---|---:|---:|---:|---:|"]
    for row in report["files"]:
        lat = row["latency_batch_1"]
        acc = accuracies.get(row["file"])
        shown = f"{acc['correct']}/{acc['total']} = {acc['accuracy']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}]" \
            if acc else ""
        lines.append(f"| {row['file']} | {'yes' if row['published'] else 'no'} | {row['megabytes']:.2f} | "
                     f"{lat['median_ms']:.2f} / {lat['p95_ms']:.2f} | "
                     f"{row[f'images_per_second_batch_{THROUGHPUT_BATCH}']:.1f} | {shown} |")
    if accuracies:
        paired = gate["accuracy"]
        lines += ["", f"int8 against float on the same {paired['float']['total']} images: only int8 right on "
                  f"{paired['only_int8_right']}, only float on {paired['only_float_right']} (McNemar "
                  f"{format_p(paired['p'])}); {gate['size_ratio']:.2f}x smaller, {gate['latency_ratio']:.2f}x "
                  "faster at batch 1 (medians of paired runs)."]
    return "\n".join([*lines, "", gate["line"], ""])


def report(model: torch.nn.Module, source: Path, float_path: Path, int8_path: Path,
           correct: tuple[list[bool], list[bool]], image: np.ndarray, batch: np.ndarray) -> dict:
    """results/deploy.json: each file's cost here (model.pt from `source`, the float and int8 ONNX
    files, timed at batch 1 in interleaved pairs) and the gate's verdict on the two right/wrong lists."""
    float_seconds, int8_seconds = paired_latency(onnx_runner(float_path), onnx_runner(int8_path), image)
    gate = verdict(*correct, float_seconds, int8_seconds)
    files = [{**file_cost(EXPORTED_MODEL, source, torch_runner(model), image, batch), "published": True},
             {**file_cost(EXPORTED_ONNX, float_path, onnx_runner(float_path), image, batch, float_seconds),
              "published": True},
             {**file_cost(EXPORTED_INT8, int8_path, onnx_runner(int8_path), image, batch, int8_seconds),
              "published": gate["kept"]}]
    speed = gate["latency_pairs"]
    gate.update(line=verdict_line(gate), size_ratio=round(files[1]["megabytes"] / files[2]["megabytes"], 3),
                latency_ratio=round(speed["float_median_ms"] / speed["int8_median_ms"], 3))
    return {"machine": machine(), "files": files, "int8": gate}


def unquantized_report(model: torch.nn.Module, source: Path, float_path: Path, image: np.ndarray, batch: np.ndarray,
                       why: str) -> dict:
    """results/deploy.json where onnxruntime could not quantize or run the int8 file: the float files' cost."""
    files = [{**file_cost(EXPORTED_MODEL, source, torch_runner(model), image, batch), "published": True},
             {**file_cost(EXPORTED_ONNX, float_path, onnx_runner(float_path), image, batch), "published": True}]
    return {"machine": machine(), "files": files, "int8": {"kept": False, "line": f"int8 not kept: {why}"}}


def publish(staged: Callable[[Path], Path], source: Path, calibration_images: int) -> str:
    """Quantize the float ONNX file export staged, score and time both, publish the int8 file only if
    the gate keeps it (its folder empty otherwise), and write results/deploy.json and .md. Returns the
    gate's line."""
    from transfer.core.errors import first_line
    from transfer.evaluation.scores import reporting_split
    from transfer.models.checkpoints import load_checkpoint

    model, meta = load_checkpoint(source, device="cpu")
    preprocess = meta["preprocess"]
    split = reporting_split()
    float_path = staged(EXPORTED_ONNX)
    candidate = staged(SCRATCH) / EXPORTED_INT8.name
    image, batch = timing_inputs(split, preprocess)
    if not calibration_images:
        result = unquantized_report(model, source, float_path, image, batch, "export.calibration_images is 0")
        return finish(staged, result, split, candidate)
    try:  # onnxruntime refuses some graphs (e.g. an int8 depthwise conv larger than its tiny input): no int8
        quantize(float_path, candidate, calibration_batches(calibration_images, preprocess), staged(SCRATCH))
        int8_correct = right_or_wrong(candidate, split, preprocess)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types, for any graph it cannot handle
        result = unquantized_report(model, source, float_path, image, batch,
                                    f"onnxruntime could not quantize or run it ({type(err).__name__}: "
                                    f"{first_line(err)})")
    else:
        result = report(model, source, float_path, candidate, (right_or_wrong(float_path, split, preprocess),
                                                               int8_correct), image, batch)
        result["int8"]["calibration_images"] = min(calibration_images, len(read_split("train").paths))
    return finish(staged, result, split, candidate)


def finish(staged: Callable[[Path], Path], result: dict, split: str, candidate: Path) -> str:
    """Publish the int8 candidate if kept (its folder empty otherwise) and the report; the verdict's line."""
    result["evaluated_on"] = split
    staged(EXPORTED_INT8_DIR).mkdir()
    if result["int8"]["kept"]:
        candidate.rename(staged(EXPORTED_INT8))
    write_json(staged(DEPLOY_JSON), result)
    staged(DEPLOY_MD).write_text(table(result), encoding="utf-8")
    return result["int8"]["line"]


def accuracy(correct: Sequence[bool]) -> dict:
    """Images right of all, the accuracy and its 95% Wilson interval."""
    right = int(sum(correct))
    total = len(correct)
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
    float_median = float(np.median(float_seconds))
    int8_median = float(np.median(int8_seconds))
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
    acc = result["accuracy"]
    speed = result["latency_pairs"]
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
