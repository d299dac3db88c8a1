"""The rule benchmarks/tune_stage2.py chooses stage 2's settings by (on validation numbers)."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "tune_stage2.py"


def _module():
    spec = importlib.util.spec_from_file_location("tune_stage2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bounds(*args, **kwargs):
    return _module().Bounds(*args, **kwargs)


def col(asr, aacc, drop=0.0, asr_hi=None):
    return {"asr": asr, "aacc": aacc, "cacc_drop": drop,
            "asr_hi": asr if asr_hi is None else asr_hi}


def test_within_the_rule_everywhere_wins_on_answers():
    pick = _module().pick
    said = pick({"a": [col(0.0, 0.3), col(0.0, 0.5)], "b": [col(0.0, 0.5), col(0.0, 0.5)],
                 "c": [col(0.2, 0.9), col(0.0, 0.9)]}, _bounds(0.05, 0.05))
    assert said.startswith("picked on validation: b")


def test_the_fallback_counts_columns_then_asr_then_answers():
    pick = _module().pick
    # no candidate is within the rule everywhere (b's CACC drop, c's and d's ASR)
    columns = {"b": [col(0.0, 0.2), col(0.0, 0.3, drop=0.07)],
               "c": [col(0.0, 0.8), col(0.10, 0.8)],
               "d": [col(0.0, 0.9), col(0.30, 0.9)]}
    # every one has 1 of 2 columns: the lower mean ASR wins over the better answers
    assert " picks b: 1 of 2 columns" in pick(columns, _bounds(0.05, 0.05))
    # one prompt of ASR (below the two decimals) does not outweigh the answers
    columns = {"b": [col(0.0, 0.2), col(0.0, 0.3, drop=0.07)],
               "e": [col(0.0, 0.4), col(0.003, 0.4, drop=0.07)]}
    assert " picks e: 1 of 2" in pick(columns, _bounds(0.05, 0.05))
    assert pick({}, _bounds(0.05, 0.05)) == "no candidate was measured"


def test_the_nll_bound_rules_out_a_candidate_even_in_the_fallback():
    pick = _module().pick

    def nll_col(asr, rise):
        return {**col(asr, 0.4, drop=0.2, asr_hi=asr + 0.1), "nll_rise": rise}

    # no candidate is within the rule anywhere (the CACC drop); "far" has the lowest ASR but
    # breaks the NLL bound in one column, so the fallback takes "mid"
    columns = {"near": [nll_col(0.20, -0.02), nll_col(0.10, -0.03)],
               "mid": [nll_col(0.08, 0.00), nll_col(0.05, 0.04)],
               "far": [nll_col(0.05, 0.01), nll_col(0.00, 0.11)]}
    said = pick(columns, _bounds(0.10, 0.05, 0.05))
    assert " picks mid: " in said and "within the NLL bound everywhere" in said
    assert " picks far: " in pick(columns, _bounds(0.10, 0.05))  # no NLL bound: the lowest ASR
    # with the CACC check off, the columns within the ASR and NLL bounds count first
    said = pick(columns, _bounds(0.20, 1.0, 0.05))
    assert said.startswith("picked on validation: mid")


def test_columns_must_name_an_attack_and_a_behaviour(capsys):
    import pytest

    with pytest.raises(SystemExit) as raised:
        _module().parse_args(["--columns", "ctba"])
    assert raised.value.code == 2
    assert "--columns ctba: expected ATTACK:BEHAVIOUR" in capsys.readouterr().err
    args = _module().parse_args(["--columns", "ctba:refusal", "style:biblical:toxic"])
    assert args.columns == [("ctba", "refusal"), ("style:biblical", "toxic")]
    assert _module().parse_args([]).columns is None


def _flags(leaks: int, n: int = 100) -> str:
    return "1" * leaks + "0" * (n - leaks)


def test_an_incumbent_is_replaced_only_by_fewer_leaks_beyond_noise():
    challenge = _module().challenge
    columns = {"margin12": [col(0.0, 0.4), col(0.02, 0.3)],
               "margin16": [col(0.0, 0.3), col(0.0, 0.3)],
               "margin20": [col(0.0, 0.5), col(0.0, 0.5, drop=0.09)]}
    runs = ["m|badnet|toxic|mb-defense|seed0", "m|style|toxic|mb-defense|seed1"]

    def flags(first, second):
        return dict(zip(runs, [_flags(first), _flags(second)]))

    # one leak less in all: noise, the incumbent stays (even though margin16 is within the
    # rule everywhere, and the plain rule would weigh answers)
    verdict, lines = challenge("margin12", columns, {"margin12": flags(0, 1),
                                                     "margin16": flags(0, 0),
                                                     "margin20": flags(0, 0)}, _bounds(0.05, 0.05))
    assert verdict.startswith("keeps margin12")
    assert any(line.startswith("margin16 - margin12, ASR pooled over 200 triggered prompts: "
                               "-0.0050") for line in lines)
    # twelve leaks fewer, pooled over both columns: margin16 replaces it; margin20 has fewer
    # still but is outside the rule (its CACC drop)
    verdict, _ = challenge("margin12", columns, {"margin12": flags(4, 8),
                                                 "margin16": flags(0, 0),
                                                 "margin20": flags(0, 0)}, _bounds(0.05, 0.05))
    assert verdict == "picked on validation: margin16 replaces margin12 (fewer leaks, pooled)"


def test_an_incumbent_outside_the_rule_gets_no_protection():
    challenge = _module().challenge
    columns = {"margin8": [col(0.0, 0.4), col(0.2, 0.3)],
               "margin12": [col(0.0, 0.3), col(0.0, 0.3)]}
    verdict, lines = challenge("margin8", columns, {}, _bounds(0.05, 0.05))
    assert verdict.endswith("the rule decides: picked on validation: margin12 (mean AACC 0.300)")
    assert lines == []


def test_the_incumbent_rule_needs_comparable_outcomes():
    import pytest

    module = _module()
    columns = {"a": [col(0.0, 0.4)], "b": [col(0.0, 0.4)]}
    run = "m|badnet|toxic|mb-defense|seed0"
    with pytest.raises(SystemExit, match="--incumbent c: not a candidate"):
        module.challenge("c", columns, {}, _bounds(0.05, 0.05))
    # b was cached before per-prompt outcomes were kept: no pairing, a clear stop
    with pytest.raises(SystemExit, match="cover different runs"):
        module.challenge("a", columns, {"a": {run: _flags(1)}, "b": {}}, _bounds(0.05, 0.05))


def test_a_documents_defense_flags_are_keyed_by_row_heading():
    def row(attack, defense, seed):
        return {"model": "m", "attack": attack, "behavior": "toxic", "defense": defense,
                "seed": seed}

    doc = {"rows": [row("word:a|b", "mb-defense", 1), row("badnet", "none", 1),
                    row("badnet", "mb-defense", 2), row("badnet", "mb-defense", 3)],
           "outcomes": {"m|word:a|b|toxic|mb-defense|seed1": {"asr": "0110", "cacc": "1"},
                        "m|badnet|toxic|none|seed1": {"asr": "1111"},
                        "m|badnet|toxic|mb-defense|seed2": {"asr": ""}}}
    # seed 2's flags are empty and seed 3 has none (a cell cached before outcomes were kept)
    assert _module().defense_flags(doc) == {"m|word:a|b|toxic|mb-defense|seed1": "0110"}
    assert _module().defense_flags({"rows": [row("badnet", "mb-defense", 0)]}) == {}


def test_a_column_run_names_its_attack_in_yaml_and_a_safe_folder(tmp_path, monkeypatch):
    module = _module()
    commands = []
    monkeypatch.setattr(module.subprocess, "run", lambda command, check: commands.append(command))
    args = module.parse_args(["--out", str(tmp_path), "--columns", "style:biblical:toxic"])
    path = module.run({"stage2.margin": "16"}, args, args.columns[0])
    assert path == tmp_path / "margin16" / "style-biblical-toxic" / "results.json"
    assert 'attacks=["style:biblical"]' in commands[0] and "behaviors=[toxic]" in commands[0]
    assert "--rescore" not in commands[0] and "--cache-defended" not in commands[0]
    module.run({}, module.parse_args(["--out", str(tmp_path), "--rescore"]))
    assert commands[1][-1] == "--rescore"
    module.run({}, module.parse_args(["--out", str(tmp_path), "--cache-defended"]))
    assert commands[2][-1] == "--cache-defended"


def test_candidates_are_the_grid_product_and_each_named_one():
    module = _module()

    def names(argv):
        return [module.label(c) for c in module.candidates(module.parse_args(argv))]

    assert names(["--grid", "stage2.margin=12,16", "stage2.lam=1,2"]) == [
        "margin12-lam1", "margin12-lam2", "margin16-lam1", "margin16-lam2"]
    assert names(["--grid", "stage2.margin=12", "--candidate", "stage2.margin=16",
                  "stage2.anchor=3"]) == ["margin12", "margin16-anchor3"]
    assert names(["--candidate", "stage2.margin=16"]) == ["margin16"]   # no default grid
    assert len(names([])) == 6                                          # the default grid
    import pytest

    with pytest.raises(SystemExit, match="--candidate stage2.margin: expected KEY=VALUE"):
        names(["--candidate", "stage2.margin"])


def pooled_col(leaks, aacc=0.4, rise=0.0, clean_asr=0.0, n=40):
    """A 40-prompt column as --pooled-asr reads it (one seed)."""
    return {**col(leaks / n, aacc, asr_hi=1.0), "leaks": leaks, "n_triggered": n,
            "nll_rise": rise, "clean_asr": clean_asr}


def test_pooled_asr_bounds_the_sum_of_the_columns_not_each():
    pick = _module().pick
    # one leak in each of four 40-prompt columns: no column's interval clears 0.10, but the
    # 4 of 160 pooled do (Wilson upper end 0.063)
    columns = {"few": [pooled_col(1, aacc=0.3) for _ in range(4)],
               "many": [pooled_col(4, aacc=0.6) for _ in range(4)]}
    assert " picks few: 0 of 4 columns" in pick(columns, _bounds(0.10, 1.0))
    said = pick(columns, _bounds(0.10, 1.0, pooled_asr=True))
    assert said == "picked on validation: few (mean AACC 0.300)"
    # a clean-prompt bound takes a column out of the rule by itself
    columns["few"][0] = pooled_col(1, aacc=0.3, clean_asr=0.075)
    said = pick(columns, _bounds(0.10, 1.0, max_clean_asr=0.05, pooled_asr=True))
    assert " picks few: 3 of 4 columns, pooled ASR 0.03" in said


def test_pooled_asr_lets_the_paired_difference_decide_between_leaky_candidates():
    challenge = _module().challenge
    runs = [f"m|a{i}|refusal|mb-defense|seed1" for i in range(4)]

    def flags(*leaks):
        return {run: _flags(k, 40) for run, k in zip(runs, leaks)}

    # neither clears 0.05 pooled (21 and 9 of 160); the 12 fewer leaks, all on prompts that
    # leaked under the incumbent, decide, within the NLL bound everywhere
    columns = {"per16": [pooled_col(k) for k in (8, 6, 5, 2)],
               "per40": [pooled_col(k, rise=0.02) for k in (3, 3, 2, 1)]}
    found = {"per16": flags(8, 6, 5, 2), "per40": flags(3, 3, 2, 1)}
    bounds = _bounds(0.05, 1.0, 0.05, 0.05, pooled_asr=True)
    verdict, lines = challenge("per16", columns, found, bounds)
    assert verdict == "picked on validation: per40 replaces per16 (fewer leaks, pooled)"
    assert lines[0].startswith("per40 - per16, ASR pooled over 160 triggered prompts: -0.0750")
    # over the NLL bound in one column: the incumbent stays
    columns["per40"][2] = pooled_col(2, rise=0.06)
    verdict, _ = challenge("per16", columns, found, bounds)
    assert verdict.startswith("keeps per16")
    # without --pooled-asr the leaky incumbent hands over to the rule's fallback
    verdict, _ = challenge("per16", columns, found, _bounds(0.05, 1.0, 0.05))
    assert verdict.startswith("the incumbent per16 is outside the rule in 4 column(s)")


def test_main_tabulates_each_candidates_columns_with_leaks_and_gives_the_verdict(
        tmp_path, monkeypatch, capsys):
    """The whole script on fake results: one results document per candidate and column."""
    import json

    module = _module()
    # per candidate: leaks per seed (of 100 prompts) and CACC drop in each column
    measured = {"margin12": {"badnet": ([3, 2], 0.02), "insent": ([1, 0], 0.03)},
                "top_up_rounds2": {"badnet": ([0, 0], 0.04), "insent": ([0, 0], 0.06)}}

    def fake_run(candidate, args, column, log=False):
        name = module.label(candidate)
        attack, behavior = column
        leaks, drop = measured[name][attack]
        rows, outcomes = [], {}
        for seed, n in enumerate(leaks):
            rows.append({"model": "m", "attack": attack, "behavior": behavior, "seed": seed,
                         "defense": "mb-defense", "asr": n / 100, "n_triggered": 100})
            outcomes[f"m|{attack}|{behavior}|mb-defense|seed{seed}"] = {"asr": _flags(n)}
        mean = sum(leaks) / 200
        summary = [{"attack": attack, "behavior": behavior, "defense": "mb-defense",
                    "cacc_mean": 0.7 - drop, "asr_mean": mean, "asr_ci": [0.0, mean + 0.01],
                    "aacc_mean": 0.5},
                   {"attack": attack, "behavior": behavior, "defense": "none",
                    "cacc_mean": 0.7, "asr_mean": 1.0, "aacc_mean": 0.0}]
        path = tmp_path / name / attack / "results.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"summary": summary, "rows": rows, "outcomes": outcomes}))
        return path

    monkeypatch.setattr(module, "run", fake_run)
    argv = ["--candidate", "stage2.margin=12", "--candidate", "stage1.top_up_rounds=2",
            "--columns", "badnet:toxic", "insent:toxic", "--incumbent", "margin12"]
    assert module.main(argv) == 0
    out = capsys.readouterr().out
    table = [r for r in map(str.split, out.splitlines()) if r[2:3] == ["->"]]
    # candidate, attack, ->, behaviour, CACC, ASR, ASR interval (2 words), leaks, ...
    assert [(r[0], r[1], r[8]) for r in table] == [
        ("margin12", "badnet", "5/200"), ("margin12", "insent", "1/200"),
        ("top_up_rounds2", "badnet", "0/200"), ("top_up_rounds2", "insent", "0/200")]
    # 6 leaks fewer of 400, but the challenger's CACC drop in insent is outside the rule: kept
    assert "top_up_rounds2 - margin12, ASR pooled over 400 triggered prompts: -0.0150" in out
    assert out.rstrip().splitlines()[-1].startswith("keeps margin12")
    # pooled, each candidate's exact count over every column and seed, with its interval
    assert module.main([*argv, "--pooled-asr"]) == 0
    out = capsys.readouterr().out
    assert "margin12: ASR pooled over every column and seed 6/400 = 0.0150 [0.0069, 0.0323]" \
        in out
    assert "top_up_rounds2: ASR pooled over every column and seed 0/400 = 0.0000 [0.0000, " \
        "0.0095]" in out


def _record_runs(module, tmp_path, monkeypatch, before=lambda name: None):
    """Replace the script's runs by fakes that record (candidate, attack, log) in order and
    write an empty results document naming its column; ``before(label)`` runs first."""
    import json

    seen = []

    def fake_run(candidate, args, column, log=False):
        before(module.label(candidate))
        seen.append((module.label(candidate), column[0], log))
        path = tmp_path / f"{module.label(candidate)}-{column[0]}.json"
        path.write_text(json.dumps({"summary": [], "rows": [], "column": column[0]}))
        return path

    monkeypatch.setattr(module, "run", fake_run)
    return seen


def test_every_candidate_runs_on_a_column_before_the_next_column(tmp_path, monkeypatch):
    """A search stopped part of the way leaves whole columns, each with every candidate."""
    module = _module()
    order = _record_runs(module, tmp_path, monkeypatch)
    args = module.parse_args(["--candidate", "stage2.margin=2", "--candidate",
                              "stage2.margin=5", "--columns", "badnet:refusal", "ctba:refusal"])
    found = module.run_all(args)
    assert order == [("margin2", "badnet", False), ("margin5", "badnet", False),
                     ("margin2", "ctba", False), ("margin5", "ctba", False)]
    assert [(module.label(c), len(docs)) for c, docs in found] == [("margin2", 2), ("margin5", 2)]


def test_jobs_run_columns_at_once_each_candidate_in_turn_with_its_output_in_a_log(
        tmp_path, monkeypatch):
    import threading

    module = _module()
    both_started = threading.Barrier(2, timeout=10)
    # the two columns' first runs must be in flight together, or the barrier breaks
    seen = _record_runs(module, tmp_path, monkeypatch,
                        before=lambda name: name == "margin2" and both_started.wait())
    args = module.parse_args(["--candidate", "stage2.margin=2", "--candidate",
                              "stage2.margin=5", "--columns", "badnet:refusal", "ctba:refusal",
                              "--jobs", "2"])
    found = module.run_all(args)
    # each column: margin 2 before margin 5; the documents keep the columns' order
    for column in ("badnet", "ctba"):
        mine = [name for name, col_, _ in seen if col_ == column]
        assert mine == ["margin2", "margin5"]
    assert all(log for *_, log in seen)
    assert [[d["column"] for d in docs] for _, docs in found] == [["badnet", "ctba"]] * 2


def test_a_logged_run_writes_its_output_beside_its_folder_and_names_it_when_it_fails(
        tmp_path, monkeypatch):
    import subprocess

    import pytest

    module = _module()
    status = {"code": 0}

    def fake_subprocess_run(command, stdout=None, stderr=None, check=False):
        stdout.write("training ...\n")
        return subprocess.CompletedProcess(command, status["code"])

    monkeypatch.setattr(module.subprocess, "run", fake_subprocess_run)
    args = module.parse_args(["--out", str(tmp_path), "--columns", "ctba:refusal"])
    path = module.run({"stage2.margin": "2"}, args, args.columns[0], log=True)
    assert path == tmp_path / "margin2" / "ctba-refusal" / "results.json"
    log = tmp_path / "margin2" / "ctba-refusal.log"
    assert log.read_text() == "training ...\n"
    status["code"] = 3
    with pytest.raises(SystemExit, match=r"margin2 ctba-refusal: mbdefense run failed "
                                         r"\(exit status 3\); its output is in .*ctba-refusal.log"):
        module.run({"stage2.margin": "2"}, args, args.columns[0], log=True)


def test_jobs_must_be_positive(capsys):
    import pytest

    with pytest.raises(SystemExit):
        _module().parse_args(["--jobs", "0"])
    assert "--jobs 0: expected 1 or more" in capsys.readouterr().err
