"""The transfer-learning library: data, models, training and evaluation, used by the DVC stages in stages/."""
