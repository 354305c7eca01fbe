"""Benchmarks for `make bench`: each module here with a `run()` measures ours against a baseline, in one run."""
