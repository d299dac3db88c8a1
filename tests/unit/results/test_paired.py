"""Paired comparisons: the exact McNemar test and Newcombe's interval for paired data."""

import math

import pytest

from mbdefense.results.paired import (compare_counts, compare_flags, flags_text, mcnemar_exact,
                                      parse_flags)


def test_flags_round_trip_and_bad_text_is_refused():
    flags = [True, False, False, True]
    assert flags_text(flags) == "1001" and parse_flags("1001") == flags
    with pytest.raises(ValueError, match="0s and 1s"):
        parse_flags("10x1")


def test_mcnemar_exact_counts_only_the_discordant_prompts():
    assert mcnemar_exact(7, 0) == pytest.approx(2 * 0.5 ** 7)      # 0.0156
    assert mcnemar_exact(0, 7) == mcnemar_exact(7, 0)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    # 9 against 2 of 11 discordant: 2 * P(X <= 2), X ~ Binomial(11, 1/2)
    assert mcnemar_exact(9, 2) == pytest.approx(2 * (1 + 11 + 55) / 2 ** 11)


def test_mcnemar_exact_holds_for_pooled_comparisons_of_thousands_of_prompts():
    # 2.0 ** m overflows a float past m = 1023 discordant prompts
    assert mcnemar_exact(600, 600) == 1.0
    # 700 against 500: z = 200 / sqrt(1200) = 5.8, a two-sided p near 1e-8
    assert 1e-10 < mcnemar_exact(700, 500) < 1e-7
    assert mcnemar_exact(2000, 0) == 0.0                      # 2 ** -1999: below a float
    assert mcnemar_exact(520, 505) == pytest.approx(
        2 * sum(math.comb(1025, i) for i in range(506)) / 2 ** 1025)


def test_a_one_sided_leak_is_a_difference_and_no_leak_is_none():
    leak = compare_counts(1014, both=0, only_a=7, only_b=0)
    assert leak.difference == pytest.approx(7 / 1014)
    assert 0 < leak.low < leak.difference < leak.high < 0.02 and leak.p_value < 0.05
    same = compare_counts(1014, both=40, only_a=0, only_b=0)
    assert same.difference == 0 and same.p_value == 1.0
    assert same.low < 0 < same.high and same.low == pytest.approx(-same.high)


def test_swapping_the_two_models_mirrors_the_interval():
    ab = compare_counts(44, both=12, only_a=9, only_b=2)
    ba = compare_counts(44, both=12, only_a=2, only_b=9)
    assert (ba.difference, ba.low, ba.high) == pytest.approx((-ab.difference, -ab.high, -ab.low))
    assert ab.p_value == ba.p_value and (ab.rate_a, ab.rate_b) == (ba.rate_b, ba.rate_a)


def test_pairing_narrows_the_interval_when_the_models_agree_on_most_prompts():
    """The same two rates (0.30 and 0.20 of 200): paired with strong agreement, the interval
    is narrower than with the pairs unrelated."""
    agreeing = compare_counts(200, both=40, only_a=20, only_b=0)
    unrelated = compare_counts(200, both=12, only_a=48, only_b=28)
    assert agreeing.rate_a == unrelated.rate_a == 0.3
    assert agreeing.rate_b == unrelated.rate_b == 0.2
    assert agreeing.high - agreeing.low < unrelated.high - unrelated.low
    assert agreeing.low > 0 and agreeing.p_value < unrelated.p_value


def test_flags_are_pooled_over_seeds_and_must_cover_the_same_prompts():
    seed0 = ([True, True, False], [False, True, False])
    seed1 = ([True, False], [False, False])
    pooled = compare_flags([seed0, seed1])
    assert (pooled.n, pooled.both, pooled.only_a, pooled.only_b) == (5, 1, 2, 0)
    assert pooled.difference == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="differ in length"):
        compare_flags([([True], [True, False])])
    with pytest.raises(ValueError, match="no paired prompts"):
        compare_flags([])
    with pytest.raises(ValueError, match="do not add up"):
        compare_counts(3, both=2, only_a=2, only_b=0)


def test_the_interval_stays_within_minus_one_and_one():
    for n, both, only_a, only_b in [(5, 0, 5, 0), (5, 0, 0, 5), (1, 0, 1, 0), (2, 1, 0, 1)]:
        found = compare_counts(n, both, only_a, only_b)
        assert -1 <= found.low <= found.difference <= found.high <= 1
        assert all(math.isfinite(v) for v in (found.low, found.high))
