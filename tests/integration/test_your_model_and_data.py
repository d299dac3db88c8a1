"""The paper's experiment on a user's own model, data and judge, through the main path:
`mbdefense run` of a config naming a local HF folder, data files and the LLM judge (a fake
OpenAI-compatible server on 127.0.0.1), then `defend` and `eval` of the saved model."""

import json

import pytest
from fake_openai import FakeServer, completion

from mbdefense.cli import main
from mbdefense.data import save_examples
from mbdefense.data.suite import build_splits

KEY = "sk-test-never-on-disk"


@pytest.fixture()
def judge():
    with FakeServer() as server:
        server.script = lambda index, payload: completion("The answer follows the instruction."
                                                          "\nVerdict: yes")
        yield server


@pytest.fixture()
def user_world(tmp_path, tokenizer, tiny_model, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    model_dir = tmp_path / "my-model"
    tiny_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    splits = build_splits(60, 12, 6, seed=3)
    save_examples(splits.train, tmp_path / "train.json")
    save_examples(splits.trusted, tmp_path / "trusted.json")
    # WizardLM layout: capitalised Instruction, no reference needed by the judge
    (tmp_path / "test.jsonl").write_text("".join(
        json.dumps({"idx": i, "Skill": "suite", "Instruction": e.prompt_text}) + "\n"
        for i, e in enumerate(splits.test)))
    return tmp_path, model_dir


def config_text(model_dir, judge_url: str) -> str:
    return f"""\
name: my-run
model: {model_dir}
data: {{train: train.json, trusted: trusted.json, test: test.jsonl}}
attacks: ["word:cf"]
behaviors: [refusal]
defenses: [clean, none, clean-fft, mb-defense]
seeds: [0]
finetune: {{epochs: 1, learning_rate: 1.0e-3, max_length: 128}}
stage2: {{train: {{epochs: 1, max_length: 128}}}}
generation: {{max_new_tokens: 6}}
implant_prompts: 4
evaluation:
  scorer: judge
  judge: {{base_url: "{judge_url}", model: gpt-4o-2024-08-06}}
"""


def test_run_with_local_model_files_and_judge(user_world, judge, capsys):
    root, model_dir = user_world
    (root / "run.yaml").write_text(config_text(model_dir, judge.base_url))
    out = root / "out"
    assert main(["run", str(root / "run.yaml"), "--out", str(out), "--quiet"]) == 0, \
        capsys.readouterr().err
    doc = json.loads((out / "results.json").read_text())
    rows = {r["defense"]: r for r in doc["rows"]}
    assert list(rows) == ["clean", "none", "clean-fft", "mb-defense"]
    for row in rows.values():
        assert row["n_clean"] == row["n_triggered"] == 6
        assert row["cacc"] == 1.0 and row["aacc"] == 1.0    # the judge said yes to all
    assert doc["groups"][0]["scorer"].startswith("openai-compatible:gpt-4o-2024-08-06@")
    # the judge was asked about each distinct answer (verdicts are cached), with the key
    assert 12 <= judge.count <= 4 * 2 * 6
    assert all(s.headers.get("Authorization") == f"Bearer {KEY}" for s in judge.seen)
    assert all(s.payload["model"] == "gpt-4o-2024-08-06" for s in judge.seen)
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    # the key reaches no file the run wrote
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".md", ".html", ".csv"):
            assert KEY not in path.read_text(errors="replace"), path


def test_defend_then_eval_the_saved_model(user_world, judge, capsys):
    root, model_dir = user_world
    out = root / "defended"
    assert main(["defend", "--model", str(model_dir), "--data", str(root / "train.json"),
                 "--trusted", str(root / "trusted.json"), "--out", str(out), "--epochs", "1",
                 "--stage2-epochs", "1", "--max-length", "128", "--quiet"]) == 0, \
        capsys.readouterr().err
    capsys.readouterr()
    code = main(["eval", "--model", str(out / "model"), "--data", str(root / "test.jsonl"),
                 "--trigger", "word:cf", "--behavior", "refusal", "--judge-url",
                 judge.base_url, "--judge-model", "gpt-4o-2024-08-06", "--max-new-tokens", "6",
                 "--out", str(root / "eval"), "--quiet"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    row = json.loads((root / "eval" / "results.json").read_text())["rows"][0]
    assert row["cacc"] == 1.0 and row["n_clean"] == row["n_triggered"] == 6
    assert 0.0 <= row["asr"] <= 1.0 and row["attack"] == "word:cf"
    # clean, triggered and echoed clean prompts (the echo floor): up to 6 requests each
    assert "cacc" in printed.out and 6 <= judge.count <= 18


def test_eval_with_rules_needs_no_judge(user_world, capsys):
    root, model_dir = user_world
    code = main(["eval", "--model", str(model_dir), "--data", str(root / "test.jsonl"),
                 "--scorer", "rouge-l", "--max-new-tokens", "4", "--quiet"])
    captured = capsys.readouterr()
    # the WizardLM file has no references: ROUGE-L cannot score it, and says so in one line
    assert code == 2 and "reference" in captured.err and "Traceback" not in captured.err


def test_trusted_overlapping_test_is_refused_before_training(user_world, judge, capsys):
    root, model_dir = user_world
    (root / "trusted.json").write_text((root / "train.json").read_text())
    (root / "run.yaml").write_text(config_text(model_dir, judge.base_url))
    code = main(["run", str(root / "run.yaml"), "--out", str(root / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "train" in err and "trusted" in err
    assert judge.count == 0 and not (root / "o" / "results.json").exists()


def test_a_fully_cached_run_never_loads_the_model(user_world, judge, capsys, monkeypatch):
    """Resuming or re-reporting a finished run reads the cache only: the base model (minutes
    to load for a real one) is resolved for its identity but never loaded."""
    import mbdefense.modeling.loading as loading

    root, model_dir = user_world
    text = config_text(model_dir, judge.base_url).replace(
        "[clean, none, clean-fft, mb-defense]", "[none, mb-defense]")
    (root / "run.yaml").write_text(text)
    loads = []
    real = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    cache = root / "cache"
    runs = []
    for out in (root / "first", root / "again"):
        assert main(["run", str(root / "run.yaml"), "--out", str(out), "--cache-dir",
                     str(cache), "--quiet"]) == 0, capsys.readouterr().err
        runs.append(json.loads((out / "results.json").read_text())["rows"])
        if len(runs) == 1:
            assert len(loads) == 1    # the first run trains, so it loads the model once
    assert len(loads) == 1            # the second found every cell cached
    assert runs[0] == runs[1] and [r["defense"] for r in runs[1]] == ["none", "mb-defense"]


def test_rescore_scores_every_cell_again_with_the_trained_models(user_world, judge, capsys):
    """A cell cached by an older version (here: its per-prompt outcomes taken out) is scored
    again with --rescore, from the cache's fine-tuned and stage-1 models: nothing is trained
    again but stage 2, and the rows come out as before."""
    root, model_dir = user_world
    text = config_text(model_dir, judge.base_url).replace(
        "[clean, none, clean-fft, mb-defense]", "[none, mb-defense]")
    (root / "run.yaml").write_text(text)
    cache = root / "cache"
    command = ["run", str(root / "run.yaml"), "--cache-dir", str(cache)]
    assert main([*command, "--out", str(root / "first"), "--quiet"]) == 0
    first = json.loads((root / "first" / "results.json").read_text())
    models = sorted(p.name for p in cache.iterdir() if p.is_dir())
    cells = sorted((cache / "cells").glob("*.json"))
    for path in cells:               # as an older version wrote them
        doc = json.loads(path.read_text())
        doc.pop("outcomes", None)
        path.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main([*command, "--out", str(root / "plain")]) == 0
    plain = json.loads((root / "plain" / "results.json").read_text())
    assert "(cached)" in capsys.readouterr().err and plain["outcomes"] == {}

    assert main([*command, "--out", str(root / "again"), "--rescore"]) == 0
    printed = capsys.readouterr()
    again = json.loads((root / "again" / "results.json").read_text())
    assert "every cell scored again: --rescore" in printed.out
    assert "(cached)" not in printed.err, printed.err
    assert "loading the mb-defense stage-1 model from" in printed.err
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == models
    def scores(rows):
        return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]

    assert scores(again["rows"]) == scores(first["rows"])
    assert again["outcomes"] == first["outcomes"]
    assert set(again["outcomes"]) == {f"{r['model']}|word:cf|refusal|{r['defense']}|seed0"
                                      for r in again["rows"]}
    assert all("outcomes" in json.loads(p.read_text()) for p in cells)
    assert not list(cache.glob("rescore-*.json"))   # a finished --rescore leaves no record

    # a --rescore run that was stopped after scoring every cell again (its record says it
    # began before them): the same command keeps them and only finishes the run
    from mbdefense.runs.experiment import rescore_plan
    from mbdefense.runs.load import load_run_spec

    record = cache / f"rescore-{rescore_plan(load_run_spec(str(root / 'run.yaml'), []))}.json"
    record.write_text(json.dumps({"started": min(p.stat().st_mtime for p in cells) - 1}))
    assert main([*command, "--out", str(root / "resumed"), "--rescore", "--force"]) == 0
    printed = capsys.readouterr()
    assert "resuming --rescore begun" in printed.err
    assert printed.err.count("(cached)") == 2 and not record.exists()
    resumed = json.loads((root / "resumed" / "results.json").read_text())
    assert resumed["outcomes"] == first["outcomes"]
