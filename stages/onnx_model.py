"""The exported model as ONNX: the network and a softmax, with what its input must look like and the
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

from stages.common import UserError

FORMAT = "transfer-pipeline onnx 1"
OPSET = 17
INPUT, OUTPUT = "image", "probabilities"
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
            "output": f"{OUTPUT}: float32 [batch, classes], in the order of class_names"}


def export(model: nn.Module, meta: dict, path: Path) -> None:
    """Write `model` (eval mode, on the CPU) followed by a softmax as ONNX at `path`, with metadata."""
    import onnx

    size = meta["preprocess"]["image_size"]
    network = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice and tracer remarks
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (torch.zeros(2, 3, size, size),), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, metadata(meta))
    onnx.save(graph, str(path))


def check_parity(model: nn.Module, path: Path, batches: Iterable[torch.Tensor]) -> tuple[int, float]:
    """(images, largest probability difference) of the ONNX file against `model` on `batches`; one line
    if the difference exceeds MAX_PROBABILITY_DIFFERENCE or the top-1 class differs on any image."""
    session = OnnxClassifier(path)
    count, largest, disagree = 0, 0.0, 0
    for x in batches:
        with torch.inference_mode():
            expected = torch.softmax(model(x).float(), dim=1)
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
            raise UserError(f"{path}: not an ONNX model ({type(err).__name__})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if props.get("format") != FORMAT:
            raise UserError(f"{path}: not an ONNX model of this pipeline (no {FORMAT!r} format tag)")
        self.meta = {"arch": props["arch"], "mode": props["mode"], "class_names": json.loads(props["class_names"]),
                     "classes": json.loads(props["classes"]), "preprocess": json.loads(props["preprocess"])}

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run([OUTPUT], {INPUT: x.float().numpy()})[0])
