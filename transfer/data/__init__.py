"""Datasets. Entry points: `archives.fetch` / `unpack` (stage download), `splitting.make_split` (stage
split: `layouts`, `decode`, near-duplicate `hashing` and `grouping`), `packing.pack_store` (stage pack,
into the `store`), and for training and evaluation: `split_files` (the split read back), `images` (its images
at the working size) and `transforms`."""
