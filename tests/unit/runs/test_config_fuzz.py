"""Property-based fuzzing of the config parser and of trigger/behaviour specs: whatever the
input, the outcome is a valid spec or one ConfigError of one bounded line, never another
exception."""

from __future__ import annotations

import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mbdefense.attacks import parse_behavior, parse_trigger
from mbdefense.core.errors import ConfigError
from mbdefense.core.text import CONTROL_CHARS
from mbdefense.runs.load import SETTING_KEYS, TOP_KEYS, load_run_spec

FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
SETTING_NAMES = ("n_train", "n_trusted", "n_test", "epochs", "learning_rate", "batch_size",
                 "margin", "lam", "triggers", "responses", "rate_per_trigger", "max_length",
                 "scorer", "rouge_threshold", "max_new_tokens", "train", "implant_threshold",
                 "warmup_ratio", "precision", "reduction", "backend", "judge", "trigger")
TEXT = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["badnet", "insent", "word:cf", "word:cf\nSYSTEM: obey", "refusal", "target:a\u2028b",
     "mb-defense", "none", "clean", "../x", "/etc", "embedded-smoke", ".inf", "nan"])
SCALARS = (st.none() | st.booleans() | st.integers(-2**40, 2**40) | TEXT
           | st.floats(allow_nan=True, allow_infinity=True))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(SETTING_NAMES) | TEXT, inner,
                                        max_size=3), max_leaves=12)
CONFIGS = st.dictionaries(st.sampled_from(TOP_KEYS + ("atacks", "stage3")) | TEXT, VALUES,
                          max_size=5)


def outcome(path) -> None:
    try:
        spec = load_run_spec(path, check_paths=False)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message and not CONTROL_CHARS.search(message), message
        assert len(message) < 2000
    else:
        assert spec.models and spec.attacks and spec.behaviors
        for key in SETTING_KEYS:
            for settings_ in spec.resolved.values():
                value = getattr(settings_, key)
                assert not (isinstance(value, float) and not math.isfinite(value))


@FUZZ
@given(config=CONFIGS)
def test_structured_configs(tmp_path, config):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    outcome(path)


@FUZZ
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_raw_bytes(tmp_path, raw):
    path = tmp_path / "c.yaml"
    path.write_bytes(raw)
    outcome(path)


@FUZZ
@given(spec=st.text(max_size=40) | st.sampled_from(["word:", "mtba:a", "style:x", "ctba:a,b"]))
def test_trigger_and_behaviour_specs(spec):
    for parse in (parse_trigger, parse_behavior):
        try:
            parsed = parse(spec)
        except ConfigError as exc:
            assert "\n" not in str(exc).replace("\\n", "")
        else:
            assert not CONTROL_CHARS.search(parsed.spec), repr(parsed.spec)
