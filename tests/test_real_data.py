"""The real ants-and-bees photos in the second layout: class folders with a number prefix, no split."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from tests.conftest import HYMENOPTERA_ZIP, make_project

pytestmark = pytest.mark.skipif(not HYMENOPTERA_ZIP.exists(), reason="needs the shared ants-and-bees archive")


def prefix_layout(target: Path) -> dict[str, int]:
    """000-ants/ and 001-bees/ holding every photo of the archive (a .gif and two files without
    .jpg among them), train and val merged."""
    counts: dict[str, int] = {}
    with zipfile.ZipFile(HYMENOPTERA_ZIP) as archive:
        for name in archive.namelist():
            parts = name.split("/")
            if name.endswith("/") or len(parts) < 3 or parts[-2] not in ("ants", "bees"):
                continue
            folder = {"ants": "000-ants", "bees": "001-bees"}[parts[-2]]
            out = target / folder / f"{parts[-3]}_{parts[-1]}"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(archive.read(name))
            counts[folder] = counts.get(folder, 0) + 1
    return counts


def test_prefix_layout_of_the_real_photos_splits_5_to_1_and_runs_end_to_end(tmp_path):
    """Every 5th photo of each class goes to val, counting from the first (imgs[::5]); the whole
    pipeline then runs on that split."""
    counts = prefix_layout(tmp_path / "photos")
    assert counts == {"000-ants": 194, "001-bees": 204}
    project = make_project(tmp_path / "project", tmp_path / "photos", modes=["frozen"])
    out = project.dvc("repro", "export").stdout  # all but the audit, a leaf
    assert {"download", "split", "train@frozen", "evaluate@frozen", "compare", "export"} <= set(
        project.ran_stages(out))

    data = json.loads((project.path / "metrics/data.json").read_text())
    assert data["layout"] == "prefix"
    assert data["train"]["per_class"] == {"000-ants": 194 - 39, "001-bees": 204 - 41}
    assert data["val"]["per_class"] == {"000-ants": 39, "001-bees": 41}  # -(-n // 5)
    assert data["skipped_count"] == 0
    classes = json.loads((project.path / "data/split/classes.json").read_text())["classes"]
    assert [(c["index"], c["folder"], c["name"]) for c in classes] == [(0, "000-ants", "ants"), (1, "001-bees", "bees")]

    metrics = json.loads((project.path / "metrics/frozen.json").read_text())
    details = json.loads((project.path / "results/details/frozen.json").read_text())
    assert details["val_images"] == 39 + 41
    assert sum(map(sum, details["confusion_matrix"]["matrix"])) == details["val_images"]
    assert metrics["accuracy"] > 0.6  # ImageNet features separate ants from bees even at 32 px
    assert (project.path / "models/model.pt").exists()
