"""Stage `pack` and transfer/data/store.py: the decode-once image store, read back image by image.

Most tests run the stage's main in a folder holding params.yaml, data/raw and data/split (made by the
split stage's own code); the last one drives `dvc repro pack` in real DVC projects."""
from __future__ import annotations

import csv
import gc
import json
import pickle
import shutil
import tarfile
import tracemalloc
from pathlib import Path

import pytest
import torch
import yaml

from stages import pack
from tests.conftest import ROOT, make_project, run_in_process, split_settings
from tests.imagegen import make_image, tree_bytes, write_class_folders
from transfer.core import params as params_module
from transfer.core.errors import UserError
from transfer.core.paths import RAW_DIR, SPLIT_DIR, STORE_DIR, STORE_INDEX
from transfer.core.settings import mode_settings
from transfer.data import splitting
from transfer.data.decode import open_rgb
from transfer.data.images import resize_short_side
from transfer.data.split_files import read_split
from transfer.data.store import ImageStore, ShardWriter, encode, load_split, split_digests, write_index

SHORT_SIDE = 36  # the tiny images are 48x40: every one is resized
PACK = {"short_side": SHORT_SIDE, "interpolation": "bicubic", "encoding": "png", "jpeg_quality": 90,
        "jpeg_draft": True, "shard_mb": 256}
# JPEG at quality 90 of these tiny synthetic images (hard-edged rectangles, 36 px): mean 3.6 of 255
# (0.5 at 256 px); at 256 px the store is 5x smaller than png, at 36 px 2x.
JPEG_MEAN_TOLERANCE = 5.0


@pytest.fixture
def workdir(tmp_path: Path, tiny_dataset: Path, monkeypatch) -> Path:
    """The current folder: params.yaml (pack as PACK), data/raw (the tiny dataset), data/split."""
    root = tmp_path / "work"
    shutil.copytree(tiny_dataset, root / RAW_DIR)
    monkeypatch.chdir(root)
    set_pack()
    splitting.write_split(splitting.make_split(RAW_DIR, split_settings()), SPLIT_DIR)
    return root


def set_pack(**changes) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["pack"] = {**PACK, **changes}
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_pack(**changes) -> int:
    set_pack(**changes)
    return run_in_process(pack.main)


def expected(rel: str, short_side: int = SHORT_SIDE) -> torch.Tensor:
    """What training decodes in memory today (transfer.data.images.decode_all)."""
    return resize_short_side(open_rgb(RAW_DIR / rel), short_side, "bicubic")


def one_error_line(err: pytest.ExceptionInfo, *words: str) -> str:
    message = str(err.value)
    assert "\n" not in message and all(word in message for word in words), message
    return message


# --- what the store holds -----------------------------------------------------------------------------

@pytest.mark.parametrize("shard_mb", [256, 0.01])
def test_png_store_gives_exactly_the_in_memory_decode(workdir, shard_mb):
    """With png every image comes back as the very tensor decode_all makes, labels and paths as in
    data/split, however many shards it spans (0.01 MB: two or three images a shard, none larger)."""
    assert run_pack(shard_mb=shard_mb) == 0
    for name in ("train", "val"):
        store, rows = ImageStore(name), read_split(name)
        assert len(store) == len(rows.paths) and store.labels == rows.labels and store.paths == rows.paths
        assert store.short_side == SHORT_SIDE and store.path(len(store) - 1) == rows.paths[-1]
        for i, rel in enumerate(rows.paths):
            assert torch.equal(store[i], expected(rel)), rel
        assert torch.equal(store[-1], expected(rows.paths[-1]))
        assert all(torch.equal(a, b) for a, b in zip(load_split(name), map(expected, rows.paths)))
        with pytest.raises(IndexError):
            store[len(store)]
    store.require(SHORT_SIDE, "bicubic")
    with pytest.raises(UserError) as err:  # what training asks of the store
        store.require(SHORT_SIDE + 1, "bicubic")
    one_error_line(err, f"packed at a short side of {SHORT_SIDE} px", "set pack.short_side", "dvc repro pack")
    shards = sorted(STORE_DIR.glob("*.tar"))
    if shard_mb < 1:
        assert len(shards) > 4 and all(path.stat().st_size <= shard_mb * 2**20 for path in shards)
    else:
        assert [path.name for path in shards] == ["train-00000.tar", "val-00000.tar"]


def test_a_test_set_is_packed_too_and_deterministically(workdir):
    """A test/ folder beside val/: its images are stored like the others', and packing twice writes the
    same bytes; without one, the test split is empty and has no shard (above)."""
    write_class_folders(RAW_DIR / "test", {"ants": 2, "bees": 3}, seed=2)
    shutil.rmtree(SPLIT_DIR)
    splitting.write_split(splitting.make_split(RAW_DIR, split_settings()), SPLIT_DIR)
    assert run_pack(shard_mb=0.01) == 0
    store, rows = ImageStore("test"), read_split("test")
    assert len(rows.paths) == 5 and store.paths == rows.paths and store.labels == rows.labels == [0, 0, 1, 1, 1]
    assert all(torch.equal(store[i], expected(rel)) for i, rel in enumerate(rows.paths))
    first = tree_bytes(STORE_DIR)
    assert run_pack(shard_mb=0.01) == 0
    assert tree_bytes(STORE_DIR) == first and any(name.startswith("test-") for name in first)


def test_jpeg_store_is_close_and_smaller(workdir):
    assert run_pack() == 0
    png_bytes = sum(path.stat().st_size for path in STORE_DIR.glob("*.tar"))
    errors = {}
    for quality in (50, 90):
        assert run_pack(encoding="jpeg", jpeg_quality=quality) == 0
        store, rows = ImageStore("train"), read_split("train")
        diffs = [(store[i].int() - expected(rel).int()).abs().float().mean() for i, rel in enumerate(rows.paths)]
        errors[quality] = float(torch.stack(diffs).mean())
    assert errors[90] < JPEG_MEAN_TOLERANCE and errors[90] < errors[50], errors
    assert sum(path.stat().st_size for path in STORE_DIR.glob("*.tar")) < png_bytes
    assert json.loads(STORE_INDEX.read_text())["jpeg_quality"] == 90


def test_pack_is_deterministic(workdir):
    """Packing again from the same data and params writes byte-identical files; the tar members are
    plain: no timestamps, owners or pax headers."""
    assert run_pack(shard_mb=0.01) == 0
    first = tree_bytes(STORE_DIR)
    assert run_pack(shard_mb=0.01) == 0
    assert tree_bytes(STORE_DIR) == first
    with tarfile.open(STORE_DIR / "train-00000.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == sorted(m.name for m in members) and members[0].name == "00000000.png"
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode, m.pax_headers == {}) for m in members} == \
            {(0, 0, 0, "", "", 0o644, True)}


# --- stale, damaged or bad input: one line ------------------------------------------------------------

def test_bad_pack_params_are_one_line_each():
    bad = {"short_side": 8, "interpolation": "cubic", "encoding": "webp", "jpeg_quality": 0, "jpeg_draft": "yes",
           "shard_mb": 0, "shards": 3}
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["pack"] = bad
    with pytest.raises(UserError) as err:
        params_module.check(params)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{len(bad)} problems in params.yaml:"
    assert sorted(line.split(": ")[1] for line in lines[1:]) == sorted(f"pack.{key}" for key in bad), lines
    del params["pack"]
    with pytest.raises(UserError, match="params.yaml: pack: must be a mapping"):
        params_module.check(params)


def test_truncated_or_missing_shard_fails_in_one_line(workdir):
    assert run_pack() == 0
    shard = STORE_DIR / "val-00000.tar"
    opened = ImageStore("val")
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 20_000)
    with pytest.raises(UserError) as err:
        ImageStore("val")
    one_error_line(err, str(shard), "truncated", "re-run dvc repro pack")
    with pytest.raises(UserError) as err:  # cut under a store already open: its reads find out
        opened[len(opened) - 1]
    one_error_line(err, str(shard), "re-run dvc repro pack")
    shard.unlink()
    with pytest.raises(UserError) as err:
        ImageStore("val")
    one_error_line(err, str(shard), "missing", "re-run dvc repro pack")


def test_store_that_disagrees_with_the_split_fails_in_one_line(workdir):
    """data/split/val.csv edited after pack (one image fewer): the store is stale for every split."""
    assert run_pack() == 0
    val = SPLIT_DIR / "val.csv"
    val.write_text("".join(val.read_text().splitlines(keepends=True)[:-1]))
    for name in ("val", "train"):
        with pytest.raises(UserError) as err:
            ImageStore(name)
        one_error_line(err, str(val), "changed", "re-run dvc repro pack")
    shutil.rmtree(STORE_DIR)
    with pytest.raises(UserError) as err:
        ImageStore("train")
    one_error_line(err, str(STORE_INDEX), "missing", "dvc repro pack")


@pytest.mark.parametrize("damage", ["truncated", "vanished"])
def test_unreadable_source_is_one_line_and_keeps_the_old_store(workdir, capsys, damage):
    assert run_pack() == 0
    before = tree_bytes(STORE_DIR)
    rel = read_split("val").paths[3]
    source = RAW_DIR / rel
    if damage == "truncated":
        source.write_bytes(source.read_bytes()[:300])
    else:
        source.unlink()
    capsys.readouterr()
    assert run_pack(encoding="jpeg") == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pack:")]
    words = "unreadable image (truncated image)" if damage == "truncated" else "missing"
    assert line.startswith(f"pack: error: {source}: {words}") and line.endswith("dvc repro split"), line
    assert tree_bytes(STORE_DIR) == before
    assert sorted(path.name for path in STORE_DIR.parent.iterdir()) == ["raw", "split", "store"]


# --- reading: worker processes, memory ----------------------------------------------------------------

@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_reader_works_in_dataloader_workers(workdir, context):
    """Two worker processes, each with its own descriptors: forked after the parent read (descriptors
    open), or spawned (the store pickled); a pickled copy still reads after the original closed."""
    assert run_pack(shard_mb=0.01) == 0
    store = ImageStore("train")
    reference = [store[i] for i in range(len(store))]
    loader = torch.utils.data.DataLoader(store, batch_size=None, num_workers=2, multiprocessing_context=context)
    assert all(torch.equal(a, b) for a, b in zip(loader, reference, strict=True))
    copy = pickle.loads(pickle.dumps(store))
    store.close()
    assert all(torch.equal(copy[i], reference[i]) for i in range(len(copy)))


def make_big_index(root: Path, count: int) -> Path:
    """A store of `count` 1x1 images (with matching split files) written by the store's own writer."""
    split_dir = root / "split"
    split_dir.mkdir(parents=True)
    paths = [f"train/c/img_{i:06d}.png" for i in range(count)]
    with open(split_dir / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "class"], *[[p, 0, "c"] for p in paths]])
    (split_dir / "val.csv").write_text("path,label,class\n")
    (split_dir / "test.csv").write_text("path,label,class\n")
    (split_dir / "classes.json").write_text('{"classes": [{"index": 0, "folder": "c", "name": "c"}]}')
    store_dir = root / "store"
    store_dir.mkdir()
    writer = ShardWriter(store_dir, "train", "png", 2**20)
    data = encode(torch.full((3, 1, 1), 7, dtype=torch.uint8), "png")
    for _ in paths:
        writer.add(data)
    entry = {"count": count, "shards": writer.close(), "members": writer.members, "labels": [0] * count,
             "paths": paths}
    empty = {"count": 0, "shards": [], "members": [], "labels": [], "paths": []}
    settings = {"short_side": 1, "interpolation": "bicubic", "encoding": "png", "jpeg_draft": True}
    write_index(store_dir, settings, split_digests(split_dir), {"train": entry, "val": empty})
    return split_dir


def test_reader_holds_the_index_only(tmp_path):
    """The reader keeps ~50 bytes an image (its path, label and location), and reading every image
    once keeps none of them."""
    count = 4000
    split_dir = make_big_index(tmp_path, count)
    gc.collect()
    tracemalloc.start()
    try:
        store = ImageStore("train", tmp_path / "store", split_dir)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
        tensors = live_tensors()
        for i in range(len(store)):
            assert store[i].shape == (3, 1, 1)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - held
    finally:
        tracemalloc.stop()
    assert held / count < 80, f"{held / count:.0f} bytes an image"
    # A kept tensor costs ~100 traced bytes (its storage, untraced, 200 kB at 256 px); the rest is
    # PIL's and the interpreter's caches filling up.
    assert grown < 64_000, f"{grown} bytes kept after reading {count} images"
    assert live_tensors() == tensors


def live_tensors() -> int:
    return sum(type(obj) is torch.Tensor for obj in gc.get_objects())


# --- the stage in DVC ---------------------------------------------------------------------------------

def store_md5(project) -> str:
    lock = yaml.safe_load((project.path / "dvc.lock").read_text())
    (out,) = lock["stages"]["pack"]["outs"]
    assert out["path"] == "data/store"
    return out["md5"]


def test_dvc_repro_pack_is_deterministic_and_follows_the_dataset(tmp_path, tiny_dataset):
    """Two projects packing the same data from scratch record the same hash of data/store; a dataset
    with one more image (a new data.url) re-runs download, split and pack, and then nothing."""
    projects = [make_project(tmp_path / name, tiny_dataset, modes=["frozen"]) for name in ("a", "b")]
    for project in projects:
        repro = project.dvc("repro", "pack")
        assert project.ran_stages(repro.stdout) == ["download", "split", "pack"], repro.stdout
    assert store_md5(projects[0]) == store_md5(projects[1])
    project = projects[0]
    grown = tmp_path / "grown_data"
    shutil.copytree(tiny_dataset, grown)
    make_image(0, 4242).save(grown / "train" / "ants" / "ants_new.jpg")
    project.set_params(data={"url": str(grown)})
    repro = project.dvc("repro", "pack")
    assert project.ran_stages(repro.stdout) == ["download", "split", "pack"], repro.stdout
    assert store_md5(project) != store_md5(projects[1])
    index = json.loads((project.path / STORE_INDEX).read_text())
    assert "train/ants/ants_new.jpg" in index["splits"]["train"]["paths"]
    assert project.ran_stages(project.dvc("repro", "pack").stdout) == []


def tiny_settings(mode: str, budget_mb: float) -> dict:
    """The mode of the real params.yaml at 32 px (working short side 37), 1 epoch, float32 throughout."""
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["train"].update(epochs=1, batch_size=8, image_size=32, cached_views=2, workers=0, inference_dtype="float32",
                           memory_budget_mb=budget_mb)
    row = params["modes"][mode]
    for key in ("epochs", "batch_size", "image_size", "cached_views"):
        row.pop(key, None)
    row.get("augment", {}).pop("crop_size", None)
    return mode_settings(params_module.check(params), mode)


@pytest.mark.parametrize("mode", ["frozen", "finetune"])  # cached features; augmented image batches
@pytest.mark.parametrize("budget_mb", [512, 1e-6])  # images held in memory; read from the store on access
def test_training_from_the_store_equals_training_from_memory(workdir, tmp_path, mode, budget_mb):
    """Lossless store at the working size: the same weights and history, to the bit, as from images
    decoded into memory from data/raw, whether the store's images are held in memory or streamed."""
    from transfer.data.images import TrainData, decode_all
    from transfer.training.loop import ResumeState
    from transfer.training.run import run_training

    assert run_pack(short_side=37, jpeg_draft=False) == 0
    settings = tiny_settings(mode, budget_mb)

    def in_memory(pre):
        train, val = read_split("train"), read_split("val")
        return TrainData(decode_all(train.paths, pre), train.labels, decode_all(val.paths, pre), val.labels, pre)

    _, from_store, a = run_training(settings, 2, ResumeState(tmp_path / "store" / "state.pt", "t"))
    _, _, b = run_training(settings, 2, ResumeState(tmp_path / "memory" / "state.pt", "t"), in_memory)
    assert isinstance(from_store.train_images, list) == (budget_mb == 512)
    assert [dict(h, seconds=0) for h in a.history] == [dict(h, seconds=0) for h in b.history]
    assert a.best_state.keys() == b.best_state.keys()
    assert all(torch.equal(a.best_state[k], b.best_state[k]) for k in a.best_state)
