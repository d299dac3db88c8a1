"""The results document (``results.json``): one shape for every command that evaluates.

``{"schema_version", "name", "description", "rows": [...], "summary": [...], "intervals",
"config", "versions", "metadata", "diagnostics", "samples", "outcomes", "groups",
"wall_seconds"}``. A row
is one evaluated model: ``model, attack, behavior, defense, seed, cacc, asr, aacc, clean_asr,
clean_score, n_clean, n_triggered, ...`` (``defense`` is ``clean`` for the never-attacked
reference and ``none`` for the attacked model undefended); fractions in [0, 1].

Schema 3 adds the 95% confidence intervals (:mod:`mbdefense.results.intervals`): each row's
``{cacc,asr,aacc,clean_asr}_ci`` (Wilson, from the row's counts) and ``summary``, the rows
aggregated over seeds per (model, attack, behavior, defense) with ``seeds``, ``n_seeds``,
``interval`` (``t over seeds`` or ``wilson``), ``{metric}_mean`` / ``_std`` / ``_ci`` and
summed ``{metric}_hits`` / ``_n``. Readers of schema 1 and 2 documents compute the same from
the counts (:func:`mbdefense.results.intervals.with_intervals` and ``summarise``).

Schema 4 adds ``outcomes``: for each row (keyed as its samples are:
``model|attack|behavior|defense|seedN``), the per-prompt flags behind ``cacc``, ``asr``,
``aacc`` and ``clean_asr`` as strings of ``0`` and ``1`` in the order the prompts were scored,
so that two rows of one setting can be compared prompt by prompt
(:mod:`mbdefense.results.paired`). A row scored before schema 4 (an older cached cell) has
none.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 4
#: The row of the never-attacked model: a reference, not a defense.
CLEAN_REFERENCE = "clean"


def row_heading(model: str, attack: str, behavior: str, defense: str, seed: int) -> str:
    """The key of a row's ``samples`` and ``outcomes``: ``model|attack|behavior|defense|seedN``."""
    return "|".join([str(model), str(attack), str(behavior), str(defense), f"seed{seed}"])


def new_outcome() -> dict[str, Any]:
    """An empty outcome of an experiment: rows, samples and per-prompt outcomes (keyed by
    :func:`row_heading`) and diagnostics."""
    return {"rows": [], "samples": {}, "diagnostics": {}, "outcomes": {}}


def merge_outcome(into: dict[str, Any], part: dict[str, Any]) -> None:
    """Add ``part`` (a cell's outcome) to ``into``; a cell cached before per-prompt outcomes
    were kept has none."""
    into["rows"].extend(part["rows"])
    for name in ("samples", "diagnostics", "outcomes"):
        into[name].update(part.get(name, {}))


def versions() -> dict[str, str]:
    import torch
    import transformers

    import mbdefense

    return {"mbdefense": mbdefense.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_metadata(description: str = "") -> dict[str, Any]:
    """Date, commit, command, hardware: what a reader needs to place a result."""
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": _commit(),
            "command": " ".join(shlex.quote(a) for a in ["mbdefense", *sys.argv[1:]]),
            "hardware": f"{platform.machine()}, {os.cpu_count()} CPUs"
                        + (f", {torch.cuda.device_count()} x {gpu}" if gpu else ""),
            "description": description}


@dataclass
class ResultsDocument:
    name: str = ""
    description: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, Any] = field(default_factory=dict)
    outcomes: dict[str, dict[str, str]] = field(default_factory=dict)
    groups: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=versions)
    metadata: dict[str, Any] = field(default_factory=dict)

    def add(self, outcome: dict[str, Any], group: dict[str, Any] | None = None) -> None:
        """One experiment's rows, samples, per-prompt outcomes and diagnostics (keyed by
        ``group`` when given)."""
        self.rows.extend(outcome["rows"])
        self.samples.update(outcome["samples"])
        self.outcomes.update(outcome.get("outcomes", {}))
        if group is not None:
            key = "|".join(str(group[k]) for k in ("model", "attack", "behavior")) + \
                f"|seed{group['seed']}"
            self.diagnostics[key] = outcome["diagnostics"]
            self.groups.append(group)
        else:
            self.diagnostics.update(outcome["diagnostics"])

    def to_json(self) -> dict[str, Any]:
        from mbdefense.core.io import jsonable
        from mbdefense.results.intervals import (CONFIDENCE, ONE_SEED_METHOD,
                                                 SEEDS_AGREE_METHOD, SEEDS_METHOD, summarise,
                                                 with_intervals)

        intervals = {"confidence": CONFIDENCE, "one_seed": ONE_SEED_METHOD,
                     "several_seeds": SEEDS_METHOD, "seeds_agree": SEEDS_AGREE_METHOD}
        return jsonable({"schema_version": SCHEMA_VERSION, "name": self.name,
                         "description": self.description,
                         "rows": [with_intervals(r) for r in self.rows],
                         "summary": summarise(self.rows), "intervals": intervals,
                         "config": self.config, "versions": self.versions,
                         "metadata": self.metadata, "diagnostics": self.diagnostics,
                         "samples": self.samples, "outcomes": self.outcomes,
                         "groups": self.groups,
                         "wall_seconds": round(self.wall_seconds, 1)})

    def write(self, path: str | Path) -> Path:
        from mbdefense.core.io import atomic_write_json

        return atomic_write_json(path, self.to_json())
