"""Stages of the transfer-learning pipeline: one module per DVC stage, plus shared modules."""
