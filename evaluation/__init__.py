"""Execution-based evaluation as a library: problems, sandboxed execution of the programs a model wrote
(`evaluation.sandbox`), the statistics that compare two models on them (`evaluation.stats`) and
contamination checks. No stage lives here: `make eval` calls these, so each piece is tested on its own
and the sandbox, which guards the machine, stays apart from the code that drives models.
"""
