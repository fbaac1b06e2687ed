"""The exported model as ONNX: the network, its temperature (logits / T) and a softmax, so that it gives
calibrated probabilities; with what its input must look like and the
class names in the file's metadata, so that onnxruntime alone runs it, without this repository.

torch.onnx's TorchScript exporter (`dynamo=False`) writes it: it works on every torch this project
supports (2.4 on), needs only the `onnx` package, and here exported EfficientNet-Lite0 in 9 s against
35 s for the dynamo exporter (which also needs `onnxscript`). Both gave the same outputs to 1e-6."""
from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from transfer.core.errors import UserError, cut, first_line, name_count, shown
from transfer.models.checkpoints import (
    CALIBRATION_DEFAULTS,
    CHANNELS,
    class_count_problems,
    meta_problems,
)

FORMAT = "transfer-pipeline onnx 1"
OPSET = 17
INPUT = "image"
OUTPUT = "probabilities"
# The metadata fields predict reads: plain strings, and JSON ones.
TEXT_FIELDS = ("arch", "mode")
JSON_FIELDS = ("class_names", "classes", "preprocess")
# JSON fields a file of an earlier version lacks: the temperature (already in the graph: informative) and
# the unsure threshold.
OPTIONAL_JSON_FIELDS = tuple(CALIBRATION_DEFAULTS)
# The largest difference in any class probability between ONNX and PyTorch a published file may show.
MAX_PROBABILITY_DIFFERENCE = 1e-4


def metadata(meta: dict) -> dict[str, str]:
    """The ONNX file's metadata_props: strings, the structured ones as JSON."""
    pre = meta["preprocess"]
    return {"format": FORMAT, "arch": meta["arch"], "mode": str(meta.get("mode", "")),
            "class_names": json.dumps(meta["class_names"], ensure_ascii=False),
            "classes": json.dumps(meta["classes"], ensure_ascii=False),
            "preprocess": json.dumps({key: pre[key] for key in ("image_size", "resize_size", "mean", "std",
                                                                "interpolation")}),
            "input": (f"{INPUT}: float32 [batch, 3, {pre['image_size']}, {pre['image_size']}], RGB; resize the "
                      f"short side to resize_size ({pre['interpolation']}), center-crop image_size, scale to 0-1, "
                      "subtract mean and divide by std per channel"),
            "output": f"{OUTPUT}: float32 [batch, classes], in the order of class_names, calibrated (the graph "
                      "divides the logits by temperature before the softmax); below min_confidence, unsure",
            **{field: json.dumps(meta.get(field, default)) for field, default in CALIBRATION_DEFAULTS.items()}}


class Calibrated(nn.Module):
    """The network's logits divided by the temperature, then the softmax: calibrated probabilities."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x).float() / self.temperature, dim=1)


def export(model: nn.Module, meta: dict, path: Path) -> None:
    """Write `model` (eval mode, on the CPU), its temperature (meta's, 1 if none) and a softmax as ONNX at
    `path`, with metadata."""
    import onnx

    size = meta["preprocess"]["image_size"]
    network = Calibrated(model, meta.get("temperature", CALIBRATION_DEFAULTS["temperature"])).eval()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice and tracer remarks
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (torch.zeros(2, 3, size, size),), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, metadata(meta))
    onnx.save(graph, str(path))


def check_parity(model: nn.Module, path: Path, batches: Iterable[torch.Tensor],
                 temperature: float = 1.0) -> tuple[int, float]:
    """(images, largest probability difference) of the ONNX file against `model`'s probabilities at
    `temperature` on `batches`; one line if the difference exceeds MAX_PROBABILITY_DIFFERENCE or the top-1
    class differs on any image."""
    session = OnnxClassifier(path)
    count = 0
    largest = 0.0
    disagree = 0
    for x in batches:
        with torch.inference_mode():
            expected = torch.softmax(model(x).float() / temperature, dim=1)
        got = session.probabilities(x)
        largest = max(largest, (got - expected).abs().max().item())
        disagree += (got.argmax(1) != expected.argmax(1)).sum().item()
        count += len(x)
    if largest > MAX_PROBABILITY_DIFFERENCE or disagree:
        raise UserError(f"the ONNX model differs from the PyTorch model on the {count} val images (largest "
                        f"probability difference {largest:.2e}, most allowed {MAX_PROBABILITY_DIFFERENCE:g}; "
                        f"top-1 class differs on {disagree}); not published")
    return count, largest


class OnnxClassifier:
    """An ONNX file of this pipeline run by onnxruntime on the CPU: class probabilities of image batches."""

    def __init__(self, path: str | Path):
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such model; run `dvc repro` (or `dvc pull`) first")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for any unreadable file
            raise UserError(f"{path}: {why_unloadable(path, err)}") from None
        self.path = path
        self.meta = read_metadata(path, self.session)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.session.run([OUTPUT], {INPUT: x.float().numpy()})[0]
        expected = (len(x), len(self.meta["class_names"]))
        if probs.shape != expected:  # a graph whose declared output shape is not what it computes
            raise UserError(f"{self.path}: the network gave {OUTPUT} of shape {list(probs.shape)}, not "
                            f"{list(expected)} (images, class_names)")
        return torch.from_numpy(probs)


def why_unloadable(path: Path, err: Exception) -> str:
    """Why onnxruntime refused the file, read from the file itself where it can be: weights stored
    outside its folder (onnxruntime refuses to read them) or missing, else onnxruntime's own words."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError, onnx's own checks: no ONNX file either way
        return f"not an ONNX model ({type(err).__name__})"
    folder = path.resolve().parent
    for tensor in graph.graph.initializer:
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), None)
        if location is None:
            continue
        target = (folder / location).resolve()
        if not target.is_relative_to(folder):
            return (f"its weights are stored outside its folder (external data {shown(location)}), "
                    "which is never read; keep them beside the model file")
        if not target.is_file():
            return f"its weights file is missing (external data {shown(location)}, beside the model file)"
    return f"onnxruntime cannot load it ({type(err).__name__}: {cut(first_line(err))})"


def read_metadata(path: Path, session) -> dict:
    """The metadata of an ONNX file of this pipeline, every field checked (and checked against the
    network's input and output shapes); one line naming the fields if any is wrong."""
    props = session.get_modelmeta().custom_metadata_map
    if props.get("format") != FORMAT:
        raise UserError(f"{path}: not an ONNX model of this pipeline (no {FORMAT!r} format tag)")
    meta = {}
    problems = []
    for field in TEXT_FIELDS + JSON_FIELDS + OPTIONAL_JSON_FIELDS:
        if field in OPTIONAL_JSON_FIELDS and field not in props:
            continue
        if field not in props:
            problems.append(f"{field}: missing")
        elif field in TEXT_FIELDS:
            meta[field] = props[field]
        else:
            try:
                meta[field] = json.loads(props[field])
            except json.JSONDecodeError as err:
                problems.append(f"{field}: not JSON ({err})")
            except RecursionError:
                problems.append(f"{field}: JSON nested too deep")
    problems = problems or meta_problems(meta) or class_count_problems(meta) or graph_problems(session, meta)
    if problems:
        raise UserError(f"{path}: an ONNX model of this pipeline with damaged metadata ({'; '.join(problems)})")
    return meta


def graph_problems(session, meta: dict) -> list[str]:
    """The network's input and output against the metadata: images of preprocess.image_size, one
    probability per class name."""
    inputs = session.get_inputs()
    outputs = session.get_outputs()
    if [i.name for i in inputs] != [INPUT] or [o.name for o in outputs] != [OUTPUT]:
        return [f"graph: takes {shown([i.name for i in inputs])} and gives {shown([o.name for o in outputs])}, "
                f"not [{INPUT!r}] and [{OUTPUT!r}]"]
    problems = []
    size = meta["preprocess"]["image_size"]
    if inputs[0].shape[1:] != [CHANNELS, size, size]:
        problems.append(f"preprocess.image_size: {size}, but the network takes {INPUT} of shape "
                        f"{shown(inputs[0].shape)}")
    if outputs[0].shape[1:] != [len(meta["class_names"])]:
        problems.append(f"class_names: {name_count(len(meta['class_names']))}, but the network gives {OUTPUT} of shape "
                        f"{shown(outputs[0].shape)}")
    return problems
