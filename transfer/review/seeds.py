"""Accuracy over seeds: how much of a score is the seed? Run the same pipeline with a few seeds as DVC
experiments, then read what DVC recorded:

    dvc exp run --queue -S 'train.seed=range(0,3)'    # three experiments, seeds 0, 1, 2 (queued)
    dvc queue start                                    # run them (`dvc queue status` shows progress)
    python -m stages.report --seeds [--json seeds.json]

For each mode (metrics/<mode>.json) it prints the number of seeds, the mean accuracy, the standard deviation
(n - 1) and the 95% interval of the mean (Student t with n - 1 degrees of freedom). It reads `dvc exp show
--json` (DVC 3: each baseline's "experiments", each with "revs" and an "executor"): only finished
experiments count (queued, running and failed ones are counted apart), one per seed (the newest), and only
those whose other params match the newest experiment's (a different lr is not another seed)."""
from __future__ import annotations

import json
import math
import re
import statistics

from transfer.core.errors import plural

CONFIDENCE = 0.95
QUEUE = "dvc exp run --queue -S 'train.seed=range(0,3)'` then `dvc queue start"
METRICS_FILE = re.compile(r"metrics/(.+)\.json")


def t_quantile(p: float, df: int) -> float:
    """The Student t quantile q with P(T <= q) = p (0.5 <= p < 1): the density integrated from 0 by
    Simpson's rule, q found by bisection; good to about 1e-6 (4.3027 for p = 0.975, df = 2). No scipy."""
    if not 0.5 <= p < 1 or df < 1:
        raise ValueError(f"need 0.5 <= p < 1 and df >= 1, got {p}, {df}")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(t: float) -> float:
        return math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df))

    def cdf(x: float, steps: int = 2000) -> float:
        h = x / steps
        inner = sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
        return 0.5 + (density(0.0) + inner + density(x)) * h / 3

    low = 0.0
    high = 1.0
    while cdf(high) < p:
        low = high
        high = 2 * high
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < p else (low, middle)
    return (low + high) / 2


def spread(values: list[float], confidence: float = CONFIDENCE) -> dict:
    """{seeds, mean, std, low, high}: the mean, the sample standard deviation and the t interval of the
    mean; std and the interval are None for one value (one seed shows no spread)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"seeds": n, "mean": mean, "std": None, "low": None, "high": None}
    std = statistics.stdev(values)
    half = t_quantile(1 - (1 - confidence) / 2, n - 1) * std / math.sqrt(n)
    return {"seeds": n, "mean": mean, "std": std, "low": mean - half, "high": mean + half}


def _experiment(exp: dict) -> dict | None:
    """{name, seed, params, accuracy: {mode: value}} of a finished experiment; None for a queued,
    running or failed one."""
    state = (exp.get("executor") or {}).get("state")
    revs = exp.get("revs") or [None]
    rev = revs[0] if isinstance(revs, list) else None
    if state not in (None, "success") or not isinstance(rev, dict) or rev.get("error"):
        return None
    data = rev.get("data") or {}
    params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
    train = dict(params.get("train") or {})
    seed = train.pop("seed", None)
    if not isinstance(seed, int) or isinstance(seed, bool):  # a list or a string is no seed of this pipeline
        return None
    accuracy = {}
    for path, metrics in (data.get("metrics") or {}).items():
        value = ((metrics or {}).get("data") or {}).get("accuracy")
        match = METRICS_FILE.fullmatch(path)
        if match and isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
            accuracy[match.group(1)] = float(value)  # NaN and Infinity (JSON allows both) are no accuracy
    if not accuracy:
        return None
    others = json.dumps({**params, "train": train}, sort_keys=True, default=str)
    return {"name": exp.get("name") or rev.get("name"), "seed": seed, "others": others, "accuracy": accuracy}


def experiments(document) -> tuple[list[str], list[dict], int]:
    """(the baselines' revisions, every finished experiment newest first, how many are not finished)
    of `dvc exp show --json`; the workspace row is no experiment."""
    baselines = []
    found = []
    pending = 0
    for baseline in document if isinstance(document, list) else []:
        if not isinstance(baseline, dict) or baseline.get("rev") in (None, "workspace"):
            continue
        runs = [exp for exp in baseline.get("experiments") or [] if isinstance(exp, dict)]
        if runs:
            baselines.append(str(baseline["rev"]))
        for exp in runs:
            run = _experiment(exp)
            pending += run is None
            found += [run] if run else []
    return baselines, found, pending


def summarize(document) -> dict:
    """Each mode's spread over the seeds of the finished experiments (one per seed, the newest; only
    those whose other params match the newest's)."""
    baselines, found, pending = experiments(document)
    chosen: dict = {}
    for run in found:
        if run["others"] == found[0]["others"] and run["seed"] not in chosen:
            chosen[run["seed"]] = run
    modes = sorted({mode for run in chosen.values() for mode in run["accuracy"]})
    result = {mode: spread([run["accuracy"][mode] for run in chosen.values() if mode in run["accuracy"]])
              for mode in modes}
    return {"baselines": baselines, "experiments": len(found), "not_finished": pending,
            "left_out": len(found) - len(chosen),
            "seeds": sorted(chosen, key=lambda seed: (str(type(seed)), str(seed).zfill(20))),
            "confidence": CONFIDENCE, "modes": result}


def mode_line(mode: str, row: dict) -> str:
    if row["std"] is None:
        return f"{mode}: 1 seed, accuracy {row['mean']:.4f}; one seed shows no spread"
    return (f"{mode}: {row['seeds']} seeds, mean accuracy {row['mean']:.4f}, std {row['std']:.4f}, "
            f"95% interval of the mean [{row['low']:.4f}, {row['high']:.4f}]")


def seeds_text(summary: dict) -> str:
    """The summary as lines for a terminal; one line when DVC recorded no finished experiment."""
    waiting = f" ({summary['not_finished']} queued, running or failed, not counted)" if summary["not_finished"] else ""
    if not summary["modes"]:
        return f"No finished experiments{waiting}: run `{QUEUE}`, then this again."
    seeds = ", ".join(map(str, summary["seeds"]))
    left = (f"; {plural(summary['left_out'], 'experiment')} with other params or a repeated seed left out"
            if summary["left_out"] else "")
    head = (f"Seeds {seeds}: {plural(summary['experiments'], 'finished experiment')} of "
            f"{', '.join(rev[:7] for rev in summary['baselines'])}{left}{waiting}.")
    return "\n".join([head, *(mode_line(mode, row) for mode, row in summary["modes"].items())])
