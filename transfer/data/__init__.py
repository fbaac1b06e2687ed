"""Datasets. Entry points: `archives.fetch` / `unpack` (stage download), `splitting.make_split` (stage
split: `layouts`, `decode`, near-duplicate `hashing` and `grouping`), `packing.pack_store` (stage pack,
into the `store`), and `loaders` (the split's images and their transforms, for training and evaluation)."""
