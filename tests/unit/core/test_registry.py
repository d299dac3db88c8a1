"""The one registry type behind every swap point: names, aliases and did-you-mean errors."""

import pytest

from mbdefense.core.errors import ConfigError
from mbdefense.core.registry import Registry, did_you_mean


@pytest.fixture()
def colours() -> Registry[int]:
    registry: Registry[int] = Registry("colour")
    registry.register("red", 1, aliases=("crimson",))
    registry.register("green", 2)
    registry.register("blue", 3)
    return registry


def test_register_get_names_items_and_len(colours):
    assert colours.names() == ["red", "green", "blue"]          # registration order
    assert colours.get("green") == 2 and colours["blue"] == 3
    assert colours.items() == [("red", 1), ("green", 2), ("blue", 3)]
    assert list(colours) == ["red", "green", "blue"] and len(colours) == 3
    assert "red" in colours and "crimson" in colours and "pink" not in colours
    assert "colour" in repr(colours) and "green" in repr(colours)


def test_aliases_resolve_to_the_registered_name(colours):
    assert colours.get("crimson") == 1
    assert colours.canonical("crimson") == "red" and colours.canonical("red") == "red"
    colours.alias("navy", "blue")
    assert colours["navy"] == 3
    assert colours.aliases() == {"crimson": "red", "navy": "blue"}
    assert "crimson" not in colours.names()                     # aliases are not names
    assert "navy" not in list(colours)


@pytest.mark.parametrize("name", ["red", "crimson"])
def test_a_name_or_alias_is_registered_once(colours, name):
    with pytest.raises(ValueError, match=f"colour '{name}' is registered twice"):
        colours.register(name, 9)
    with pytest.raises(ValueError, match="registered twice"):
        colours.register("pink", 9, aliases=(name,))
    with pytest.raises(ValueError, match="registered twice"):
        colours.alias(name, "green")
    assert colours.get(name) == 1                                # the first entry is kept


def test_a_typo_gets_a_did_you_mean_hint(colours):
    with pytest.raises(ConfigError) as info:
        colours.get("gren")
    assert str(info.value) == ("unknown colour 'gren' (did you mean 'green'?) "
                               "(known: red, green, blue)")
    with pytest.raises(ConfigError, match=r"did you mean 'crimson'\?"):
        colours.canonical("crimsen")                             # aliases are suggested too


def test_an_unknown_name_lists_the_known_names_without_a_hint(colours):
    with pytest.raises(ConfigError) as info:
        colours["purple"]
    message = str(info.value)
    assert message == "unknown colour 'purple' (known: red, green, blue)"
    assert "did you mean" not in message and "\n" not in message


def test_decorator_form_registers_and_returns_the_entry():
    registry: Registry = Registry("scorer")

    @registry.register("double", aliases=("twice",))
    def double(x: int) -> int:
        return 2 * x

    assert double(4) == 8                                        # the function itself comes back
    assert registry.get("double") is double and registry.get("twice") is double
    assert registry.names() == ["double"]


def test_did_you_mean_helper():
    assert did_you_mean("badnte", ["badnet", "insent"]) == " (did you mean 'badnet'?)"
    assert did_you_mean("zzz", ["badnet", "insent"]) == ""


@pytest.mark.parametrize("module,attribute,kind", [
    ("mbdefense.attacks.triggers", "TRIGGERS", "trigger"),
    ("mbdefense.attacks.behaviors", "BEHAVIORS", "behaviour"),
    ("mbdefense.defenses", "DEFENSES", "defense"),
    ("mbdefense.evaluation.scorers", "SCORERS", "scorer"),
    ("mbdefense.modeling.registry", "MODELS", "model"),
    ("mbdefense.evaluation.generation", "GENERATORS", "generator"),
])
def test_every_swap_point_is_a_registry_named_by_its_kind(module, attribute, kind):
    import importlib

    registry = getattr(importlib.import_module(module), attribute)
    assert isinstance(registry, Registry)
    assert registry.kind == kind
    assert len(registry) >= 2
    with pytest.raises(ConfigError, match=f"^unknown {kind} 'no-such-name' \\(known: "):
        registry.get("no-such-name")
