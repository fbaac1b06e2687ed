"""The image store that stage `pack` writes: every image of data/split decoded once, resized and
re-encoded, so that training and evaluation read compact files instead of decoding data/raw again.

data/store/
  <split>-00000.tar, <split>-00001.tar, ...  the images of a split in split order, as tar members
                                              <index:08d>.png (or .jpg), each shard <= pack.shard_mb
  index.json                                  what ImageStore needs to read them: see `write_index`

Tar is a standard, long-kept format any tool lists (`tar tvf`), the one WebDataset shards use; a
member's bytes lie contiguous at a known offset, so a reader needs only a file seek, no library.
Members are written deterministically (sorted, mtime 0, owner 0/"", mode 0644, plain ustar headers
without pax timestamps): the same data and params give byte-identical shards, so the same DVC hash.

An image comes back as the uint8 CHW tensor transfer.data.images.decode_all makes at that short side:
with png exactly the same pixels, with jpeg within its quality's loss."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from array import array
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from transfer.core.errors import UserError
from transfer.core.paths import SPLIT_DIR, STORE_DIR, STORE_INDEX

FORMAT = "image-store/1"
SPLITS = ("train", "val", "test")  # test without images (no test set) has no shard
SPLIT_FILES = ("train.csv", "val.csv", "test.csv", "classes.json")  # what the store must agree with
EXTENSIONS = {"png": "png", "jpeg": "jpg"}
REPACK = "re-run dvc repro pack"


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:05d}.tar"


def split_digests(split_dir: Path = SPLIT_DIR) -> dict[str, str]:
    """sha256 of each file of data/split that the store was made from."""
    digests = {}
    for name in SPLIT_FILES:
        path = split_dir / name
        if not path.is_file():
            raise UserError(f"{path}: missing; run the split stage first (dvc repro split)")
        digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def encode(pixels: torch.Tensor, encoding: str, jpeg_quality: int = 90) -> bytes:
    """A uint8 CHW tensor as PNG or JPEG bytes (the same bytes for the same pixels)."""
    image = Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")
    out = io.BytesIO()
    if encoding == "png":
        # Level 1: a third of the default level 6's encoding time for 7% more bytes (hymenoptera at 256 px).
        image.save(out, format="PNG", compress_level=1)
    else:
        image.save(out, format="JPEG", quality=jpeg_quality)
    return out.getvalue()


def decode(data: bytes) -> torch.Tensor:
    """Encoded bytes of a member -> uint8 CHW tensor."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return TF.pil_to_tensor(image if image.mode == "RGB" else image.convert("RGB"))


class ShardWriter:
    """Appends one split's encoded images to tar shards of at most `limit_bytes` each, and records
    where each member's bytes lie: `members` is [shard number, offset of the data, size] per image."""

    def __init__(self, folder: Path, split: str, encoding: str, limit_bytes: int):
        self.folder = folder
        self.split = split
        self.encoding = encoding
        self.limit = limit_bytes
        self.members: list[list[int]] = []
        self.shards: list[dict] = []  # {"name", "bytes"}, filled in as each shard is closed
        self._tar: tarfile.TarFile | None = None
        self._in_shard = 0

    def add(self, data: bytes) -> None:
        if self._tar is None or (self._in_shard and self._closed_size(len(data)) > self.limit):
            self._next_shard()
        info = tarfile.TarInfo(f"{len(self.members):08d}.{EXTENSIONS[self.encoding]}")
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.type = tarfile.REGTYPE
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        header = info.tobuf(tarfile.USTAR_FORMAT, self._tar.encoding, self._tar.errors)
        self.members.append([len(self.shards), self._tar.offset + len(header), len(data)])
        self._tar.addfile(info, io.BytesIO(data))
        self._in_shard += 1

    def _closed_size(self, size: int) -> int:
        """The shard's size on disk if a member of `size` bytes were added and the shard closed:
        its 512-byte header, the data padded to 512, the two end blocks, padding to a whole record."""
        end = self._tar.offset + tarfile.BLOCKSIZE + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        return -(-(end + 2 * tarfile.BLOCKSIZE) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE

    def _next_shard(self) -> None:
        self._close_shard()
        name = shard_name(self.split, len(self.shards))
        self._tar = tarfile.open(self.folder / name, "w", format=tarfile.USTAR_FORMAT)
        self._in_shard = 0

    def _close_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()
            path = Path(self._tar.name)
            self.shards.append({"name": path.name, "bytes": path.stat().st_size})
            self._tar = None

    def close(self) -> list[dict]:
        """Finish the last shard; the list of shards. A split without images has no shard."""
        self._close_shard()
        return self.shards


def write_index(folder: Path, settings: dict, digests: dict[str, str], splits: dict[str, dict]) -> None:
    """index.json: the format, how the images were made (`settings`: short_side, interpolation,
    encoding, jpeg_quality, jpeg_draft), the sha256 of the data/split files they came from, and per
    split its shards ({"name", "bytes"}), `members` ([shard, offset, size] in split order) and the
    `labels` and `paths` of data/split/<split>.csv. One line: an index of a million images is big."""
    index = {"format": FORMAT, **settings, "split_sha256": digests, "splits": splits}
    text = json.dumps(index, separators=(",", ":"), ensure_ascii=False, sort_keys=True) + "\n"
    (folder / STORE_INDEX.name).write_text(text, encoding="utf-8")


def read_index(root: Path = STORE_DIR) -> dict:
    path = root / STORE_INDEX.name
    if not path.is_file():
        raise UserError(f"{path}: missing; run the pack stage first (dvc repro pack)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a valid store index ({err}); {REPACK}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise UserError(f"{path}: not a store index of format {FORMAT}; {REPACK}")
    return index


class ImageStore:
    """Image `i` of a split (train, val or test) of data/store, as a uint8 CHW tensor; `labels` and `paths`
    as in data/split/<split>.csv.

    Holds the index only (about 18 bytes an image, plus its path and label), never pixels. Shard
    files are opened on first read in each process, so an ImageStore pickles into DataLoader worker
    processes; reads use os.pread, safe from threads too. The index is checked against data/split
    and the shards' sizes when the store is made, so a stale or damaged store fails at once, in the
    main process, with one line."""

    def __init__(self, split: str, root: str | os.PathLike = STORE_DIR, split_dir: str | os.PathLike = SPLIT_DIR):
        self.split = split
        self.root = Path(root)
        index = read_index(self.root)
        where = self.root / STORE_INDEX.name
        for name, digest in split_digests(Path(split_dir)).items():
            if index["split_sha256"].get(name) != digest:
                raise UserError(f"{Path(split_dir) / name}: changed since {self.root} was packed; {REPACK}")
        if split not in index["splits"]:
            raise UserError(f"{where}: has no split {split!r} (has: {', '.join(index['splits'])}); {REPACK}")
        entry = index["splits"][split]
        self.short_side = index["short_side"]
        self.interpolation = index["interpolation"]
        self.encoding = index["encoding"]
        self._shards = [self.root / shard["name"] for shard in entry["shards"]]
        for shard, expected in zip(self._shards, (s["bytes"] for s in entry["shards"])):
            if not shard.is_file():
                raise UserError(f"{shard}: missing; {REPACK}")
            if shard.stat().st_size != expected:
                raise UserError(f"{shard}: truncated or changed ({shard.stat().st_size} bytes, "
                                f"{where.name} says {expected}); {REPACK}")
        members = entry["members"]
        labels = entry["labels"]
        if not len(members) == len(labels) == len(entry["paths"]) == entry["count"]:
            raise UserError(f"{where}: {split} lists {entry['count']} images but {len(members)} members, "
                            f"{len(labels)} labels, {len(entry['paths'])} paths; {REPACK}")
        # Flat typed arrays instead of lists of Python ints: ~18 bytes an image instead of ~150.
        self._shard_of = np.array([m[0] for m in members], dtype=np.uint32)
        self._offset = np.array([m[1] for m in members], dtype=np.int64)
        self._size = np.array([m[2] for m in members], dtype=np.int64)
        self._labels = array("q", labels)
        self._paths = "\n".join(entry["paths"])
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def labels(self) -> list[int]:
        return self._labels.tolist()

    @property
    def paths(self) -> list[str]:
        """Paths relative to data/raw, in split order."""
        return self._paths.split("\n") if self._paths else []

    def require(self, short_side: int, interpolation: str) -> None:
        """Fail with one line unless the store was packed at this short side and interpolation."""
        if (self.short_side, self.interpolation) != (short_side, interpolation):
            raise UserError(f"{self.root}: packed at a short side of {self.short_side} px ({self.interpolation}), "
                            f"this needs {short_side} px ({interpolation}); set pack.short_side and "
                            f"pack.interpolation to those and {REPACK}")

    def __getitem__(self, i: int) -> torch.Tensor:
        if not -len(self) <= i < len(self):
            raise IndexError(f"image {i} of a split of {len(self)}")
        i %= len(self)
        shard = int(self._shard_of[i])
        offset = int(self._offset[i])
        size = int(self._size[i])
        data = os.pread(self._fd(shard), size, offset)
        if len(data) != size:
            raise UserError(f"{self._where(i)}: truncated ({len(data)} of {size} bytes); {REPACK}")
        try:
            return decode(data)
        except (OSError, SyntaxError, ValueError) as err:
            raise UserError(f"{self._where(i)}: corrupt ({str(err).splitlines()[0][:120]}); {REPACK}") from None

    def _where(self, i: int) -> str:
        return f"{self._shards[int(self._shard_of[i])]}: image {i} ({self.path(i)})"

    def path(self, i: int) -> str:
        """The path of image `i` alone (scans the joined paths: for messages, not for every read)."""
        start = 0
        for _ in range(i):
            start = self._paths.index("\n", start) + 1
        end = self._paths.find("\n", start)
        return self._paths[start:] if end < 0 else self._paths[start:end]

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked worker: its own descriptors, not the parent's copies
            self._close()
            self._pid = os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            try:
                fd = os.open(self._shards[shard], os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except FileNotFoundError:
                raise UserError(f"{self._shards[shard]}: missing; {REPACK}") from None
            kept = self._fds.setdefault(shard, fd)  # another thread opened it first: keep one
            if kept != fd:
                os.close(fd)
            fd = kept
        return fd

    def _close(self) -> None:
        fds = self._fds
        self._fds = {}
        for fd in fds.values():
            os.close(fd)

    def close(self) -> None:
        if self._pid == os.getpid():
            self._close()
        self._fds = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": {}}  # descriptors do not travel; the copy opens its own

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, AttributeError):  # half-made (a failed __init__) or already closed
            pass


def load_split(split: str, root: str | os.PathLike = STORE_DIR, split_dir: str | os.PathLike = SPLIT_DIR
               ) -> list[torch.Tensor]:
    """Every image of a split as a list of tensors: for small datasets and tests (holds them all)."""
    store = ImageStore(split, root, split_dir)
    try:
        return [store[i] for i in range(len(store))]
    finally:
        store.close()
