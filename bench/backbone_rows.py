"""The --set arguments of bench.suite that add, for each named row of params.yaml, the same row on
EfficientNet-Lite1 and Lite2 (rows <mode>_lite1, <mode>_lite2), one argument a line, and the pack's
short side that Lite2's 260 px crop needs (every row then reads that one pack):

    mapfile -t ROWS < <(python -m bench.backbone_rows frozen finetune)
    python -m bench.suite DATASET --modes frozen frozen_lite1 frozen_lite2 finetune finetune_lite1 \\
        finetune_lite2 --set "${ROWS[@]}" --work WORK

Then `python -m stages.compare` in the project under WORK gives the paired verdict over the rows."""
from __future__ import annotations

import argparse
import json
import sys

import yaml

from bench import ROOT
from transfer.core.paths import PARAMS_FILE

SHORT_SIDE = 292  # Lite2's 260 px / its crop_pct 0.89 (Lite1: 240 / 0.882 = 272; Lite0: 224 / 0.875 = 256)
SIZES = (1, 2)


def assignments(modes: list[str]) -> list[str]:
    params = yaml.safe_load((ROOT / PARAMS_FILE).read_text(encoding="utf-8"))
    unknown = [mode for mode in modes if mode not in params["modes"]]
    if unknown:
        raise ValueError(f"unknown mode {unknown[0]} (known: {', '.join(params['modes'])})")
    out = [f"pack.short_side={SHORT_SIDE}"]
    for mode in modes:
        for size in SIZES:
            row = {**params["modes"][mode], "arch": f"efficientnet_lite{size}"}
            out.append(f"modes.{mode}_lite{size}={json.dumps(row)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backbone_rows", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modes", nargs="+", help="rows of params.yaml's modes")
    args = parser.parse_args(argv)
    try:
        print("\n".join(assignments(args.modes)))
    except ValueError as err:
        print(f"python -m bench.backbone_rows: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
