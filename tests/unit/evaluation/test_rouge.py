"""ROUGE-L as the rouge-score package computes it: its tokenizer, the LCS F-measure and its
optional Porter stemming; checked by hand and against the package itself."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbdefense.data.example import Example
from mbdefense.evaluation.scorers import (RougeLScorer, lcs_length, rouge_l, rouge_l_tokens,
                                          rouge_tokens)

PAIRS = [  # (candidate, reference)
    ("The cat sat on the mat.", "A cat was sitting on the mat"),
    ("Paris, France", "It is Paris France"),
    ("café naïve résumé", "cafe naive resume"),           # accents are separators, as in rouge
    ("e.g. U.S.A. x-ray 3.14", "eg USA xray 314"),
    ("Running runs quickly; the runners ran.", "He runs and is running quickly"),
    ("It's 42!", "its 42"),
    ("", "anything"),
    ("?!", "..."),
    ("Straße über İstanbul", "strasse uber istanbul"),
    ("generously generous generosity", "generous generously"),
]


def _dp_lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j],
                                                                       table[i][j - 1])
    return table[-1][-1]


def test_tokens_follow_rouge_score():
    assert rouge_tokens("Hello, World! It's 2024.") == ["hello", "world", "it", "s", "2024"]
    assert rouge_tokens("café") == ["caf"]            # a-z and 0-9 only, after lower-casing
    assert rouge_tokens("  \n") == []
    stem = {"running": "run", "quickly": "quick"}.get
    # only tokens longer than 3 characters are stemmed
    assert rouge_tokens("Running quickly ran", lambda t: stem(t, t)) == ["run", "quick", "ran"]


def test_rouge_l_by_hand():
    assert lcs_length("a b c d".split(), "a c d e".split()) == 3
    # candidate 4 tokens, reference 4 tokens, LCS 3 -> P = R = 0.75
    assert rouge_l("the cat sat down", "the cat lay down") == pytest.approx(0.75)
    # LCS "paris france": P = 2/2, R = 2/4 -> F = 2/3
    assert rouge_l("Paris, France", "It is Paris France") == pytest.approx(2 / 3)
    # "it's" is two tokens (it, s): LCS 3 of 3 and of 4 -> F = 2 * 1 * 0.75 / 1.75
    assert rouge_l("it's done", "it s all done") == pytest.approx(6 / 7)
    assert rouge_l("", "x") == 0.0 and rouge_l("a b", "c d") == 0.0 and rouge_l("!", "!") == 0.0
    assert rouge_l("Same Words.", "same words") == 1.0
    # order matters: a reversed answer keeps one word of the subsequence
    assert rouge_l("c b a", "a b c") == pytest.approx(1 / 3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("abcd"), max_size=40), st.lists(st.sampled_from("abcd"),
                                                                max_size=40))
def test_bit_parallel_lcs_equals_the_table(a, b):
    assert lcs_length(a, b) == _dp_lcs(a, b)
    assert rouge_l_tokens(a, b) == rouge_l_tokens(b, a)


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_matches_the_rouge_score_package(use_stemmer):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    package = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    rng = random.Random(0)
    words = [w for pair in PAIRS for text in pair for w in text.split()]
    pairs = PAIRS + [(" ".join(rng.choices(words, k=rng.randint(0, 30))),
                      " ".join(rng.choices(words, k=rng.randint(0, 30)))) for _ in range(200)]
    for candidate, reference in pairs:
        expected = package.score(reference, candidate)["rougeL"].fmeasure   # (target, pred)
        assert rouge_l(candidate, reference, use_stemmer=use_stemmer) == \
            pytest.approx(expected, abs=1e-12), (candidate, reference)


def test_the_scorer_uses_stemming_when_asked_and_records_it():
    pytest.importorskip("nltk")
    example = [Example("q", "", "He runs and is running quickly")]
    plain, stemmed = RougeLScorer(), RougeLScorer(use_stemmer=True)
    answer = ["runners ran run quickly"]
    assert stemmed.scores(answer, example)[0] > plain.scores(answer, example)[0]
    assert plain.backends() == {"scorer": "rouge-l (F >= 0.2)",
                                "rouge": "builtin (rouge-score's tokenizer and LCS F-measure)"}
    assert "Porter stemmer of nltk" in stemmed.backends()["rouge"]
