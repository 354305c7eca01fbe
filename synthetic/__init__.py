"""Synthetic data and models for the tests, the benchmarks and make gpu-check, which share them through
here and never import one another: a Kaggle-shaped Stack Overflow dump (stackoverflow.py), random Llama
models shaped like Meta's (llama.py), and a stage run as a user runs it (stages.py). Nothing here is part of
the pipeline itself."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
