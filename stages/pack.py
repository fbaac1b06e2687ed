"""Stage `pack`: decode every image of data/split once, resize it to pack.short_side, re-encode it,
and write the whole store to data/store (tar shards + index.json, see transfer/data/store.py).

Training and evaluation then read the store image by image instead of decoding data/raw into memory.
The store is published whole or not at all: a failure or a kill half-way leaves the previous one."""
from __future__ import annotations

import time

from transfer.core import params, publish
from transfer.core.paths import STORE_DIR
from transfer.core.settings import PackSettings, section
from transfer.core.stage import log, run_main
from transfer.data.packing import pack_store

PARAMS = ("pack.short_side", "pack.interpolation", "pack.encoding", "pack.jpeg_quality", "pack.jpeg_draft",
        "pack.shard_mb")


@run_main
def main() -> None:
    settings = section(params.declared(params.load(), PARAMS), "pack", PackSettings)
    started = time.perf_counter()
    with publish.outputs("pack", (STORE_DIR,)) as staged:
        folder = staged(STORE_DIR)
        index = pack_store(settings, folder)
        size = sum(f.stat().st_size for f in folder.iterdir())
    seconds = time.perf_counter() - started
    images = sum(entry["count"] for entry in index["splits"].values())
    shards = sum(len(entry["shards"]) for entry in index["splits"].values())
    counts = ", ".join(f"{entry['count']} {name}" for name, entry in index["splits"].items())
    log(f"packed {images} images ({counts}) into {shards} shards, {size / 1e6:.1f} MB, in {seconds:.1f} s "
        f"({images / max(seconds, 1e-9):.0f} images/s)")


if __name__ == "__main__":
    main()
