"""Stage export: publish the model of the mode named by params `mode`, or with `mode: auto` the mode
compare recommends (results/summary.json: the cheapest of the modes no other beats significantly).

Writes models/model.pt (models/modes/<mode>.pt with the temperature evaluate@<mode> fit on val, from
results/details/<mode>.json, and the unsure threshold), models/model.onnx (the same network and temperature
for onnxruntime, published only if it gives the PyTorch model's calibrated probabilities on every val image
of data/store: transfer.models.onnx_model), results/headline.json (that mode's headline metrics from
metrics/<mode>.json and the split they are of, its name and arch from results/details/<mode>.json; with
params export.target_accuracy, the unsure threshold chosen on val and its coverage and accuracy on the
reporting split: transfer.evaluation.unsure) and
plots/model/val_predictions.png (a copy of evaluate@<mode>'s plots/samples/<mode>.png: the model's
predictions on the first val images of each class), and for deployment models/int8/model.int8.onnx (the
ONNX file quantized to int8, published only when a paired test on the reporting split finds it not
significantly worse and measurably faster: transfer.evaluation.deployment) with results/deploy.json and
results/deploy.md (each published file's size, latency and throughput here, the int8 verdict). It reads
only that mode's files and the images, so switching `mode` re-trains nothing."""
from __future__ import annotations

import shutil
from pathlib import Path

from transfer.core import params as params_module
from transfer.core import publish
from transfer.core.errors import UserError
from transfer.core.files import read_json, write_json
from transfer.core.paths import (
    DEPLOY_JSON,
    DEPLOY_MD,
    EXPORT_PLOTS_DIR,
    EXPORTED_INT8_DIR,
    EXPORTED_MODEL,
    EXPORTED_ONNX,
    EXPORTED_SAMPLES,
    HEADLINE_JSON,
    SUMMARY_JSON,
    mode_details,
    mode_metrics,
    model_file,
    predictions_csv,
    samples_png,
    val_predictions_csv,
)
from transfer.core.settings import ExportSettings, section
from transfer.core.stage import log, run_main
from transfer.evaluation import deployment
from transfer.models.checkpoints import save_calibrated

PARAMS = ("mode", "export.calibration_images", "export.target_accuracy")  # as dvc.yaml's export stage declares them
# What headline.json shows of the unsure threshold (transfer.evaluation.unsure): few rows of `dvc metrics diff`.
UNSURE_KEYS = ("threshold", "coverage", "coverage_ci", "accuracy", "accuracy_ci", "scored_by")
HEADLINE_KEYS = ("accuracy", "macro_f1", "balanced_accuracy", "calibrated_ece")


def read_field(path: Path, mode: str, keys: tuple[str, ...]) -> dict:
    """{key: value} of `keys` in the JSON object at `path`, written by evaluate@<mode>."""
    data = read_json(path)
    missing = [key for key in keys if not isinstance(data, dict) or key not in data]
    if missing:
        raise UserError(f"{path}: lacks {', '.join(missing)}; re-run evaluate@{mode} (dvc repro)")
    return {key: data[key] for key in keys}


def publish_onnx(source: Path, target: Path, calibration: dict) -> str:
    """The ONNX file of the checkpoint at `source` with the `calibration` fields (temperature, unsure
    threshold), written to `target` and checked against the checkpoint's calibrated probabilities on the
    val images: one line and no file where they differ."""
    from transfer.data.images import StoreImages
    from transfer.data.split_files import read_split
    from transfer.data.transforms import eval_batches
    from transfer.models.checkpoints import load_checkpoint
    from transfer.models.onnx_model import check_parity, export

    model, meta = load_checkpoint(source, device="cpu")
    meta.update(calibration)
    images = StoreImages("val", meta["preprocess"])
    batches = (x for x, _ in eval_batches(images, read_split("val").labels, meta["preprocess"], 16))
    export(model, meta, target)
    count, largest = check_parity(model, target, batches, calibration["temperature"])
    return f"{EXPORTED_ONNX} gives the same top-1 on all {count} val images, probabilities within {largest:.1e}"


def calibration_of(mode: str, target_accuracy: float | None, split: str) -> tuple[dict, dict | None]:
    """({"temperature", "min_confidence"} of the published model, the unsure report or None): the
    temperature evaluate@<mode> fit, and with `target_accuracy` the threshold chosen on val's calibrated
    predictions, scored on the reporting `split`'s."""
    from transfer.evaluation.unsure import read_confidences, unsure_report
    from transfer.models.checkpoints import calibration_problems

    details = mode_details(mode)
    found = read_field(details, mode, ("calibration",))["calibration"]
    calibration = {"temperature": found.get("temperature") if isinstance(found, dict) else None,
                   "min_confidence": None}
    problems = calibration_problems(calibration)
    if problems:
        raise UserError(f"{details}: calibration.{problems[0]}; re-run evaluate@{mode} (dvc repro)")
    if target_accuracy is None:
        return calibration, None
    report = unsure_report(read_confidences(val_predictions_csv(mode)), read_confidences(predictions_csv(mode)),
                           target_accuracy, split)
    calibration["min_confidence"] = report["threshold"]
    return calibration, report


def recommended_mode() -> str:
    """The mode compare recommends: the cheapest of those no other mode beats significantly."""
    summary = read_json(SUMMARY_JSON)
    mode = summary.get("verdict", {}).get("recommended") if isinstance(summary, dict) else None
    if not isinstance(mode, str):
        raise UserError(f"{SUMMARY_JSON}: names no recommended mode; re-run compare (dvc repro)")
    if mode in (summary.get("baseline") or {}).get("not_above", []):  # published all the same, said loudly
        log(f"warning: {mode} is not significantly above the majority-class baseline ({SUMMARY_JSON}); "
            "it is published only as the least bad mode")
    return mode


@run_main
def main() -> None:
    params = params_module.declared(params_module.load(), PARAMS)
    export = section(params, "export", ExportSettings)
    mode = params["mode"] if params["mode"] != params_module.AUTO_MODE else recommended_mode()
    source = model_file(mode)
    samples = samples_png(mode)
    for path in (source, samples):
        if not path.is_file():
            raise UserError(f"{path}: missing; run train@{mode} and evaluate@{mode} first (dvc repro)")
    headline = {"mode": mode, "chosen_by": "compare's verdict" if params["mode"] == params_module.AUTO_MODE
                else "params", "arch": read_field(mode_details(mode), mode, ("arch",))["arch"],
                **read_field(mode_metrics(mode), mode, HEADLINE_KEYS)}
    # Which split the scores are of: test where the dataset has one (val chose the kept epoch).
    headline["evaluated_on"] = read_json(mode_metrics(mode)).get("evaluated_on", "val")
    calibration, unsure = calibration_of(mode, export.target_accuracy, headline["evaluated_on"])
    if unsure is not None:
        headline["unsure"] = {key: unsure[key] for key in UNSURE_KEYS}

    written = (EXPORT_PLOTS_DIR, HEADLINE_JSON, EXPORTED_MODEL, EXPORTED_ONNX,
               EXPORTED_INT8_DIR, DEPLOY_JSON, DEPLOY_MD)
    with publish.outputs("export", written) as staged:
        # first: a model that fails publishes nothing
        onnx_report = publish_onnx(source, staged(EXPORTED_ONNX), calibration)
        plots = staged(EXPORT_PLOTS_DIR)  # the whole folder: no stale figure of an earlier mode
        plots.mkdir()
        shutil.copyfile(samples, plots / EXPORTED_SAMPLES.relative_to(EXPORT_PLOTS_DIR))
        write_json(staged(HEADLINE_JSON), headline)
        save_calibrated(source, staged(EXPORTED_MODEL), calibration)
        # the int8 file is quantized from the float ONNX file, temperature and metadata included
        int8_report = deployment.publish(staged, staged(EXPORTED_MODEL), export.calibration_images)
    log(f"export: {mode} -> {EXPORTED_MODEL} "
        f"({headline['evaluated_on']} accuracy {headline['accuracy']:.4f}, macro F1 {headline['macro_f1']:.4f}, "
        f"temperature {calibration['temperature']:.3f}); {onnx_report}")
    if unsure is not None:
        low, high = unsure["accuracy_ci"]
        log(f"export: unsure below {unsure['threshold']:.4f} (chosen on val for accuracy "
            f"{unsure['target_accuracy']}); on {unsure['scored_on']}: keeps {unsure['kept']} of {unsure['images']} "
            f"images, {unsure['accuracy']:.4f} accurate [{low:.3f}, {high:.3f}]")
    log(f"export: {int8_report}")


if __name__ == "__main__":
    main()
