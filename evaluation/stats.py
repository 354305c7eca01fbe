"""The statistics of an execution-based comparison: how sure a pass rate is, and whether a second model
really differs from the first on the same problems.

With 164 HumanEval problems a pass rate moves by 0.6 points per problem, so a difference of a few
points is often noise. Both models answer the same problems, so the comparison is paired: only the
problems where exactly one of them passes (the discordant pairs) carry evidence, which is what
McNemar's test and Newcombe's interval use. Closed forms throughout, so a report gives the same
numbers on every run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

Z95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a proportion: unlike the normal approximation it stays within
    [0, 1] and does not collapse to a point at 0/n or n/n, which small benchmarks hit.

    With no trials (n = 0) nothing is known, and the interval is the whole of [0, 1].
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # Exact at the ends (0/n starts at 0, n/n ends at 1), where rounding would leave 1e-16 off.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on
    Code"): the chance that at least one of k samples drawn from n, of which c pass, passes, i.e.
    1 - C(n-c, k) / C(n, k), computed as a product so it neither overflows nor loses precision."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1 - k / i
    return 1.0 - product


def mcnemar(b: int, c: int) -> float:
    """The exact two-sided p-value of McNemar's test on the discordant pairs: under "no difference" each
    of the b + c discordant problems is equally likely to go either way, so the smaller count is
    Binomial(b + c, 1/2). Exact because discordant counts on a benchmark are small. No discordant pair
    is no evidence: 1.0."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts cannot be negative, got b={b}, c={c}")
    total = b + c
    if total == 0:
        return 1.0
    tail = Fraction(sum(math.comb(total, i) for i in range(min(b, c) + 1)), 2**total)
    return float(min(Fraction(1), 2 * tail))


def paired_difference(first: Sequence[bool], second: Sequence[bool], z: float = Z95) -> dict[str, Any]:
    """Compare two models' pass/fail results on the same problems, in the same order.

    Returns the two pass rates, `difference` (second minus first), `b` (first passes, second fails),
    `c` (first fails, second passes), McNemar's exact `p_value`, and `interval`: a 95% confidence
    interval for the difference by Newcombe's method 10 (Newcombe 1998, "Improved confidence intervals
    for the difference between binomial proportions based on paired data"; the square-and-add interval
    of Fagerland, Lydersen and Laake): the two Wilson intervals combined with the corrected correlation
    of the pairs. It is closed-form (the same
    numbers on every run, unlike a bootstrap), stays within [-1, 1] and behaves at 0 and 164 of 164.
    """
    if len(first) != len(second):
        raise ValueError(f"paired results need the same problems: {len(first)} and {len(second)} results")
    n = len(first)
    if n == 0:
        raise ValueError("no results to compare")
    both = sum(1 for x, y in zip(first, second, strict=True) if x and y)
    b = sum(1 for x, y in zip(first, second, strict=True) if x and not y)
    c = sum(1 for x, y in zip(first, second, strict=True) if y and not x)
    neither = n - both - b - c
    first_rate, second_rate = (both + b) / n, (both + c) / n
    difference = second_rate - first_rate
    # The correlation of the pairs, with Newcombe's correction: a positive cross-product within n/2 of
    # zero counts as none, since a positive correlation narrows the interval.
    marginals = (both + b) * (c + neither) * (both + c) * (b + neither)
    cross = both * neither - b * c
    corrected = cross - n / 2 if cross > n / 2 else min(cross, 0)
    phi = corrected / math.sqrt(marginals) if marginals else 0.0
    low2, high2 = wilson_interval(both + c, n, z)
    low1, high1 = wilson_interval(both + b, n, z)
    # Newcombe's formula for p2 - p1: the distance down uses p2's lower and p1's upper margins.
    down = math.sqrt(
        (second_rate - low2) ** 2
        - 2 * phi * (second_rate - low2) * (high1 - first_rate)
        + (high1 - first_rate) ** 2
    )
    up = math.sqrt(
        (high2 - second_rate) ** 2
        - 2 * phi * (high2 - second_rate) * (first_rate - low1)
        + (first_rate - low1) ** 2
    )
    return {
        "n": n,
        "first_rate": first_rate,
        "second_rate": second_rate,
        "difference": difference,
        "b": b,
        "c": c,
        "p_value": mcnemar(b, c),
        "interval": (max(-1.0, difference - down), min(1.0, difference + up)),
    }
