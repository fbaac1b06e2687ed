"""Classify image files with the exported model: python -m stages.predict [options] PATH...

Not a pipeline stage: the command a user runs on their own images after `dvc repro` (or `dvc pull`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transfer.core.errors import UserError, printable
from transfer.core.paths import EXPORTED_MODEL
from transfer.core.stage import run_main
from transfer.models.inference import IMAGE_EXTENSIONS, classify, image_files

DEFAULT_MODEL = EXPORTED_MODEL


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stages.predict",
        description="Print the most likely classes of each image, as the trained model sees them.",
        epilog="Examples:\n"
               "  python -m stages.predict photo.jpg\n"
               "  python -m stages.predict --top-k 1 data/raw/hymenoptera_data/val\n"
               "  python -m stages.predict --json --model models/modes/frozen.pt a.png b.png\n"
               "  python -m stages.predict --model models/model.onnx photo.jpg    # through onnxruntime\n"
               "  python -m stages.predict --min-confidence 0.9 photos/    # unsure below 0.9\n"
               "The model comes from the pipeline: run `dvc repro` (or `dvc pull`) first.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files, or folders searched recursively for image files "
                             f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help=f"model checkpoint (default: {DEFAULT_MODEL}; models/modes/<mode>.pt for one mode; "
                             "models/model.onnx runs the exported ONNX file through onnxruntime)")
    parser.add_argument("--top-k", type=positive_int, default=3,
                        help="how many classes to print per image (default: 3; at most the number of classes)")
    parser.add_argument("--min-confidence", type=probability, default=None, metavar="X",
                        help="say unsure of an image whose top calibrated probability is below X (default: the "
                             "model's own threshold, set by params export.target_accuracy; 0: never unsure)")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON list of {"path", "top": [{"class", "probability"}], "unsure"} '
                             '(or {"path", "error"} for an unreadable file)')
    return parser.parse_args(argv)


def text_line(result: dict) -> str:
    path = printable(result["path"])
    if "error" in result:
        return f"{path}: {printable(result['error'])}"
    classes = ", ".join(f"{printable(t['class'])} {t['probability']:.2f}" for t in result["top"])
    return f"{path}: unsure ({classes})" if result["unsure"] else f"{path}: {classes}"


@run_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    files = image_files(args.paths)
    if not args.model.exists():
        raise UserError(f"{args.model}: no such model; run `dvc repro` (or `dvc pull`) to produce it, "
                        "or pass --model")
    # Imported late: --help and mistakes in the paths answer at once, without loading torch.
    if args.model.suffix == ".onnx":
        from transfer.models.onnx_model import OnnxClassifier

        model = OnnxClassifier(args.model)
        meta = model.meta
    else:
        from transfer.models.checkpoints import load_checkpoint

        model, meta = load_checkpoint(args.model, device="cpu")
    top_k = min(args.top_k, len(meta["class_names"]))
    threshold = args.min_confidence if args.min_confidence is not None else meta.get("min_confidence")
    results = classify(model, meta, files, top_k, threshold)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for result in results:
            print(text_line(result))
    failed = sum("error" in result for result in results)
    if failed:
        print(f"predict: {failed} of {len(results)} files could not be read", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
