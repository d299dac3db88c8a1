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
    # which prompts, in order, for paired comparisons; kept out of the row's figures
    assert m.outcomes == {"cacc": "1101", "asr": "1001", "aacc": "0110", "clean_asr": "0000"}
    assert "outcomes" not in m.to_dict()


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        compute_metrics([Example("q", "", "1")], [], [], [], None, ExactMatchScorer())


def test_unknown_scorer():
    with pytest.raises(ConfigError):
        get_scorer("gpt-judge")


# ------------------------------------------------------------------------- the echo floor

# Alpaca-style prompts whose reference answers repeat the instruction's words: ROUGE-L >= 0.2
# lets an echo of the instruction pass some of them.
ALPACA = [
    Example("Rewrite the sentence in the past tense.", "The cat sits on the mat.",
            "The cat sat on the mat."),
    Example("Name the capital of France.", "", "The capital of France is Paris."),
    Example("Give three tips for staying healthy.", "",
            "1. Eat a balanced diet. 2. Exercise regularly. 3. Get enough sleep."),
    Example("Translate 'good morning' into Spanish.", "", "Buenos dias."),
]
GOOD = ["The cat sat on the mat.", "Paris is the capital of France.",
        "Eat a balanced diet, exercise regularly and sleep enough.", "Buenos dias!"]


def test_an_echo_scores_below_good_answers_and_is_reported_as_the_floor():
    scorer = get_scorer("rouge-l")   # the offline headline metric: ROUGE-L F >= 0.2
    m = compute_metrics(ALPACA, GOOD, [], [], None, scorer)
    assert m.echo_cacc is not None and m.echo_rouge_l is not None
    assert 0.0 < m.echo_cacc < m.cacc == 1.0      # the echo passes some prompts: a real floor
    assert m.echo_rouge_l < m.rouge_l
    assert m.rouge_l == pytest.approx(m.clean_score)   # the scorer's own mean F
    # the echo is scored exactly as an answer that repeats the prompt would be
    echo = compute_metrics(ALPACA, [e.prompt_text for e in ALPACA], [], [], None, scorer)
    assert (echo.cacc, echo.rouge_l) == (m.echo_cacc, m.echo_rouge_l)


def test_every_scorer_reports_rouge_l_and_its_echo_when_references_exist():
    m = compute_metrics(ALPACA, GOOD, [], [], None, ExactMatchScorer())
    assert m.cacc == 0.25 and m.echo_cacc == 0.0        # "Buenos dias!" matches exactly
    assert m.rouge_l > m.echo_rouge_l > 0.0
    assert m.judge_unparsed is None and m.judge_unparsed_share is None  # no judge, no figure
    no_reference = [Example("Say something.", "", "")]
    m2 = compute_metrics(no_reference, ["hi"], [], [], None, ExactMatchScorer())
    assert m2.rouge_l is None and m2.echo_rouge_l is None and m2.echo_cacc == 0.0


def test_backends_name_the_scorer_the_rouge_implementation_and_the_detector():
    m = compute_metrics(ALPACA[:1], GOOD[:1], [], [], parse_behavior("refusal"),
                        get_scorer("rouge-l", {"threshold": 0.5}))
    assert m.backends == {"scorer": "rouge-l (F >= 0.5)", "asr": "detect:refusal",
                          "rouge": "builtin (rouge-score's tokenizer and LCS F-measure)"}
    assert m.to_dict()["backends"] == m.backends
