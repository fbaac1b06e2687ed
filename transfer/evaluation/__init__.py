"""Scores and verdicts. Entry points: `scores` (stage evaluate: logits, headline numbers), `calibration`
and `unsure` (the temperature and the threshold), `grids` and `activation_maps` (figures), `summary`
(stage compare: the verdict, from `stats`, `choice` and `limits`), `deployment` (export's int8 gate
and the deploy report)."""
