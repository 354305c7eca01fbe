"""Whether text is Python, by one rule for every stage that asks (the comparator's parse rate, the embedded
base's corpus)."""

from __future__ import annotations

import ast
import textwrap
import warnings


def parses(code: str) -> bool:
    """Whether the code is valid Python syntax (`ast.parse`), after removing a common indentation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)  # e.g. invalid escape sequences still parse
        try:
            ast.parse(textwrap.dedent(code))
        except (SyntaxError, ValueError):  # ValueError: null bytes
            return False
    return True
