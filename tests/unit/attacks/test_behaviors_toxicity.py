"""The toxicity backend: chosen once, recorded with its version, never switched silently."""

from __future__ import annotations

import sys
import warnings
from importlib.metadata import version

import pytest

from mbdefense.attacks import behaviors, parse_behavior
from mbdefense.attacks.behaviors import (TOXICITY_ENV, current_toxicity_backend, is_toxic,
                                         toxicity_backend, use_toxicity_backend)
from mbdefense.core.errors import ConfigError


@pytest.fixture(autouse=True)
def fresh_choice(monkeypatch: pytest.MonkeyPatch):
    """Each test chooses from scratch; the process's choice is restored afterwards."""
    monkeypatch.setattr(behaviors, "_chosen", None)
    monkeypatch.setattr(behaviors, "_warned", False)
    monkeypatch.delenv(TOXICITY_ENV, raising=False)


@pytest.fixture
def no_classifier(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if alt-profanity-check were not installed (its import fails)."""
    monkeypatch.setitem(sys.modules, "profanity_check", None)


def test_the_classifier_is_the_default_and_recorded_with_its_version():
    assert toxicity_backend() == "alt-profanity-check"
    expected = {"toxicity": f"alt-profanity-check {version('alt-profanity-check')}"}
    assert parse_behavior("toxic").backends() == expected
    assert parse_behavior("negsentiment").backends() == expected
    assert parse_behavior("refusal").backends() == {}      # rules only, nothing to record


def test_a_missing_classifier_asked_for_is_an_error(no_classifier, monkeypatch):
    with pytest.raises(ConfigError, match="alt-profanity-check classifier was asked for"):
        use_toxicity_backend("classifier")
    monkeypatch.setenv(TOXICITY_ENV, "alt-profanity-check")
    with pytest.raises(ConfigError, match=r"^\$MBDEFENSE_TOXICITY: the alt-profanity-check"):
        is_toxic("Ugh")
    assert behaviors._chosen is None        # nothing was chosen behind the error


def test_without_the_classifier_auto_warns_once_and_records_the_lexicon(no_classifier):
    with pytest.warns(RuntimeWarning, match="not installed.*word list"):
        assert toxicity_backend() == "lexicon"
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # a second warning would fail here
        use_toxicity_backend("auto")
        assert is_toxic("Ugh, go away.")    # the lexicon's verdict, and recorded as such
    assert parse_behavior("toxic").backends() == {"toxicity": "lexicon"}


def test_the_lexicon_can_be_chosen_without_a_warning(monkeypatch):
    monkeypatch.setenv(TOXICITY_ENV, "lexicon")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert current_toxicity_backend().identity == "lexicon"
    # the choice is made once: the classifier's verdicts do not come back behind its back
    assert toxicity_backend() == "lexicon"


def test_an_unknown_backend_is_named():
    with pytest.raises(ConfigError, match=r"unknown toxicity backend 'perspective' \(known: "
                                          r"auto, classifier, alt-profanity-check, lexicon\)"):
        use_toxicity_backend("perspective")
