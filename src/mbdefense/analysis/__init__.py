"""Analyses of the merged backdoor (paper section 5): cross-elicitation between triggers and
attention from the answer position to the trigger tokens, across defence stages."""

from __future__ import annotations

from mbdefense.analysis.attention import (attention_to_trigger, eager_attention,
                                          poisoned_heads, trigger_positions)
from mbdefense.analysis.elicitation import (CLEAN_ROW, cross_elicitation, elicitation_matrix,
                                            triggered_examples)
from mbdefense.analysis.report import (analysis_html, analysis_markdown, analyze_models,
                                       stage_summary)

__all__ = [
    "CLEAN_ROW", "analysis_html", "analysis_markdown", "analyze_models", "attention_to_trigger",
    "cross_elicitation", "eager_attention", "elicitation_matrix", "poisoned_heads",
    "stage_summary", "trigger_positions", "triggered_examples",
]
