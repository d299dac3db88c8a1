"""Attack simulation: triggers, backdoor behaviours, and poisoning a data set."""

from mbdefense.attacks.behaviors import Behavior, parse_behavior
from mbdefense.attacks.poisoning import poison, poison_count, triggered_copies
from mbdefense.attacks.triggers import Trigger, parse_trigger

__all__ = ["Behavior", "Trigger", "parse_behavior", "parse_trigger", "poison", "poison_count",
           "triggered_copies"]
