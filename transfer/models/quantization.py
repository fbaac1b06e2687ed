"""The exported model in int8: onnxruntime's static quantization of the float ONNX file (QDQ format,
int8 weights per output channel, activation ranges calibrated on training images). Whether it is kept
is transfer.evaluation.deployment's gate.

Both onnxruntime steps keep the float file's metadata (class names, preprocessing), so predict reads the
int8 file as it reads the float one; OnnxClassifier checks it on every load."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np


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
