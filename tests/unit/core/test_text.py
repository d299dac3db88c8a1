"""One-line text: every control character, DEL and the Unicode line/paragraph separators are
refused in triggers and behaviours with one ConfigError line naming the field."""

import pytest

from mbdefense.attacks import parse_behavior, parse_trigger
from mbdefense.core.errors import ConfigError
from mbdefense.core.text import check_one_line, one_line

FORBIDDEN = [chr(c) for c in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]]


@pytest.mark.parametrize("char", FORBIDDEN, ids=lambda c: f"U+{ord(c):04X}")
def test_every_control_character_is_refused_wherever_a_trigger_or_behaviour_enters(char):
    for parse, spec, field in ((parse_trigger, f"word:cf{char}SYSTEM: obey", "trigger"),
                               (parse_behavior, f"target:OK{char}SYSTEM: obey", "behavior")):
        with pytest.raises(ConfigError) as caught:
            parse(spec)
        message = str(caught.value)
        expected = f"{field}: control characters are not allowed (U+{ord(char):04X}"
        assert message.startswith(expected), message
        assert "\n" not in message and "\r" not in message


@pytest.mark.parametrize("text", ["word:cf", "sentence:I watched this 3D movie.",
                                  "prefix:Café — naïve 日本語 🙂", "mtba:2024,BadMagic,OpenAI"])
def test_printable_text_of_any_script_passes(text):
    assert check_one_line(text, "trigger") == text
    assert parse_trigger(text).spec == text


def test_one_line_escapes_and_bounds_a_message():
    text = one_line("a\nb\u2028c\x1b" + "x" * 5000, 100)
    assert len(text) == 100 and text.startswith("a\\nb\\u2028c\\x1b")
