"""Networks: backbones with a new head, their files (.pt checkpoints, ONNX), and BatchNorm folding."""
