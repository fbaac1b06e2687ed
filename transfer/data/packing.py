"""Packing the split into the image store: every image decoded once, resized to pack.short_side and
re-encoded, in parallel, and written in tar shards with their index (transfer.data.store)."""
from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from transfer.core.errors import UserError
from transfer.core.paths import RAW_DIR, SPLIT_DIR
from transfer.core.settings import PackSettings
from transfer.data import store
from transfer.data.decode import UnreadableImage, open_rgb
from transfer.data.images import resize_short_side
from transfer.data.split_files import read_classes, read_split

IN_FLIGHT_PER_WORKER = 4  # images decoded ahead of the writer: enough to keep every core busy


def encoded_image(path: Path, settings: PackSettings) -> bytes:
    """The source image at `path` as the store holds it: upright RGB, short side resized, encoded."""
    try:
        image = open_rgb(path, settings.short_side if settings.jpeg_draft else None)
    except UnreadableImage as err:
        if not path.exists():
            raise UserError(f"{path}: missing (data/raw and data/split disagree); re-run dvc repro split") from None
        raise UserError(f"{path}: unreadable image ({err}); re-run dvc repro split") from None
    try:
        pixels = resize_short_side(image, settings.short_side, settings.interpolation)
    except UnreadableImage as err:
        raise UserError(f"{path}: {err}; leave it out with data.exclude") from None
    return store.encode(pixels, settings.encoding, settings.jpeg_quality)


def ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """fn(item) for each item on a thread pool (PIL releases the GIL while decoding), in order, with a
    bounded number in flight, so memory stays flat however many images there are."""
    pool = ThreadPoolExecutor(max_workers=workers)
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def pack_split(name: str, settings: PackSettings, folder: Path, raw: Path, split_dir: Path) -> dict:
    """Write one split's shards into `folder`; its entry of index.json."""
    split = read_split(name, split_dir)
    writer = store.ShardWriter(folder, name, settings.encoding, int(settings.shard_mb * 1024 * 1024))
    images = ordered_map(lambda rel: encoded_image(raw / rel, settings), split.paths, os.cpu_count() or 1)
    for data in tqdm(images, total=len(split.paths), desc=f"packing {name}", unit="img", file=sys.stderr,
                     mininterval=1):
        writer.add(data)
    shards = writer.close()
    return {"count": len(split.paths), "shards": shards, "members": writer.members, "labels": split.labels,
            "paths": split.paths}


def pack_store(settings: PackSettings, folder: Path, raw: Path = RAW_DIR, split_dir: Path = SPLIT_DIR) -> dict:
    """Write the whole store into the new folder `folder`; the index it wrote."""
    digests = store.split_digests(split_dir)
    read_classes(split_dir)
    folder.mkdir(parents=True)
    made = {key: getattr(settings, key) for key in ("short_side", "interpolation", "encoding", "jpeg_draft")}
    if settings.encoding == "jpeg":  # recorded only where it shapes the bytes
        made["jpeg_quality"] = settings.jpeg_quality
    splits = {name: pack_split(name, settings, folder, raw, split_dir) for name in store.SPLITS}
    if store.split_digests(split_dir) != digests:
        raise UserError(f"{split_dir}: changed while packing; re-run dvc repro pack")
    store.write_index(folder, made, digests, splits)
    return {**made, "splits": splits}
