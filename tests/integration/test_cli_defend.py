"""`mbdefense defend` on a user's own (tiny, local) model and data files."""

import json

import pytest

from mbdefense.attacks import parse_behavior, parse_trigger, poison
from mbdefense.cli import main
from mbdefense.data import save_examples
from mbdefense.data.suite import build_splits


@pytest.fixture()
def user_files(tmp_path, tokenizer, tiny_model):
    model_dir = tmp_path / "my-model"
    tiny_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    splits = build_splits(120, 20, 10, seed=0)
    data = poison(splits.train, parse_trigger("badnet"), parse_behavior("refusal"), 0.2, 0)
    save_examples(data, tmp_path / "train.jsonl")
    save_examples(splits.trusted, tmp_path / "trusted.json")
    return model_dir, tmp_path / "train.jsonl", tmp_path / "trusted.json"


@pytest.mark.parametrize("defense", ["mb-defense", "clean-fft", "fine-mixing", "p2p"])
def test_defend_writes_a_loadable_model(tmp_path, user_files, defense, capsys):
    from transformers import AutoModelForCausalLM

    model_dir, train, trusted = user_files
    out = tmp_path / "defended"
    code = main(["defend", "--model", str(model_dir), "--data", str(train), "--trusted",
                 str(trusted), "--out", str(out), "--defense", defense, "--epochs", "1",
                 "--stage2-epochs", "1", "--lr", "1e-3", "--max-length", "128", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (out / "model" / "model.safetensors").exists()
    summary = json.loads((out / "defense.json").read_text())
    # mb-defense adds max(1% of 120, the preset's floor of 40) per trigger to the 120 it received
    assert summary["train_examples"] == (280 if defense == "mb-defense" else 120)
    if defense == "mb-defense":
        assert set(summary["implant_rates"]) == {"word:mn", "word:bb", "word:zx", "word:qv"}
        assert summary["diagnostics"]["defensive_examples"] == 160   # 4 triggers x 40
        assert len(summary["diagnostics"]["stage2"]["history"]) == 2
    if defense == "fine-mixing":  # mixed with the model defend started from, then fine-tuned
        assert 0.45 < summary["diagnostics"]["mixing"]["share_retained"] < 0.55
        assert len(summary["diagnostics"]["fine_tune"]["history"]) == 2
    if defense == "p2p":  # the prompts need the trigger at inference: the summary says so
        assert summary["diagnostics"]["p2p_examples"] == 24
        assert any("at inference" in w for w in summary["warnings"])
    AutoModelForCausalLM.from_pretrained(out / "model")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".defended")]


def test_defend_top_up_records_every_round(tmp_path, user_files, capsys):
    """An untrained tiny model cannot implant the triggers: the top-up runs both rounds and the
    summary says so (rates of each round, the added examples, the remaining warning)."""
    model_dir, train, trusted = user_files
    out = tmp_path / "defended"
    code = main(["defend", "--model", str(model_dir), "--data", str(train), "--trusted",
                 str(trusted), "--out", str(out), "--epochs", "1", "--stage2-epochs", "1",
                 "--max-length", "128", "--on-weak-implant", "top-up", "--stage2-triggers",
                 "one", "--min-per-trigger", "0", "--quiet"])
    assert code == 0, capsys.readouterr().err
    implant = json.loads((out / "defense.json").read_text())["implant"]
    assert len(implant["rounds"]) == 3                    # the check, then 2 top-up rounds
    # each round: 4 triggers x 32 defensive examples, their 128 originals, and as many other
    # examples, capped by the 124 of the stage-1 training set (120 and 4 defensive examples:
    # 1% of 120 per trigger, rounded, with the floor off)
    assert implant["top_up_examples"] == 2 * (4 * 32 + 4 * 32 + 124)
    assert set(implant["leak_rates"]) == set(implant["implant_rates"])
    assert implant["warning"] and "word:mn" in implant["warning"]


def test_defend_bad_trusted_file_leaves_nothing(tmp_path, user_files, capsys):
    model_dir, train, _ = user_files
    bad = tmp_path / "trusted.jsonl"
    bad.write_text('{"instruction": "x", "output": 5.5}\n{"instruction": 3, "output": "y"}\n')
    out = tmp_path / "defended"
    code = main(["defend", "--model", str(model_dir), "--data", str(train), "--trusted",
                 str(bad), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "trusted.jsonl:1" in err and "'output'" in err   # a number is not text
    assert not out.exists()


def test_defend_missing_model_is_a_clear_error(tmp_path, user_files, capsys):
    _, train, trusted = user_files
    code = main(["defend", "--model", str(tmp_path / "nope"), "--data", str(train), "--trusted",
                 str(trusted), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "nope" in err and "Traceback" not in err


def test_attack_tags_in_the_users_file_change_nothing(tmp_path, user_files, capsys):
    """A file that still carries the attack's ground-truth tags (``poisoned``, ``trigger``, ...)
    and the same file without them give the same defended weights, the implant top-up on:
    no defense reads the tags."""
    from safetensors.torch import load_file

    from mbdefense.data import load_examples
    from mbdefense.runs.workload import strip_attack_labels

    model_dir, train, trusted = user_files
    tagged = load_examples(train)
    assert sum(e.meta.get("poisoned") == "attack" for e in tagged) == 24
    save_examples(strip_attack_labels(tagged), tmp_path / "untagged.jsonl")
    weights = []
    for name, data in (("with", train), ("without", tmp_path / "untagged.jsonl")):
        out = tmp_path / f"defended-{name}"
        code = main(["defend", "--model", str(model_dir), "--data", str(data), "--trusted",
                     str(trusted), "--out", str(out), "--epochs", "1", "--stage2-epochs", "1",
                     "--max-length", "128", "--on-weak-implant", "top-up", "--quiet"])
        assert code == 0, capsys.readouterr().err
        weights.append(load_file(out / "model" / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(weights[0][k].equal(weights[1][k]) for k in weights[0])
