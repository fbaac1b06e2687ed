"""Training. Entry point: `run.run_training` (one run of a mode), which runs `loop.fit`: each phase
sets what trains (`trainable`), gets its batches from a source (`sources.make_source`: `feature_cache`
or `image_batches`, `sharding` across processes, `distributed`), its optimiser (`optim`), loss
(`losses`) and early stopping (`stopping`); `live_log` shows it as it runs."""
