"""analyze_models on tiny random models, and its Markdown and HTML renderings."""

from __future__ import annotations

import json
import re

import pytest

from mbdefense.analysis.report import analysis_html, analysis_markdown, analyze_models
from mbdefense.attacks.behaviors import parse_behavior
from mbdefense.attacks.triggers import parse_trigger
from mbdefense.data.suite import generate
from mbdefense.defenses.defensive_triggers import make_defensive_pairs

STAGE_KEYS = {"stage", "elicitation", "cross_elicitation", "attention"}
ATTENTION_KEYS = {"trigger", "spec", "role", "n_inputs", "skipped", "layers", "heads",
                  "poisoned_heads", "n_poisoned", "mean_mass", "max_share", "mass",
                  "shared_with_attacker"}


@pytest.fixture(scope="module")
def doc(tokenizer):
    from mbdefense.modeling.embedded import TinyModelConfig, build_tiny_model

    shape = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    models = {"attacked": build_tiny_model(tokenizer, shape, seed=0),
              "after stage 2": build_tiny_model(tokenizer, shape, seed=1)}
    return analyze_models(models, tokenizer, generate(5, seed=0),
                          (parse_trigger("badnet"), parse_behavior("refusal")),
                          make_defensive_pairs(("mn", "bb")), n=3, max_new_tokens=3,
                          batch_size=4)


def test_document_keys(doc):
    assert doc["n"] == 3 and doc["alpha"] == 0.5
    assert doc["attacker"] == {"trigger": "word:cf", "behavior": "refusal"}
    assert [d["trigger"] for d in doc["defensive"]] == ["word:mn", "word:bb"]
    assert [s["stage"] for s in doc["stages"]] == ["attacked", "after stage 2"]
    for stage in doc["stages"]:
        assert set(stage) == STAGE_KEYS
        matrix = stage["elicitation"]
        assert matrix["rows"] == [r["label"] for r in doc["rows"]] + ["no trigger"]
        assert matrix["columns"] == [c["label"] for c in doc["columns"]]
        assert len(matrix["values"]) == 4 and all(len(v) == 3 for v in matrix["values"])
        assert all(0.0 <= v <= 1.0 for row in matrix["values"] for v in row)
        assert stage["cross_elicitation"]["attacker_row"] == matrix["rows"][0]
        assert [a["role"] for a in stage["attention"]] == ["attacker", "defensive", "defensive"]
        for item in stage["attention"]:
            assert set(item) == ATTENTION_KEYS
            assert (item["layers"], item["heads"]) == (1, 2)
            assert item["n_poisoned"] == len(item["poisoned_heads"])
            assert item["n_inputs"] + item["skipped"] == 3
    assert json.loads(json.dumps(doc)) == doc


def test_markdown(doc):
    text = analysis_markdown(doc)
    assert "## attacked" in text and "## after stage 2" in text
    assert "poisoned heads" in text and "mean attention on trigger" in text
    assert "| word:cf (attacker) |" in text and "| no trigger |" in text


def test_html_is_self_contained(doc):
    page = analysis_html(doc)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count("<svg") == 2 * (1 + 3)  # per stage: the matrix and one grid per trigger
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\(|\b(src|href)=", page)
    assert "after stage 2" in page


def test_stage_summary_counts_heads_shared_with_the_attacker(doc):
    from mbdefense.analysis import stage_summary

    for stage, row in zip(doc["stages"], stage_summary(doc)):
        attacker = {tuple(h) for h in stage["attention"][0]["poisoned_heads"]}
        shared = [len(attacker & {tuple(h) for h in a["poisoned_heads"]})
                  for a in stage["attention"]]
        assert [a["shared_with_attacker"] for a in stage["attention"]] == shared
        assert shared[0] == len(attacker)          # the attacker's own heads, all shared
        assert row["shared_heads"] == sum(shared[1:])
        assert row["attacker_poisoned_heads"] == len(attacker)
        assert row["stage"] == stage["stage"]


def _synthetic_doc() -> dict:
    """A small analysis document, without any model."""
    def attention(trigger: str, role: str) -> dict:
        return {"trigger": trigger, "spec": trigger, "role": role, "n_inputs": 3, "skipped": 0,
                "layers": 1, "heads": 2, "poisoned_heads": [[0, 1]], "n_poisoned": 1,
                "mean_mass": 0.25, "max_share": [[0.1, 0.9]], "mass": [[0.1, 0.2]],
                "shared_with_attacker": 1}

    def stage(name: str) -> dict:
        return {"stage": name,
                "elicitation": {"rows": ["word:cf (attacker)", "word:mn", "no trigger"],
                                "columns": ["refusal (attacker)", "mn <response>"],
                                "values": [[0.9, 0.1], [0.2, 0.8], [0.0, 0.05]]},
                "cross_elicitation": {"attacker_asr": 0.9, "defensive_to_attacker": 0.2,
                                      "attacker_to_defensive": 0.1, "baseline_attacker": 0.0,
                                      "baseline_defensive": 0.05, "defensive_own": 0.8,
                                      "defensive_cross": None},
                "attention": [attention("word:cf (attacker)", "attacker"),
                              attention("word:mn", "defensive")]}

    return {"attacker": {"trigger": "word:cf", "behavior": "refusal"},
            "defensive": [{"trigger": "word:mn", "behavior": "fixed:x"}], "n": 3, "seed": 0,
            "alpha": 0.5, "columns": [{"label": "refusal (attacker)", "spec": "refusal"},
                                      {"label": "mn <response>", "spec": "fixed:x"}],
            "stages": [stage("attacked"), stage("after stage 2")]}


def test_markdown_and_html_render_the_same_tables():
    from mbdefense.analysis.report import analysis_blocks
    from mbdefense.reporting.page import Figure, Figures, TableBlock
    from mbdefense.reporting.render import md_text

    doc = _synthetic_doc()
    markdown, page = analysis_markdown(doc), analysis_html(doc)
    tables = [b.table for b in analysis_blocks(doc) if isinstance(b, TableBlock)]
    for block in analysis_blocks(doc):
        if isinstance(block, Figures):
            tables += [i.fallback if isinstance(i, Figure) else i for i in block.items]
    tables = [t for t in tables if t is not None]
    assert len(tables) == 1 + 2 * 3        # summary; per stage attention, elicitation, cross
    for table in tables:
        for row in table.rows:
            assert "| " + " | ".join(md_text(c.text) for c in row) + " |" in markdown
    assert "mn &lt;response&gt;" in markdown and "mn &lt;response&gt;" in page
    assert "<th>no trigger</th>" not in page      # the fallback table only in Markdown
    assert "| no trigger | 0.000 | 0.050 |" in markdown
    assert "<td>–</td>" in page or '<td class="num">–</td>' in page
    assert page.count("<svg") == 2 * (1 + 2)
    assert "`word:mn`" in markdown and "<code>word:mn</code>" in page
