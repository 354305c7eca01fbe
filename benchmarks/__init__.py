"""Benchmarks for `make bench`: each module with a `run()` measures ours against a baseline in one run."""
