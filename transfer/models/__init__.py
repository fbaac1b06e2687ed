"""Networks and their files. Entry points: `backbones.build_model` (any backbone family with a new
head), `checkpoints.save_checkpoint` / `load_checkpoint` (model files as data), `onnx_model.export`,
`quantization.quantize` (int8), `inference` (classifying image files), `cost` (size and latency)."""
