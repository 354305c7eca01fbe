"""`make bench [BENCH=name]`: run every benchmark (or the named ones) into runs/bench/results.json."""

from __future__ import annotations

import argparse
import importlib
import pkgutil

import benchmarks

NOT_BENCHMARKS = {"results", "docs"}  # docs is make bench-docs


def main() -> None:
    available = sorted(
        module.name for module in pkgutil.iter_modules(benchmarks.__path__)
        if not module.name.startswith("_") and module.name not in NOT_BENCHMARKS
    )  # fmt: skip
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help=f"default: all of {available}")
    names = parser.parse_args().names or available
    unknown = sorted(set(names) - set(available))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(available)}")
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        if hasattr(module, "run"):
            print(f"== {name}")
            module.run()


if __name__ == "__main__":
    main()
