"""plots/calibration/<mode>.png: the reliability diagram before and after temperature scaling, and the
risk-coverage curve of the calibrated confidence, side by side."""
from __future__ import annotations

import numpy as np
import torch

from transfer.core.figures import DPI, Figure
from transfer.evaluation.calibration import BINS, per_image, reliability
from transfer.evaluation.unsure import risk_coverage


def reliability_panel(ax, probs: torch.Tensor, labels: list[int], label: str, color: str, ece: float) -> None:
    terms = per_image(probs, labels)
    table = reliability(terms["confidence"], terms["correct"])
    used = table["images"] > 0
    ax.plot(table["confidence"][used], table["accuracy"][used], "o-", color=color, label=f"{label} (ECE {ece:.3f})")


def calibration_figure(before: torch.Tensor, after: torch.Tensor, labels: list[int], report: dict,
                       mode: str, split: str) -> Figure:
    """Left: accuracy against mean confidence per bin (on the diagonal: calibrated). Right: accuracy on the
    images kept against the share kept, thresholding the calibrated confidence."""
    fig = Figure(figsize=(10, 4.4), dpi=DPI)
    reliability_ax, coverage_ax = fig.subplots(1, 2)
    reliability_ax.plot([0, 1], [0, 1], ":", color="gray", label="calibrated")
    reliability_panel(reliability_ax, before, labels, "before", "tab:red", report["before"]["ece"])
    reliability_panel(reliability_ax, after, labels, f"after (T = {report['temperature']:.2f})", "tab:blue",
                      report["after"]["ece"])
    reliability_ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=f"mean confidence ({BINS} bins)", ylabel="accuracy",
                       title=f"{mode}: reliability on {split}")
    reliability_ax.legend(loc="upper left", fontsize=8)
    terms = per_image(after, labels)
    curve = risk_coverage(terms["confidence"], terms["correct"])
    coverage_ax.plot(curve["coverage"], curve["accuracy"], color="tab:blue")
    coverage_ax.axhline(np.mean(terms["correct"]), ls=":", color="gray", label="all images")
    coverage_ax.set(xlim=(0, 1.02), xlabel="share of images kept (calibrated confidence >= threshold)",
                    ylabel="accuracy on the kept images", title=f"{mode}: risk-coverage on {split}")
    coverage_ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig
