"""Perceptual hashes of whole pictures and the near-duplicate pairs among them, in time linear in the
images: a 64-bit difference hash (dHash: is each pixel of a 9x8 grayscale thumbnail brighter than its
right neighbour) survives resizing and re-encoding, not crops or flips.

The hash is cut into 4 bands of 16 bits and images sharing a band's value land in one bucket (two
hashes at most 3 bits apart share a band by the pigeonhole principle; a resized, re-encoded copy is
usually 0-2 bits off). Only pairs within a bucket are candidates. A bucket larger than MAX_BUCKET
(flat or very similar thumbnails) is sorted by the full hash and each image paired with the MAX_BUCKET
images after it only, so the candidates are at most 4 x N x MAX_BUCKET whatever the data, and about
4 x N for ordinary photos. Split groups the images it finds this way (transfer.data.grouping); the
audit confirms its candidates with features (transfer.audit.suspects)."""
from __future__ import annotations

import numpy as np
from PIL import Image

BANDS = 4                # bands of 16 bits of the 64-bit hash: an exact match of one makes a candidate pair
MAX_BUCKET = 256         # beyond this many images in one bucket, each is compared with its 256 hash neighbours
DHASH_MARGIN = 2         # levels of 255: a thumbnail pixel only this much brighter than its neighbour is "not brighter"


def thumbnail(image: Image.Image) -> bytes:
    """The 9x8 grayscale thumbnail of a PIL image (72 bytes, rows of 9): area averaging (PIL's box
    filter), luma as ITU-R 601-2."""
    return image.convert("L").resize((9, 8), Image.Resampling.BOX).tobytes()


def dhashes(thumbnails: np.ndarray) -> np.ndarray:
    """[N] uint64 dHashes of [N, 72] uint8 thumbnails: bit i is whether pixel i of the 8x8 left-neighbour
    pairs is brighter than its left neighbour by more than DHASH_MARGIN levels, so that the flat areas
    of a picture (equal neighbours) give the same bits in a re-encoded copy instead of its noise."""
    small = thumbnails.reshape(-1, 8, 9).astype(np.int16)
    bits = (small[:, :, 1:] > small[:, :, :-1] + DHASH_MARGIN).reshape(-1, 64).astype(np.uint64)
    return (bits << np.arange(64, dtype=np.uint64)).sum(1, dtype=np.uint64)


def _bucket_pairs(members: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (a < b) to compare within one bucket: all of them, or in a large bucket each image
    with the MAX_BUCKET after it in the order of the full hashes."""
    if len(members) <= MAX_BUCKET:
        a, b = np.triu_indices(len(members), 1)
        return members[a], members[b]
    ordered = members[np.argsort(hashes[members], kind="stable")]
    firsts = []
    seconds = []
    for offset in range(1, MAX_BUCKET + 1):
        firsts.append(ordered[:-offset])
        seconds.append(ordered[offset:])
    return np.concatenate(firsts), np.concatenate(seconds)


def candidate_pairs(hashes: np.ndarray) -> np.ndarray:
    """[P, 2] distinct index pairs (i < j) whose hashes share a band exactly."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    found = [np.empty((0, 2), dtype=np.int64)]
    for band in range(BANDS):
        keys = (hashes >> np.uint64(16 * band)) & np.uint64(0xFFFF)
        order = np.argsort(keys, kind="stable")
        for members in np.split(order, np.flatnonzero(np.diff(keys[order])) + 1):
            if len(members) > 1:
                a, b = _bucket_pairs(members, hashes)
                found.append(np.stack([np.minimum(a, b), np.maximum(a, b)], 1))
    return np.unique(np.concatenate(found), axis=0)


def close_pairs(hashes: np.ndarray, max_bits: int) -> np.ndarray:
    """[P, 2] candidate pairs (i < j) whose full hashes are at most `max_bits` bits apart."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    pairs = candidate_pairs(hashes)
    return pairs[np.bitwise_count(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]) <= max_bits]
