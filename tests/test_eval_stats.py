"""The evaluation's statistics against values worked out by hand (the arithmetic is in the comments;
z = 1.959964, z² = 3.841459)."""

from __future__ import annotations

import math

import pytest

from evaluation.stats import mcnemar, paired_difference, pass_at_k, wilson_interval


def test_wilson_interval_at_zero_some_and_all() -> None:
    # 0/164: the lower end is 0 and the upper z²/(n + z²) = 3.841459 / 167.841459 = 0.0228874.
    assert wilson_interval(0, 164) == (0.0, pytest.approx(0.0228874, abs=1e-7))
    # 21/164: p = 0.1280488, denominator 1 + z²/n = 1.0234235,
    # centre (p + z²/2n) / 1.0234235 = (0.1280488 + 0.0117117) / 1.0234235 = 0.1365618,
    # half z·sqrt(p(1-p)/n + z²/4n²) / 1.0234235 = 1.959964 · sqrt(0.00068081 + 0.00003571) / 1.0234235
    #   = 0.0512631, so (0.0852987, 0.1878249).
    low, high = wilson_interval(21, 164)
    assert low == pytest.approx(0.0852987, abs=1e-7) and high == pytest.approx(0.1878249, abs=1e-7)
    # 164/164 mirrors 0/164: (1 - 0.0228874, 1) = (0.9771126, 1), the 1 exact.
    assert wilson_interval(164, 164) == (pytest.approx(0.9771126, abs=1e-7), 1.0)


def test_wilson_interval_without_trials_is_everything_and_bad_counts_are_refused() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for successes, n in ((5, 4), (-1, 4), (0, -1)):
        with pytest.raises(ValueError):
            wilson_interval(successes, n)


def test_pass_at_k_matches_the_binomial_formula() -> None:
    # k = 1 is the plain pass rate: 3/10.
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # 1 - C(7,5)/C(10,5) = 1 - 21/252 = 11/12.
    assert pass_at_k(10, 3, 5) == pytest.approx(11 / 12)
    # Only 7 failing samples: any 8 include a passing one.
    assert pass_at_k(10, 3, 8) == 1.0
    assert pass_at_k(10, 0, 3) == 0.0
    # Large n, where the binomials themselves would be huge: the product form agrees with exact integers.
    assert pass_at_k(200, 13, 10) == pytest.approx(1 - math.comb(187, 10) / math.comb(200, 10), rel=1e-12)
    for n, c, k in ((10, 11, 1), (10, 3, 0), (10, 3, 11)):
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_mcnemar_exact_p_values() -> None:
    # No discordant pair: no evidence either way.
    assert mcnemar(0, 0) == 1.0
    # (5, 0): 2 · C(5,0) / 2⁵ = 2/32.
    assert mcnemar(5, 0) == pytest.approx(0.0625)
    # (3, 7): 2 · (C(10,0) + C(10,1) + C(10,2) + C(10,3)) / 2¹⁰ = 2 · (1 + 10 + 45 + 120) / 1024 = 0.34375,
    # the same either way round.
    assert mcnemar(3, 7) == pytest.approx(0.34375) and mcnemar(7, 3) == mcnemar(3, 7)
    # (5, 5): twice the tail passes 1, and a p-value does not.
    assert mcnemar(5, 5) == 1.0
    with pytest.raises(ValueError):
        mcnemar(-1, 2)


def test_paired_difference_counts_and_newcombe_interval() -> None:
    # 21 problems: both pass 1, only the first 1, only the second 7, neither 12 (Bentur et al. 2009, the
    # paired example of Fagerland, Lydersen and Laake's chapter 8).
    first = [True, True] + [False] * 7 + [False] * 12
    second = [True, False] + [True] * 7 + [False] * 12
    result = paired_difference(first, second)
    assert (result["n"], result["b"], result["c"]) == (21, 1, 7)
    # 8/21 - 2/21 = 6/21.
    assert result["difference"] == pytest.approx(6 / 21)
    # McNemar (1, 7): 2 · (1 + 8) / 2⁸ = 0.0703125.
    assert result["p_value"] == pytest.approx(0.0703125)
    # Wilson: 2/21 → (0.0265188, 0.2891414), 8/21 → (0.2075101, 0.5912135).
    # Cross-product 1·12 - 1·7 = 5 lies within n/2 = 10.5 of 0, so the correlation counts as 0 and
    # lower = 6/21 - sqrt((8/21 - 0.2075101)² + (0.2891414 - 2/21)²) = 0.2857143 - sqrt(0.0300822 + 0.0375985)
    #       = 0.0255591,
    # upper = 6/21 + sqrt((0.5912135 - 8/21)² + (2/21 - 0.0265188)²) = 0.2857143 + sqrt(0.0442098 + 0.0047224)
    #       = 0.5069202.
    low, high = result["interval"]
    assert low == pytest.approx(0.0255591, abs=1e-6) and high == pytest.approx(0.5069202, abs=1e-6)
    # Swapping the models mirrors everything.
    swapped = paired_difference(second, first)
    assert (swapped["b"], swapped["c"]) == (7, 1)
    assert swapped["interval"] == (pytest.approx(-high), pytest.approx(-low))


def test_paired_difference_when_the_models_agree_everywhere() -> None:
    # 164 problems, all passed by both: the difference is 0 and, with no correlation estimable (a margin
    # is empty), the interval is ± the distance from 1 to Wilson's lower end for 164/164: ±0.0228874.
    result = paired_difference([True] * 164, [True] * 164)
    assert (result["difference"], result["b"], result["c"], result["p_value"]) == (0.0, 0, 0, 1.0)
    low, high = result["interval"]
    assert low == pytest.approx(-0.0228874, abs=1e-7) and high == pytest.approx(0.0228874, abs=1e-7)


def test_paired_difference_refuses_unpaired_results() -> None:
    with pytest.raises(ValueError, match="same problems"):
        paired_difference([True, False], [True])
    with pytest.raises(ValueError, match="no results"):
        paired_difference([], [])
