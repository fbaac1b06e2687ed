"""Stage evaluate@<mode>: metrics/<mode>.json (the headline numbers), results/details/<mode>.json
(per-class scores, confusion matrix, model size), per-image predictions (a DVC confusion plot), a grid
of the misclassified images and one of the first images of each class.

All of them are of the split that reports: test when the dataset has one (val chose the kept epoch,
so its scores are optimistic), else val; `evaluated_on` says which, and with a test set the val
scores stand beside the test ones under `val`."""
from __future__ import annotations

import argparse
import csv
import io

from transfer.core import params as params_module
from transfer.core import publish
from transfer.core.devices import bf16_inference, pick_device
from transfer.core.files import save_figure, write_json
from transfer.core.paths import errors_png, mode_details, mode_metrics, model_file, predictions_csv, samples_png
from transfer.core.stage import log, run_main
from transfer.data.loaders import StoreImages, read_classes, read_split
from transfer.evaluation.grids import error_grid, sample_grid
from transfer.evaluation.scores import headline_scores, mode_files, predict_probabilities, reporting_split
from transfer.models.checkpoints import check_belongs, load_checkpoint

PARAMS = ("train.device", "train.inference_dtype", "modes.{mode}")  # as dvc.yaml's evaluate stage declares them


@run_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate one trained mode on the test split (val without one).")
    parser.add_argument("mode")
    mode = parser.parse_args(argv).mode
    params = params_module.declared(params_module.load(), PARAMS, mode)
    device = pick_device(params_module.mode_value(params, mode, "device"))
    bf16 = bf16_inference(device, params_module.mode_value(params, mode, "inference_dtype"))
    model, meta = load_checkpoint(model_file(mode), device)
    check_belongs(meta, model_file(mode), mode, read_classes())  # not another mode's or project's model
    names, split = meta["class_names"], reporting_split()

    def predict(name: str):  # images read a batch at a time: memory flat in the dataset size
        rows, images = read_split(name), StoreImages(name, meta["preprocess"])
        return rows, images, predict_probabilities(model, images, rows.labels, meta["preprocess"], device, bf16)

    rows, images, probs = predict(split)
    val_scores = headline_scores(predict("val")[2], read_split("val").labels, names) if split == "test" else None
    metrics, details = mode_files(mode, meta, probs, rows.labels, split, val_scores)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "actual", "predicted", "confidence"])
    for path, label, p in zip(rows.paths, rows.labels, probs):
        writer.writerow([path, names[label], names[int(p.argmax())], f"{p.max().item():.4f}"])
    written = (predictions_csv(mode), errors_png(mode), samples_png(mode), mode_details(mode), mode_metrics(mode))
    with publish.outputs(f"evaluate@{mode}", written) as staged:
        staged(predictions_csv(mode)).write_text(buffer.getvalue(), encoding="utf-8")
        save_figure(error_grid(images, rows.labels, probs, names, mode, split, model, meta["preprocess"]),
                    staged(errors_png(mode)))
        save_figure(sample_grid(images, rows.labels, probs, names, mode, meta["arch"], split),
                    staged(samples_png(mode)))
        write_json(staged(mode_details(mode)), details)
        write_json(staged(mode_metrics(mode)), metrics)
    log(f"evaluate@{mode}: {split} accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}")


if __name__ == "__main__":
    main()
