"""Datasets: fetching and unpacking, layouts, decoding, the image store, and the loaders that feed training."""
