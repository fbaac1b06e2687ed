"""The split's files that stage `split` writes to data/split, read back: each split's rows (image path
relative to the raw data folder, class index) and the classes."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from transfer.core.errors import UserError
from transfer.core.paths import CLASSES_JSON, SPLIT_DIR, split_csv


@dataclass
class SplitRows:
    paths: list[str]  # relative to the raw data folder
    labels: list[int]


def read_split(name: str, split_dir: Path = SPLIT_DIR) -> SplitRows:
    path = split_dir / split_csv(name).name
    if not path.exists():
        raise UserError(f"{path}: missing; run the split stage first (dvc repro split)")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return SplitRows([r["path"] for r in rows], [int(r["label"]) for r in rows])


def read_classes(split_dir: Path = SPLIT_DIR) -> list[dict]:
    path = split_dir / CLASSES_JSON.name
    if not path.exists():
        raise UserError(f"{path}: missing; run the split stage first (dvc repro split)")
    return json.loads(path.read_text(encoding="utf-8"))["classes"]
