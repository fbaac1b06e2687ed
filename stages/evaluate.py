"""Stage evaluate@<mode>: metrics/<mode>.json (the headline numbers), results/details/<mode>.json
(per-class scores, confusion matrix, model size, calibration), per-image predictions (a DVC confusion
plot; and val's, for export's unsure threshold), a grid of the misclassified images, one of the first
images of each class, and the reliability diagram and risk-coverage curve (transfer.evaluation.calibration).
It also times the model on this machine (transfer.models.cost.model_cost): `latency_ms` (batch 1) and
`params` join the headline numbers, and the rest with the machine goes to the details under `inference_cost`.

All of them are of the split that reports: test when the dataset has one (val chose the kept epoch,
so its scores are optimistic), else val; `evaluated_on` says which, and with a test set the val
scores stand beside the test ones under `val`."""
from __future__ import annotations

import argparse

import torch

from transfer.core import params as params_module
from transfer.core import publish
from transfer.core.devices import bf16_inference, inference_batch, pick_device
from transfer.core.files import save_figure, write_json
from transfer.core.paths import (
    calibration_png,
    errors_png,
    mode_details,
    mode_metrics,
    model_file,
    predictions_csv,
    samples_png,
    val_predictions_csv,
)
from transfer.core.stage import log, run_main
from transfer.data.images import StoreImages
from transfer.data.split_files import read_classes, read_split
from transfer.evaluation.calibration import calibrate, calibrated
from transfer.evaluation.calibration_figures import calibration_figure
from transfer.evaluation.grids import error_grid, sample_grid
from transfer.evaluation.scores import headline_scores, mode_files, predict_logits, predictions_text, reporting_split
from transfer.models.checkpoints import check_belongs, load_checkpoint
from transfer.models.cost import machine, model_cost

PARAMS = ("train.device", "train.inference_dtype", "modes.{mode}")  # as dvc.yaml's evaluate stage declares them


def inference_cost(mode: str, model, meta: dict, device: torch.device, bf16: bool) -> dict:
    """The mode's cost to run on this machine: its timings (CPU on one thread, or the GPU evaluation
    runs on), its parameters, its model file's size and the machine named."""
    measured = model_cost(model, meta["preprocess"]["image_size"], device, inference_batch(device), bf16)
    where = machine()
    if device.type == "cuda":
        where["gpu"] = torch.cuda.get_device_name(device)
    return {**measured, "params": meta["total_params"],
            "model_file_megabytes": round(model_file(mode).stat().st_size / 1e6, 3), "machine": where}


@run_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate one trained mode on the test split (val without one).")
    parser.add_argument("mode")
    mode = parser.parse_args(argv).mode
    params = params_module.declared(params_module.load(), PARAMS, mode)
    device = pick_device(params_module.mode_value(params, mode, "device"),
                         params_module.mode_key(params, mode, "device"))
    bf16 = bf16_inference(device, params_module.mode_value(params, mode, "inference_dtype"))
    model, meta = load_checkpoint(model_file(mode), device)
    check_belongs(meta, model_file(mode), mode, read_classes())  # not another mode's or project's model
    names = meta["class_names"]
    split = reporting_split()

    def predict(name: str):  # images read a batch at a time: memory flat in the dataset size
        rows = read_split(name)
        images = StoreImages(name, meta["preprocess"])
        return rows, images, predict_logits(model, images, rows.labels, meta["preprocess"], device, bf16)

    rows, images, logits = predict(split)
    val_rows, _, val_logits = predict("val") if split == "test" else (rows, images, logits)
    probs = torch.softmax(logits, 1)
    val_scores = headline_scores(torch.softmax(val_logits, 1), val_rows.labels, names) if split == "test" else None
    metrics, details = mode_files(mode, meta, probs, rows.labels, split, val_scores)
    calibration, after = calibrate(val_logits, val_rows.labels, logits, rows.labels, split)
    temperature = calibration["temperature"]
    metrics["calibrated_ece"] = calibration["after"]["ece"]  # the temperature itself: results/details/<mode>.json
    details["calibration"] = calibration
    cost = inference_cost(mode, model, meta, device, bf16)
    metrics.update(latency_ms=cost["latency_batch_1"]["median_ms"], params=cost["params"])
    details["inference_cost"] = cost
    shown = calibrated(logits, temperature)  # the confidence a user of the published model sees
    written = (predictions_csv(mode), val_predictions_csv(mode), errors_png(mode), samples_png(mode),
               calibration_png(mode), mode_details(mode), mode_metrics(mode))
    with publish.outputs(f"evaluate@{mode}", written) as staged:
        staged(predictions_csv(mode)).write_text(
            predictions_text(rows.paths, rows.labels, names, probs, shown), encoding="utf-8")
        staged(val_predictions_csv(mode)).write_text(
            predictions_text(val_rows.paths, val_rows.labels, names, torch.softmax(val_logits, 1),
                             calibrated(val_logits, temperature)), encoding="utf-8")
        save_figure(error_grid(images, rows.labels, shown, names, mode, split, model, meta["preprocess"]),
                    staged(errors_png(mode)))
        save_figure(sample_grid(images, rows.labels, shown, names, mode, meta["arch"], split),
                    staged(samples_png(mode)))
        save_figure(calibration_figure(probs, after, rows.labels, calibration, mode, split),
                    staged(calibration_png(mode)))
        write_json(staged(mode_details(mode)), details)
        write_json(staged(mode_metrics(mode)), metrics)
    log(f"evaluate@{mode}: {split} accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}, "
        f"ECE {calibration['before']['ece']:.4f} -> {calibration['after']['ece']:.4f} (temperature {temperature:.3f}), "
        f"{metrics['latency_ms']:.1f} ms an image at batch 1 on {cost['device']}")


if __name__ == "__main__":
    main()
