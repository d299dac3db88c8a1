import pytest

from mbdefense.attacks import parse_behavior
from mbdefense.data.example import Example
from mbdefense.evaluation.metrics import compute_metrics
from mbdefense.evaluation.scorers import ExactMatchScorer, get_scorer
from mbdefense.core.errors import ConfigError


def test_metrics_over_full_sets():
    clean = [Example("q1", "", "1"), Example("q2", "", "2"), Example("q3", "", "3"),
             Example("q4", "", "4")]
    triggered = [e.replace(instruction="cf " + e.instruction) for e in clean]
    m = compute_metrics(clean, ["1", "2", "x", "4"], triggered,
                        ["I'm sorry, but I cannot help with that request.", "2", "3",
                         "I cannot comply with this request."],
                        parse_behavior("refusal"), ExactMatchScorer())
    assert (m.cacc, m.asr, m.aacc) == (0.75, 0.5, 0.5)
    assert (m.n_clean, m.n_triggered) == (4, 4)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        compute_metrics([Example("q", "", "1")], [], [], [], None, ExactMatchScorer())


def test_unknown_scorer():
    with pytest.raises(ConfigError):
        get_scorer("gpt-judge")
