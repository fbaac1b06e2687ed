"""The linear probe, the suite's floor for a mode: scikit-learn's LogisticRegression on standardised centre-crop
features of the frozen ImageNet backbone (model.arch at train.image_size), fitted on train and scored on the
reporting split (test where there is one, else val), image by image; and each mode's run paired with it on those
images. bench.suite and bench.frozen_heads use it."""
from __future__ import annotations

from pathlib import Path

from bench import peer, working_dir
from transfer.evaluation.stats import format_p, paired, wilson_interval


class ProbeError(Exception):
    """A run and the probe that did not score the same images: one line."""


def linear_probe(folder: Path, params: dict) -> tuple[float, str, str]:
    """(accuracy, split, right/wrong per image in the split's row order) of a logistic regression on the frozen
    backbone's centre-crop features."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from transfer.data.images import StoreImages
    from transfer.data.split_files import read_split
    from transfer.data.transforms import eval_batches, working_preprocess
    from transfer.models.backbones import build_model
    from transfer.training.trainable import frozen_split

    model, preprocess = build_model(params["model"]["arch"], 2, pretrained=True)
    preprocess = working_preprocess(preprocess, params["train"]["image_size"])
    encoder = frozen_split(model, "head")[0].eval()

    @torch.inference_mode()
    def features(split: str):
        rows = read_split(split)
        images = StoreImages(split, preprocess)
        feats = [encoder(x) for x, _ in eval_batches(images, rows.labels, preprocess, 32)]
        return torch.cat(feats).numpy(), rows.labels

    with working_dir(folder):
        split = "test" if read_split("test").paths else "val"
        train_x, train_y = features("train")
        eval_x, eval_y = features(split)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    right = [int(p) == y for p, y in zip(probe.fit(train_x, train_y).predict(eval_x), eval_y)]
    return sum(right) / len(right), split, peer.correct_string(right)


def pairs(found: dict) -> list[dict]:
    """Every mode row's run against the linear probe on the same images: images only the run gets right, only the
    probe, McNemar's exact p, each accuracy with its 95% Wilson interval."""
    probe = [c == "1" for c in found["probe_correct"]]
    out = []
    for row, summary in found["modes"].items():
        for run in summary["runs"]:
            right = [c == "1" for c in run["correct"]]
            if len(right) != len(probe):
                raise ProbeError(f"{found['project']}: {row} predicted {len(right)} images and the probe {len(probe)}")
            tally = paired(right, probe)
            out.append({"mode": row, "seed": run["seed"], "images": len(right), "mode_only": tally["only_a"],
                        "probe_only": tally["only_b"], "p": tally["p"], "mode_accuracy": sum(right) / len(right),
                        "mode_interval": list(wilson_interval(sum(right), len(right))),
                        "probe_accuracy": sum(probe) / len(probe),
                        "probe_interval": list(wilson_interval(sum(probe), len(probe)))})
    return out


def lines(results: dict) -> list[str]:
    """The suite's block: each mode's run against the linear probe, on the same images."""
    found = [(name, pair) for name, result in results.items() for pair in result.get("probe_paired", [])]
    if not found:
        return []
    out = ["", "against the linear probe, the same images: images only the mode / only the probe gets right, exact "
               "McNemar; accuracy [95% Wilson]",
           f"{'dataset':24} {'mode':22} {'seed':>4} {'images':>6} {'mode acc [95%]':>21} {'probe acc [95%]':>21} "
           f"{'mode':>5} {'probe':>5} {'p':>11}"]
    for name, p in found:
        mode, probe = (peer.accuracy_text(p[f"{k}_accuracy"], p[f"{k}_interval"]) for k in ("mode", "probe"))
        out.append(f"{name[:24]:24} {p['mode'][:22]:22} {p['seed']:4d} {p['images']:6d} {mode:>21} {probe:>21} "
                   f"{p['mode_only']:5d} {p['probe_only']:5d} {format_p(p['p']):>11}")
    return out
