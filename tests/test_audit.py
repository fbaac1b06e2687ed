"""Stage audit: it finds images filed under the wrong class, near-copies across the splits and outliers,
and changes nothing; data.exclude then leaves the reviewed paths out of the split.

The end-to-end test runs `dvc repro audit` on the real ants and bees with 10 photos moved to the
other class's folder and two resized, re-encoded copies put into val; the unit tests run the
finders on small synthetic features, the bad inputs included."""
from __future__ import annotations

import csv
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import HYMENOPTERA_ZIP, make_project
from transfer.audit.suspects import (
    dhash,
    flagged_outliers,
    label_issues,
    near_duplicates,
    outlier_scores,
)
from transfer.data.hashing import MAX_BUCKET, candidate_pairs

MOVED_PER_CLASS = 5


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def near_copy(source: Path, target: Path) -> None:
    """The same photo resized to 70% and saved as a JPEG of quality 60."""
    image = Image.open(source).convert("RGB")
    image.resize((int(image.width * 0.7), int(image.height * 0.7)), Image.BICUBIC).save(target, quality=60)


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    if not HYMENOPTERA_ZIP.exists():
        pytest.skip("needs the shared ants-and-bees archive")
    base = tmp_path_factory.mktemp("audit")
    with zipfile.ZipFile(HYMENOPTERA_ZIP) as archive:
        archive.extractall(base / "data")
    train = base / "data" / "hymenoptera_data" / "train"
    moved = []
    chosen = {name: sorted((train / name).glob("*.jpg"))[:MOVED_PER_CLASS] for name in ("ants", "bees")}
    for source, target in (("ants", "bees"), ("bees", "ants")):
        for photo in chosen[source]:
            shutil.move(photo, train / target / photo.name)
            moved.append(f"hymenoptera_data/train/{target}/{photo.name}")
    copies = {}
    for name in ("ants", "bees"):
        original = sorted((train / name).glob("*.jpg"))[-1]
        near_copy(original, base / "data" / "hymenoptera_data" / "val" / name / f"copy_{original.name}")
        copies[f"hymenoptera_data/train/{name}/{original.name}"] = f"hymenoptera_data/val/{name}/copy_{original.name}"
    project = make_project(base / "project", base / "data", modes=["frozen"])
    project.set_params(audit={"device": "cpu", "image_size": None})  # the backbone's eval size: 224 px crops
    project.dvc("repro", "audit")
    return project, moved, copies


def test_the_moved_photos_lead_the_suspects(audited):
    project, moved, _ = audited
    table = rows(project.path / "results/label_issues.csv")
    top = [row["path"] for row in table[:20]]
    assert sum(path in top for path in moved) >= 7, top
    for row in table:
        if row["path"] in moved:
            assert row["given"] != row["suggested"]
    scores = [float(row["score"]) for row in table]
    flagged = [row for row in table if row["confident"] == "1"]
    assert scores[:len(flagged)] == sorted(scores[:len(flagged)])  # most suspect (least self-confident) first
    metrics = json.loads((project.path / "results/audit.json").read_text())
    assert metrics["label_issues"] == len(flagged) and metrics["label_disagreements"] == len(table)
    assert (project.path / "plots/audit/suspects.png").stat().st_size > 10_000


def test_resized_reencoded_copies_are_paired_across_splits(audited):
    project, _, copies = audited
    table = rows(project.path / "results/near_duplicates.csv")
    pairs = {frozenset((row["path_a"], row["path_b"])): row for row in table}
    for original, copy in copies.items():
        row = pairs[frozenset((original, copy))]
        assert {row["split_a"], row["split_b"]} == {"train", "val"}
        assert float(row["similarity"]) > 0.9
    metrics = json.loads((project.path / "results/audit.json").read_text())
    assert metrics["near_duplicates"] == len(pairs) and metrics["near_duplicates_across_splits"] >= len(copies)
    outliers = [row["path"] for row in rows(project.path / "results/outliers.csv")]
    assert "hymenoptera_data/train/ants/imageNotFound.gif" in outliers  # the archive's placeholder image


def test_the_audit_changes_nothing_and_exclude_leaves_paths_out(audited):
    project, moved, _ = audited
    train = {row["path"] for row in rows(project.path / "data/split/train.csv")}
    assert set(moved) <= train  # reported, not removed
    params = project.params
    params["data"]["exclude"] = moved
    (project.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    project.dvc("repro", "split")
    assert not set(moved) & {row["path"] for row in rows(project.path / "data/split/train.csv")}
    assert json.loads((project.path / "metrics/data.json").read_text())["excluded_count"] == len(moved)


# Unit tests: the finders on synthetic features, in milliseconds.

def clusters(n_per_class: int, classes: int, width: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, width)) * 3
    labels = np.repeat(np.arange(classes), n_per_class)
    return centres[labels] + rng.normal(size=(len(labels), width)), labels


def test_flipped_labels_rank_first():
    features, labels = clusters(60, 2)
    features[[20, 90]] = features[[20, 90]] * 0.45 + features[[90, 20]] * 0.55  # borderline: ranked after
    flipped = [3, 17, 70, 101]
    labels[flipped] = 1 - labels[flipped]
    found = label_issues(features, labels, folds=5, seed=0)
    assert set(found.ranked[:len(flipped)]) == set(flipped)
    sure = sum(found.confident)
    assert found.scores[:sure] == sorted(found.scores[:sure]) and found.scores[sure:] == sorted(found.scores[sure:])
    assert all(found.confident[:len(flipped)]) and found.suggested[:len(flipped)] == [1 - labels[i] for i in
                                                                                      found.ranked[:len(flipped)]]


def test_one_class_is_a_skip_not_a_traceback():
    features, _ = clusters(10, 1)
    found = label_issues(features, np.zeros(10, dtype=int), folds=5, seed=0)
    assert found.ranked == [] and "one class only" in found.skipped


def test_a_class_of_one_image_is_left_out_and_the_folds_shrink():
    features, labels = clusters(3, 3)
    features, labels = features[:7], labels[:7]  # class 2 has one image
    found = label_issues(features, labels, folds=5, seed=0)
    assert found.skipped is None and found.left_out == [2] and found.folds == 3
    assert 6 not in found.ranked
    lone = label_issues(features[[0, 3]], np.array([0, 1]), folds=5, seed=0)  # two classes of one image each
    assert lone.ranked == [] and lone.skipped and lone.left_out == [0, 1]


def flip_bits(value: int, bits: list[int]) -> int:
    for bit in bits:
        value ^= 1 << bit
    return value


def test_near_duplicates_are_the_planted_pairs_only():
    rng = np.random.default_rng(1)
    n = 3000
    hashes = rng.integers(0, 2**63, size=n, dtype=np.uint64)
    features = rng.normal(size=(n, 64)).astype(np.float32)
    planted = {(5, 2000): [0, 17, 40], (10, 11): [], (400, 2999): [63]}
    for (a, b), bits in planted.items():
        hashes[b] = flip_bits(int(hashes[a]), bits)
        features[b] = features[a] + rng.normal(size=64) * 0.05
    hashes[7] = hashes[8]  # the same thumbnail, other features: not a pair
    found = near_duplicates(hashes, features, min_similarity=0.9)
    assert {(a, b) for a, b, _ in found} == set(planted)
    assert all(sim > 0.9 for _, _, sim in found)


def test_a_huge_bucket_costs_a_bounded_number_of_comparisons():
    n = 8 * MAX_BUCKET
    hashes = np.full(n, 0x1234_5678_9ABC_DEF0, dtype=np.uint64)  # flat thumbnails: one bucket in every band
    hashes[::2] ^= np.uint64(1) << np.uint64(63)
    pairs = candidate_pairs(hashes)
    assert len(pairs) <= n * MAX_BUCKET < n * (n - 1) // 2  # each image against its MAX_BUCKET hash neighbours
    features = np.random.default_rng(2).normal(size=(n, 16)).astype(np.float32)
    features[3] = features[1]  # hash neighbours in the sorted bucket
    assert (1, 3, pytest.approx(1.0, abs=1e-5)) in near_duplicates(hashes, features, 0.9)


def test_dhash_survives_resizing_and_reencoding():
    rng = np.random.default_rng(3)
    base = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((320, 240), Image.BICUBIC)
    buffer = io.BytesIO()
    base.resize((224, 168), Image.BICUBIC).save(buffer, format="JPEG", quality=60)
    copy = Image.open(buffer).convert("RGB").resize((320, 240), Image.BICUBIC)

    def as_tensor(image):
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)

    assert bin(dhash(as_tensor(base)) ^ dhash(as_tensor(copy))).count("1") <= 3
    other = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((320, 240), Image.BICUBIC)
    assert bin(dhash(as_tensor(base)) ^ dhash(as_tensor(other))).count("1") > 12


def test_the_far_image_is_the_first_outlier():
    features, _ = clusters(50, 2)
    features[13] = np.random.default_rng(4).normal(size=features.shape[1]) * 50
    scores = outlier_scores(features, neighbors=5)
    assert flagged_outliers(scores, mads=4)[0] == 13
    assert flagged_outliers(outlier_scores(features[:1], 5), 4) == []  # a single image: nothing to compare
