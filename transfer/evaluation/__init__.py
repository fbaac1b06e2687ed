"""Scores, verdicts and comparisons of trained models."""
