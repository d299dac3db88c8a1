"""``mbdefense analyze``: the section-5 analysis of one embedded-world experiment.

Trains (or loads from the stage cache) the attacked model, MB-Defense's stage-1 model and the
defended model, then measures each with :func:`mbdefense.analysis.report.analyze_models`: the
cross-trigger elicitation matrix (the merge) and the poisoned attention heads (the break).
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from typing import Any, Callable

from mbdefense.runs.spec import Experiment

STAGES = (("attacked", "none"), ("after stage 1", "mb-defense:stage1"),
          ("after stage 2", "mb-defense"))


def analyze_experiment(config: Experiment, *, alpha: float = 0.5, n: int = 64,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """The analysis document of ``config``'s attack (its ``defenses`` are replaced by the
    attacked model and MB-Defense; the defensive triggers are ``config.stage1``'s)."""
    from mbdefense.analysis.report import analyze_models
    from mbdefense.attacks import parse_trigger
    from mbdefense.defenses import make_defense
    from mbdefense.core.errors import ConfigError
    from mbdefense.core.io import jsonable
    from mbdefense.results.document import versions
    from mbdefense.runs.experiment import run_experiment

    if not 0.0 <= alpha < 1.0:
        raise ConfigError(f"alpha: must be in [0, 1), got {alpha}")
    if n < 1:
        raise ConfigError(f"n: must be >= 1, got {n}")
    start = time.time()
    config = replace(config, defenses=["none", "mb-defense"], include_clean_reference=False)
    result = run_experiment(config, log=log, keep_models=True)
    settings = config.settings
    work = result["workload"]
    pairs = make_defense("mb-defense", stage1=settings.stage1).pairs
    log(f"analysing {len(STAGES)} stages on {min(n, len(work.test_clean))} prompts ...")
    doc = analyze_models({label: result["models"][key] for label, key in STAGES},
                         work.tokenizer, work.test_clean,
                         (parse_trigger(work.attack), work.behavior),
                         pairs, alpha=alpha, n=n, seed=config.seed,
                         max_new_tokens=settings.generation.max_new_tokens)
    doc["rows_of_run"] = result["rows"]
    doc["config"] = jsonable(asdict(config))
    doc["versions"] = versions()
    doc["wall_seconds"] = round(time.time() - start, 1)
    return doc

