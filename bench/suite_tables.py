"""bench.suite's printed blocks: the runs, each row's mean over the datasets, the leave-one-dataset-out choice
among a mode's variants, each run against the linear probe and against the peer."""
from __future__ import annotations

import statistics

from bench import peer, probe


def table(results: dict) -> str:
    lines = [f"{'dataset':24} {'mode':22} {'on':5} {'seeds':>5} {'mean':>7} {'std':>7} {'min-max':>13} "
             f"{'train s':>8} {'wall s':>8} {'probe':>7} {'vs probe':>9}"]
    for name, found in results.items():
        for mode, row in {**found["modes"], **found.get("peer", {})}.items():
            lines.append(f"{name[:24]:24} {mode[:22]:22} {found['evaluated_on']:5} {len(row['runs']):5d} "
                         f"{row['mean']:7.4f} {row['std']:7.4f} {row['min']:6.4f}-{row['max']:6.4f} "
                         f"{row['train_seconds']:8.1f} {row['wall_seconds']:8.1f} {found['probe']:7.4f} "
                         f"{row['mean'] - found['probe']:+9.4f}")
    lodo = held_out(results)
    return "\n".join([*lines, "", overall(results), *(["", lodo] if lodo else []), *probe.lines(results),
                      *peer.lines(results)])


def overall(results: dict) -> str:
    """Per mode (and variant): the mean over the datasets that ran it, and on how many it beat the probe."""
    rows: dict = {}
    for found in results.values():
        for mode, row in {**found["modes"], **found.get("peer", {})}.items():
            rows.setdefault(mode, []).append((row["mean"], found["probe"], row["train_seconds"]))
    lines = [f"{'over the datasets':24} {'mode':22} {'sets':>5} {'mean':>7} {'probe':>7} {'vs probe':>9} "
             f"{'beats':>6} {'train s':>8}"]
    for mode, found in rows.items():
        means, probes, seconds = zip(*found)
        lines.append(f"{'':24} {mode[:22]:22} {len(found):5d} {statistics.fmean(means):7.4f} "
                     f"{statistics.fmean(probes):7.4f} {statistics.fmean(means) - statistics.fmean(probes):+9.4f} "
                     f"{sum(m > p for m, p, _ in found):3d}/{len(found):<2d} {statistics.fmean(seconds):8.1f}")
    return "\n".join(lines)


def leave_one_out(scores: dict, datasets: list[str]) -> dict[str, object]:
    """For each dataset, the key of `scores` ({key: {dataset: score}}) with the best mean over the other
    datasets (the first such in order when several tie)."""
    def mean_without(key, held_out):
        return statistics.fmean(scores[key][d] for d in datasets if d != held_out)
    return {d: max(scores, key=lambda k: mean_without(k, d)) for d in datasets}


def held_out(results: dict) -> str:
    """Per mode with variants run on every dataset: the leave-one-dataset-out choice among its rows."""
    names = list(results)
    if len(names) < 2:
        return ""
    on_every_dataset = [row for row in results[names[0]]["modes"] if all(row in results[d]["modes"] for d in names)]
    lines = []
    for mode in dict.fromkeys(row.split("+")[0] for row in on_every_dataset):
        rows = {row: {d: results[d]["modes"][row]["mean"] for d in names}
                for row in on_every_dataset if row.split("+")[0] == mode}
        if len(rows) < 2:
            continue
        chosen = leave_one_out(rows, names)
        best = max(rows, key=lambda r: statistics.fmean(rows[r].values()))
        lines.append(f"leave one dataset out, {mode}: the row with the best mean on the other datasets, "
                     "scored on this one")
        lines += [f"{d[:24]:24} {row[:22]:22} {rows[row][d]:7.4f}" for d, row in chosen.items()]
        lines.append(f"{'mean held out':24} {'':22} {statistics.fmean(rows[r][d] for d, r in chosen.items()):7.4f}"
                     f"   (best mean over all: {best} {statistics.fmean(rows[best].values()):.4f})")
    return "\n".join(lines)
