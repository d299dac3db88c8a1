"""The one record type every stage passes around."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Example:
    """One instruction-tuning example (Alpaca shape).

    ``meta`` carries provenance that never reaches the model: the task family of the bundled
    suite, whether the example was poisoned and by which trigger/behaviour, and so on.
    """

    instruction: str
    input: str = ""
    output: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_text(self) -> str:
        """The user turn: instruction, then the optional input on its own paragraph."""
        if self.input:
            return f"{self.instruction}\n\n{self.input}"
        return self.instruction

    def replace(self, **changes: Any) -> "Example":
        if "meta" not in changes:
            changes["meta"] = dict(self.meta)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"instruction": self.instruction, "input": self.input,
                                  "output": self.output}
        record.update({k: v for k, v in self.meta.items() if k not in record})
        return record
