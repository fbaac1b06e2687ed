"""Near-duplicates kept on one side of a split: images whose perceptual hashes are close (frames of one
video, slices of one scan, re-encoded copies) form groups through chains of close pairs, and each group
goes wholly to one part. So that each class keeps the counts the stratified split gave it, groups fill
the parts by the room left for their class, and single images (in no group) of a class then move from
parts over their count to parts under it; only a class whose groups are too big for single images to
even out ends up with other counts. Without groups the split is the stratified one, unchanged."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from transfer.data.hashing import close_pairs, dhashes

# A pair is one picture when its thumbnails' dHashes are at most MAX_BITS of 64 bits apart and the
# thumbnails themselves at most MAX_LEVELS apart on average (of 255): the hash alone pairs distinct flat
# pictures whose near-equal neighbouring pixels flip bits. Calibrated on planted re-encodes, resizes and
# crops against distinct pictures of one class (docs/audit.md, python -m bench.duplicates calibrate).
MAX_BITS = 8
MAX_LEVELS = 8.0


@dataclass
class Groups:
    members: list[list[int]]  # indices of the images of each group of two or more, each group sorted
    pairs: np.ndarray         # [P, 2] the near-duplicate pairs found


def close_thumbnails(thumbnails: list[bytes], max_bits: int = MAX_BITS, max_levels: float = MAX_LEVELS) -> np.ndarray:
    """[P, 2] index pairs (i < j) of near-duplicates among the thumbnails (transfer.data.hashing.thumbnail)."""
    if len(thumbnails) < 2:
        return np.empty((0, 2), dtype=np.int64)
    small = np.frombuffer(b"".join(thumbnails), dtype=np.uint8).reshape(len(thumbnails), -1)
    pairs = close_pairs(dhashes(small), max_bits)
    levels = np.abs(small[pairs[:, 0]].astype(np.int16) - small[pairs[:, 1]]).mean(1)
    return pairs[levels <= max_levels]


def near_duplicate_groups(thumbnails: list[bytes]) -> Groups:
    """The groups of two or more images linked by chains of near-duplicate pairs."""
    pairs = close_thumbnails(thumbnails)
    n = len(thumbnails)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component, minlength=1)
    members: dict[int, list[int]] = {}
    for index in np.flatnonzero(sizes[component] > 1):
        members.setdefault(int(component[index]), []).append(int(index))
    return Groups(sorted(members.values()), pairs)


def keep_together(parts: list[str], labels: list[int], groups: list[list[int]], order: tuple[str, ...],
                  seed: str) -> list[str]:
    """Each image's part after placing every group wholly in one part, the counts of each class in each
    part (the stratified split's) kept where single images allow: groups, largest first (ties in a seeded
    order), go to the part with the most room left for their class (ties: where most of the group was,
    then the first of `order`); then single images of a class move from parts over their count to parts
    under it, drawn seeded."""
    parts = list(parts)
    # (label, part): the grouped images the stratified split put there, the room the groups have to fill
    room = Counter((labels[index], parts[index]) for group in groups for index in group)
    rng = random.Random(seed)
    for group in sorted(groups, key=lambda group: (-len(group), rng.random())):
        label = Counter(labels[index] for index in group).most_common(1)[0][0]
        votes = Counter(parts[index] for index in group)
        target = max(order, key=lambda part: (room[label, part], votes[part], -order.index(part)))
        for index in group:
            room[labels[index], target] -= 1
            parts[index] = target
    _pay_back(parts, labels, {index for group in groups for index in group}, room, order, rng)
    return parts


def _pay_back(parts: list[str], labels: list[int], grouped: set[int], room: Counter, order: tuple[str, ...],
              rng: random.Random) -> None:
    """Single images of each class moved from the parts over their count (negative room) to those under."""
    singles: dict[tuple[int, str], list[int]] = {}  # (label, part): images in no group, in a seeded order
    for index, part in enumerate(parts):
        if index not in grouped:
            singles.setdefault((labels[index], part), []).append(index)
    for pool in singles.values():
        rng.shuffle(pool)
    for label in sorted({label for label, _ in room}):
        surplus = [part for part in order for _ in range(max(0, -room[label, part]))]
        deficit = [part for part in order for _ in range(max(0, room[label, part]))]
        for source, target in zip(surplus, deficit, strict=False):
            pool = singles.get((label, source))
            if pool:
                parts[pool.pop()] = target
