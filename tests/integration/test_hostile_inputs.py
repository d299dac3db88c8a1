"""The hostile-input corpus: every case runs the real command line (``mbdefense.cli.main``)
and must end with exit status 2 and exactly one line on stderr that names the problem (the
file, line or field where there is one), without a traceback, and with every file in the
working folder byte-identical: nothing written, nothing half-written, nothing removed.

Each case is ``(id, setup, needles)``: ``setup(work)`` writes the case's files into the
working folder (the current directory while the command runs) and returns the command
line; each needle must appear in the error line. Cases fail before any training (``--dry-run``
where a config is only checked), so the whole corpus runs in seconds. The hub is off
(``HF_HUB_OFFLINE=1``): a missing local name must fail at once, never reach the network.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from mbdefense.cli import main

ROWS = [{"instruction": f"What is {i} plus 1?", "input": "", "output": str(i + 1)}
        for i in range(10)]
RESULT_ROW = {"model": "m", "attack": "badnet", "behavior": "refusal", "defense": "none",
              "cacc": 0.5, "asr": 0.9, "aacc": 0.1, "n_clean": 10, "n_triggered": 10, "seed": 0}
# Small enough that nothing below trains: every case fails during the checks.
GOOD_CONFIG = "name: tiny\nmodels: [embedded-smoke]\nattacks: [badnet]\nbehaviors: [refusal]\n"
ALIAS_BOMB = "".join(
    [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")])


def write(work: Path, name: str, content: str | bytes) -> str:
    path = work / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return name


def data(work: Path, name: str = "data.jsonl", rows=ROWS) -> str:
    return write(work, name, "".join(json.dumps(r) + "\n" for r in rows))


def poison(work: Path, *, data_file: str | None = None, **options: str) -> list[str]:
    args = {"--data": data_file or data(work), "--trigger": "badnet", "--behavior": "refusal",
            "--rate": "0.2", "--out": "poisoned.jsonl"}
    args.update({f"--{k.replace('_', '-')}": v for k, v in options.items()})
    return ["poison"] + [x for kv in args.items() for x in kv]


def poison_data(content: str | bytes, name: str = "bad.jsonl"):
    return lambda w: poison(w, data_file=write(w, name, content))


def config(text: str | bytes, *extra: str, name: str = "c.yaml"):
    """``run CONFIG --dry-run``: the config is only checked."""
    return lambda w: ["run", write(w, name, text), "--dry-run", *extra]


def setting(yaml_text: str):
    return config(GOOD_CONFIG + yaml_text)


def results(doc) -> object:
    """``report`` on a run folder holding ``doc`` (any JSON, or raw text/bytes)."""
    def setup(w: Path) -> list[str]:
        raw = doc if isinstance(doc, (str, bytes)) else json.dumps(doc, allow_nan=True)
        write(w, "run/results.json", raw)
        return ["report", "run"]
    return setup


def with_files(*names: str, then):
    """Make ``names`` (``dir/`` a folder, else a small file) before ``then``'s setup."""
    def setup(w: Path) -> list[str]:
        for name in names:
            if name.endswith("/"):
                (w / name).mkdir(parents=True, exist_ok=True)
            else:
                write(w, name, f"the user's own {name}\n")
        return then(w)
    return setup


def symlinked_output(w: Path) -> list[str]:
    os.symlink("data.jsonl", w / "link.jsonl")
    return poison(w, out="link.jsonl")


def hardlinked_output(w: Path) -> list[str]:
    args = poison(w)
    os.link(w / "data.jsonl", w / "same.jsonl")
    return args[:-1] + ["same.jsonl"]


def read_only_folder(then):
    """``then`` writes into ``ro/``, a folder nobody may write in (run unprivileged)."""
    def setup(w: Path) -> list[str]:
        (w / "ro").mkdir()
        args = then(w)
        (w / "ro").chmod(0o555)
        return args
    setup.unprivileged = True
    return setup


def defend(*extra: str, out: str = "defended"):
    def setup(w: Path) -> list[str]:
        return ["defend", "--model", "embedded-smoke", "--data", data(w),
                "--trusted", data(w, "trusted.jsonl"), "--out", out, *extra]
    return setup


def evaluate(*extra: str):
    return lambda w: ["eval", "--model", "embedded-smoke", "--data", data(w), *extra]


def deep(n: int) -> str:
    return "[" * n + "]" * n


CASES = [
    # ---- outputs: never overwrite or delete a user's file or folder ---------------------
    ("poison-out-is-the-input", lambda w: poison(w, out="data.jsonl"),
     ["data.jsonl", "input"]),
    ("poison-out-is-the-input-spelled-differently",
     with_files("sub/", then=lambda w: poison(w, out="sub/../data.jsonl")), ["input"]),
    ("poison-out-is-a-symlink-to-the-input", symlinked_output, ["link.jsonl", "input"]),
    ("poison-out-is-a-hard-link-to-the-input", hardlinked_output, ["same.jsonl", "input"]),
    ("poison-out-is-the-source", with_files(
        "src.jsonl", then=lambda w: poison(w, source=data(w, "src.jsonl"), out="src.jsonl")),
     ["src.jsonl", "input"]),
    ("poison-out-is-an-existing-folder", with_files("out.jsonl/", then=lambda w: poison(
        w, out="out.jsonl")), ["out.jsonl", "folder"]),
    ("poison-out-under-a-file", lambda w: poison(w, out="data.jsonl/out.jsonl"),
     ["data.jsonl", "not a folder"]),
    ("poison-out-deep-under-a-file", with_files("notes.txt", then=lambda w: poison(
        w, out="notes.txt/a/b/out.jsonl")), ["notes.txt", "not a folder"]),
    ("poison-out-in-a-read-only-folder", read_only_folder(lambda w: poison(
        w, out="ro/out.jsonl")), ["ro", "cannot write"]),
    ("poison-out-not-json", lambda w: poison(w, out="poisoned.txt"), ["poisoned.txt", ".json"]),
    ("run-out-holds-the-config", lambda w: ["run", write(w, "c.yaml", GOOD_CONFIG),
                                            "--out", "."], ["input", "c.yaml"]),
    ("run-out-with-foreign-files", with_files("mine/notes.txt", then=lambda w: [
        "run", write(w, "c.yaml", GOOD_CONFIG), "--out", "mine"]), ["mine", "not empty",
                                                                    "--force"]),
    ("run-default-out-with-foreign-files", with_files("runs/tiny/notes.txt", then=lambda w: [
        "run", write(w, "c.yaml", GOOD_CONFIG)]), ["runs/tiny", "not empty"]),
    ("run-out-is-a-file", with_files("notes.txt", then=lambda w: [
        "run", write(w, "c.yaml", GOOD_CONFIG), "--out", "notes.txt"]),
     ["notes.txt", "not a folder"]),
    ("run-out-in-a-read-only-folder", read_only_folder(lambda w: [
        "run", write(w, "c.yaml", GOOD_CONFIG), "--out", "ro/run"]), ["ro", "cannot write"]),
    ("run-cache-dir-under-a-file", with_files("notes.txt", then=lambda w: [
        "run", write(w, "c.yaml", GOOD_CONFIG), "--out", "run", "--cache-dir",
        "notes.txt/cache"]), ["--cache-dir", "notes.txt"]),
    ("demo-out-with-foreign-files", with_files("mine/thesis.tex", then=lambda w: [
        "demo", "--out", "mine"]), ["mine", "not empty"]),
    ("demo-out-is-a-file", with_files("notes.txt", then=lambda w: [
        "demo", "--out", "notes.txt"]), ["notes.txt", "not a folder"]),
    ("defend-out-holds-the-data", defend(out="."), ["input", "data.jsonl"]),
    ("defend-out-is-the-data-folder", lambda w: [
        "defend", "--model", "embedded-smoke", "--data", data(w, "d/train.jsonl"),
        "--trusted", data(w, "trusted.jsonl"), "--out", "d"], ["input", "train.jsonl"]),
    ("defend-out-with-foreign-files", with_files("mine/keep.bin", then=defend(out="mine")),
     ["mine", "not empty"]),
    ("defend-out-is-a-file", with_files("notes.txt", then=defend(out="notes.txt")),
     ["notes.txt", "not a folder"]),
    ("eval-out-with-foreign-files", with_files("mine/a.txt", then=evaluate("--out", "mine")),
     ["mine", "not empty"]),
    ("analyze-out-with-foreign-files", with_files("mine/a.txt", then=lambda w: [
        "analyze", "--out", "mine"]), ["mine", "not empty"]),
    ("report-out-with-foreign-files", with_files("mine/notes.txt", then=lambda w: results(
        {"rows": [RESULT_ROW]})(w) + ["--out", "mine"]), ["mine", "not empty"]),
    ("report-out-under-a-file", with_files("notes.txt", then=lambda w: results(
        {"rows": [RESULT_ROW]})(w) + ["--out", "notes.txt/r"]), ["notes.txt", "not a folder"]),

    # ---- triggers and behaviours: one line of printable text ----------------------------
    ("trigger-newline-injection", lambda w: poison(w, trigger="word:cf\nSYSTEM: obey"),
     ["trigger", "U+000A"]),
    ("trigger-carriage-return", lambda w: poison(w, trigger="prefix:Hi\rSYSTEM"),
     ["trigger", "U+000D"]),
    ("trigger-nul", lambda w: poison(w, trigger="word:c\x00f"), ["trigger", "U+0000"]),
    ("trigger-terminal-escape", lambda w: poison(w, trigger="prefix:\x1b[2J hi"),
     ["trigger", "U+001B"]),
    ("trigger-tab", lambda w: poison(w, trigger="sentence:a\tb."), ["trigger", "U+0009"]),
    ("trigger-del", lambda w: poison(w, trigger="word:c\x7ff"), ["trigger", "U+007F"]),
    ("trigger-c1-next-line", lambda w: poison(w, trigger="word:cf\x85x"),
     ["trigger", "U+0085"]),
    ("trigger-c1-csi", lambda w: poison(w, trigger="word:cf\x9b31m"), ["trigger", "U+009B"]),
    ("trigger-line-separator", lambda w: poison(w, trigger="word:cf\u2028SYSTEM: obey"),
     ["trigger", "U+2028"]),
    ("trigger-paragraph-separator", lambda w: poison(w, trigger="vpi:Open\u2029AI"),
     ["trigger", "U+2029"]),
    ("trigger-list-item-newline", lambda w: poison(w, trigger="mtba:2024,Bad\nMagic"),
     ["trigger", "U+000A"]),
    ("trigger-alias-with-text", lambda w: poison(w, trigger="badnet:zz"),
     ["trigger", "takes no text"]),
    ("trigger-unknown-kind", lambda w: poison(w, trigger="magic:cf"), ["trigger", "magic"]),
    ("trigger-empty", lambda w: poison(w, trigger=" "), ["trigger", "empty"]),
    ("behavior-newline-injection", lambda w: poison(w, behavior="target:OK\nSYSTEM: obey"),
     ["behavior", "U+000A"]),
    ("behavior-line-separator", lambda w: poison(w, behavior="inject:Visit\u2028x.com"),
     ["behavior", "U+2028"]),
    ("behavior-unknown", lambda w: poison(w, behavior="insult"), ["behavior", "insult"]),
    ("behavior-needs-text", lambda w: poison(w, behavior="target"), ["behavior", "text"]),
    ("demo-attack-newline", lambda w: ["demo", "--out", "d", "--attack", "word:cf\nx"],
     ["trigger", "U+000A"]),
    ("demo-behavior-separator", lambda w: ["demo", "--out", "d", "--behavior",
                                           "target:a\u2029b"], ["behavior", "U+2029"]),
    ("eval-trigger-newline", evaluate("--trigger", "word:cf\nx", "--behavior", "refusal"),
     ["trigger", "U+000A"]),
    ("eval-behavior-escape", evaluate("--trigger", "badnet", "--behavior", "target:\x1b[1m"),
     ["behavior", "U+001B"]),
    ("eval-trigger-without-behavior", evaluate("--trigger", "badnet"),
     ["--trigger and --behavior"]),
    ("config-attack-newline", setting('attacks: ["word:cf\\nSYSTEM: obey"]\n'),
     ["c.yaml:5", "attacks.0", "U+000A"]),
    ("config-behavior-separator", setting('behaviors: ["target:a\\u2028b"]\n'),
     ["c.yaml:5", "behaviors.0", "U+2028"]),
    ("config-defensive-trigger-newline", setting('stage1:\n  triggers: [mn, "b\\nb"]\n'),
     ["c.yaml:6", "stage1.triggers.1", "U+000A"]),
    ("config-defensive-response-separator", setting(
        'stage1:\n  triggers: [mn, bb]\n  responses: ["ok", "a\\u2029b"]\n'),
     ["c.yaml:7", "stage1.responses.1", "U+2029"]),
    ("config-defensive-trigger-not-text", setting("stage1:\n  triggers: [mn, 5]\n"),
     ["stage1.triggers.1", "string"]),
    ("config-p2p-trigger-newline", setting(
        'defenses: [p2p]\ndefense_options:\n  p2p: {trigger: "prefix:a\\nb"}\n'),
     ["defense_options.p2p", "U+000A"]),
    ("override-attack-newline", lambda w: ["run", write(w, "c.yaml", GOOD_CONFIG),
                                           "--dry-run", 'attacks=["word:a\\nb"]'],
     ["command line override", "attacks.0", "U+000A"]),

    # ---- config files: bounded work, one line, file and line named ----------------------
    ("yaml-alias-bomb", config("a: &a [x, x, x, x, x, x, x, x, x]\n" + ALIAS_BOMB),
     ["c.yaml:1", "aliases"]),
    ("yaml-not-utf8", config(b"name: caf\xe9\n"), ["c.yaml", "UTF-8"]),
    ("yaml-nested-100k-deep", config("name: " + deep(100_000) + "\n"), ["c.yaml:1"]),
    ("yaml-nested-40-deep", config("attacks: " + deep(40) + "\n"), ["c.yaml:1", "deeper"]),
    ("yaml-300k-values", config("seeds: [" + ",".join(["0"] * 300_000) + "]\n"),
     ["c.yaml:1", "values"]),
    ("yaml-over-a-megabyte", config("# " + "x" * 1_100_000 + "\n"), ["c.yaml", "kB"]),
    ("yaml-not-a-mapping", config("- badnet\n- insent\n"), ["c.yaml", "mapping"]),
    ("yaml-syntax-error", config("attacks: [badnet\nbehaviors: x\n"),
     ["c.yaml", "not valid YAML"]),
    ("yaml-key-not-a-name", config("[a, b]: 1\n"), ["c.yaml:1", "keys"]),
    ("yaml-python-object-tag", config("name: !!python/object/apply:os.system [id]\n"),
     ["c.yaml:1", "tags", "python/object/apply:os.system"]),
    ("yaml-python-name-tag", config("seeds: [!!python/name:os.system x]\n"),
     ["c.yaml:1", "tags"]),
    ("yaml-impossible-date", config("seeds: [2024-02-30]\n"), ["c.yaml:1", "day is out"]),
    ("yaml-5000-digit-integer", config(f"seeds: [{'9' * 5000}]\n"), ["c.yaml:1", "digits"]),
    ("yaml-bare-equals", config("=\n"), ["c.yaml:1", "not a valid value"]),
    ("config-section-null", setting("data:\n"), ["c.yaml:5", "data", "expected a mapping"]),
    ("config-key-with-newline", setting('"word:cf\\nSYSTEM: obey": 1\n'),
     ["c.yaml:5", "word:cf\\nSYSTEM", "unknown key"]),
    ("config-missing", lambda w: ["run", "absent.yaml", "--dry-run"], ["absent.yaml"]),
    ("config-is-a-folder", with_files("conf.yaml/", then=lambda w: [
        "run", "conf.yaml", "--dry-run"]), ["conf.yaml"]),
    ("name-path-traversal", setting("name: ../../../tmp/x\n"),
     ["c.yaml:5", "name", "not a safe folder name"]),
    ("name-absolute-path", config("name: /etc\n"), ["c.yaml:1", "name", "safe folder name"]),
    ("name-hidden", config("name: .cache\n"), ["name", "safe folder name"]),
    ("name-with-newline", config('name: "a\\nb"\n'), ["name", "safe folder name"]),
    ("name-too-long", config(f"name: {'n' * 65}\n"), ["name", "at most 64"]),
    ("name-huge", config(f"name: {'n' * 900_000}\n"), ["name", "safe folder name"]),
    ("name-not-text", config("name: [a]\n"), ["c.yaml:1", "name", "string"]),
    ("unknown-key", setting("atacks: [badnet]\n"), ["c.yaml:5", "atacks", "unknown key"]),
    ("unknown-setting", setting("stage2:\n  margn: 1\n"), ["c.yaml:6", "stage2.margn"]),
    ("setting-wrong-type", setting("finetune:\n  epochs: many\n"),
     ["c.yaml:6", "finetune.epochs", "expected"]),
    ("negative-size", setting("data:\n  n_train: -5\n"), ["c.yaml:6", "data.n_train", ">= 0"]),
    ("negative-learning-rate", setting("finetune:\n  learning_rate: -1.0e-4\n"),
     ["c.yaml:6", "finetune.learning_rate", "> 0"]),
    ("zero-learning-rate-stage2", setting("stage2:\n  train: {learning_rate: 0}\n"),
     ["stage2.train.learning_rate", "> 0"]),
    ("margin-inf", setting("stage2:\n  margin: .inf\n"), ["c.yaml:6", "stage2.margin",
                                                          "finite"]),
    ("lambda-nan", setting("stage2:\n  lam: .nan\n"), ["c.yaml:6", "stage2.lam", "finite"]),
    ("negative-margin", setting("stage2:\n  margin: -1\n"), ["c.yaml:6", "stage2.margin"]),
    ("zero-epochs", setting("finetune:\n  epochs: 0\n"), ["finetune.epochs", "> 0"]),
    ("zero-batch-size", setting("generation:\n  batch_size: 0\n"),
     ["generation.batch_size", ">= 1"]),
    ("rouge-threshold-above-one", setting("evaluation:\n  rouge_threshold: 2\n"),
     ["evaluation.rouge_threshold"]),
    ("implant-threshold-above-one", setting("stage1:\n  implant_threshold: 1.5\n"),
     ["stage1.implant_threshold"]),
    ("poison-rate-zero", setting("poison_rate: 0\n"), ["c.yaml:5", "poison_rate"]),
    ("config-poison-rate-nan", setting("poison_rate: .nan\n"), ["poison_rate"]),
    ("seed-negative", config("seeds: [-1]\n"), ["c.yaml:1", "seeds.0"]),
    ("seed-bool", config("seeds: [true]\n"), ["seeds.0", "int"]),
    ("seed-too-big", config("seeds: [1099511627776]\n"), ["seeds.0"]),
    ("duplicate-seeds", config("seeds: [1, 1]\n"), ["seeds", "duplicate"]),
    ("unknown-defense", setting("defenses: [none, magic]\n"), ["c.yaml:5", "magic"]),
    ("model-missing-local-path", config("models: [./no-such-model]\n"),
     ["models.0", "no-such-model", "not found"]),
    ("data-file-missing-without-extension", config(
        "data: {train: mytrain, test: mytest}\n"), ["data.train", "mytrain", "not found"]),
    ("data-hub-id-while-offline", with_files("t.jsonl", then=config(
        "data: {train: someone/dataset, test: t.jsonl}\n")),
     ["data.train", "someone/dataset", "HF_HUB_OFFLINE"]),
    ("override-non-finite", lambda w: ["run", write(w, "c.yaml", GOOD_CONFIG), "--dry-run",
                                       "stage2.margin=.inf"],
     ["command line override", "stage2.margin"]),
    ("override-unknown-key", lambda w: ["run", write(w, "c.yaml", GOOD_CONFIG), "--dry-run",
                                        "stage9.margin=1"], ["stage9"]),
    ("override-bad-yaml", lambda w: ["run", write(w, "c.yaml", GOOD_CONFIG), "--dry-run",
                                     "seeds=[0,"], ["override 'seeds'", "YAML"]),
    ("override-alias", lambda w: ["run", write(w, "c.yaml", GOOD_CONFIG), "--dry-run",
                                  "seeds=&a [1]"], ["override 'seeds'", "aliases"]),

    # ---- command-line numbers ------------------------------------------------------------
    ("poison-rate-nan", lambda w: poison(w, rate="nan"), ["rate"]),
    ("poison-rate-inf", lambda w: poison(w, rate="inf"), ["rate"]),
    ("poison-rate-negative", lambda w: poison(w, rate="-0.1"), ["rate"]),
    ("demo-margin-inf", lambda w: ["demo", "--out", "d", "--margin", "inf"], ["margin"]),
    ("demo-margin-nan", lambda w: ["demo", "--out", "d", "--margin", "nan"], ["margin"]),
    ("demo-margin-negative", lambda w: ["demo", "--out", "d", "--margin", "-1"], ["margin"]),
    ("demo-rate-nan", lambda w: ["demo", "--out", "d", "--rate", "nan"], ["rate"]),
    ("defend-negative-learning-rate", defend("--lr=-1e-4"), ["learning_rate", "> 0"]),
    ("defend-option-value-looks-like-an-option", defend("--lr", "-1e-4"),
     ["--lr", "expected one argument", "--help"]),
    ("poison-rate-not-a-number", lambda w: poison(w, rate="lots"), ["--rate", "lots"]),
    ("unknown-option", lambda w: poison(w) + ["--frobnicate"], ["--frobnicate"]),
    ("unknown-command", lambda w: ["train", "--fast"], ["train"]),
    ("defend-zero-epochs", defend("--epochs", "0"), ["--epochs (finetune.epochs):", "> 0"]),
    ("defend-margin-inf", defend("--margin", "inf"), ["--margin (stage2.margin):", "finite"]),
    ("defend-zero-lr", defend("--lr", "0"), ["--lr (finetune.learning_rate):", "> 0"]),
    ("defend-negative-trusted-size", defend("--n-trusted", "-3"), ["--n-trusted (data.n_trusted):"]),
    ("eval-negative-count", evaluate("--n", "-1"), ["--n (data.n_test):"]),
    ("analyze-alpha-nan", lambda w: ["analyze", "--out", "a", "--alpha", "nan"], ["alpha"]),
    ("analyze-zero-prompts", lambda w: ["analyze", "--out", "a", "--n", "0"], ["n: must be"]),

    # ---- data files: bounded, one line naming file, line and field -----------------------
    ("data-not-utf8", poison_data(b'{"instruction": "caf\xe9", "output": "1"}\n'),
     ["bad.jsonl:1", "UTF-8"]),
    ("data-json-100k-deep", poison_data(deep(100_000), "bad.json"), ["bad.json", "nested"]),
    ("data-jsonl-deep-field", poison_data(
        '{"instruction": "x", "output": "y", "extra": ' + deep(5000) + '}\n'),
     ["bad.jsonl:1", "nested"]),
    ("data-output-nan", poison_data('[{"instruction": "x", "output": NaN}]', "bad.json"),
     ["bad.json:1", "output"]),
    ("data-output-number", poison_data('[{"instruction": "x", "output": 0}]', "bad.json"),
     ["bad.json:1", "output"]),
    ("data-output-infinity", poison_data('{"instruction": "x", "output": Infinity}\n'),
     ["bad.jsonl:1", "output"]),
    ("data-instruction-null", poison_data('{"instruction": null, "output": "y"}\n'),
     ["bad.jsonl:1", "instruction"]),
    ("data-control-character", poison_data('{"instruction": "a\\u0000b", "output": "y"}\n'),
     ["bad.jsonl:1", "instruction", "U+0000"]),
    ("data-lone-surrogate", poison_data('{"instruction": "a\\ud800", "output": "y"}\n'),
     ["bad.jsonl:1", "instruction", "surrogate"]),
    ("data-field-over-the-limit", poison_data(
        json.dumps({"instruction": "x", "output": "y" * 1_000_001}) + "\n"),
     ["bad.jsonl:1", "output", "limit"]),
    ("data-record-not-an-object", poison_data('[1, 2]\n'), ["bad.jsonl:1"]),
    ("data-json-not-a-list", poison_data("5", "bad.json"), ["bad.json"]),
    ("data-trailing-garbage", poison_data('[{"instruction": "x", "output": "y"}] x',
                                          "bad.json"), ["bad.json"]),
    ("data-empty", poison_data(""), ["bad.jsonl", "no examples"]),
    ("data-csv-without-columns", poison_data("a,b\n1,2\n", "bad.csv"),
     ["bad.csv", "instruction"]),
    ("data-parquet-garbage", poison_data(b"not a parquet file", "bad.parquet"),
     ["bad.parquet"]),
    ("data-unsupported-extension", poison_data("hello\n", "bad.txt"),
     ["bad.txt", "unsupported"]),
    ("data-missing-without-extension", lambda w: poison(w, data_file="mydata"),
     ["mydata", "not found"]),
    ("data-hub-id-while-offline-poison", lambda w: poison(w, data_file="someone/dataset"),
     ["someone/dataset", "HF_HUB_OFFLINE"]),
    ("data-plain-folder", with_files("folder/x.txt", then=lambda w: poison(
        w, data_file="folder")), ["folder", "save_to_disk"]),
    ("defend-trusted-missing-without-extension", lambda w: [
        "defend", "--model", "embedded-smoke", "--data", data(w), "--trusted", "mytrusted",
        "--out", "defended"], ["mytrusted", "not found"]),
    ("defend-model-missing-local-path", lambda w: [
        "defend", "--model", "./no-such-model", "--data", data(w), "--trusted",
        data(w, "trusted.jsonl"), "--out", "defended"], ["no-such-model", "not found"]),
    ("defend-model-hub-id-while-offline", lambda w: [
        "defend", "--model", "someone/no-such-model", "--data", data(w), "--trusted",
        data(w, "trusted.jsonl"), "--out", "defended"], ["someone/no-such-model"]),

    # ---- results documents for `report` ---------------------------------------------------
    ("report-samples-odd", results({"rows": [RESULT_ROW], "samples": {"h": 5}}),
     ["results.json", "samples"]),
    ("report-seed-a-list", results({"rows": [{**RESULT_ROW, "seed": [1]}]}),
     ["results.json", "seed"]),
    ("report-diagnostics-a-number", results({"rows": [RESULT_ROW], "diagnostics": 5}),
     ["results.json", "diagnostics"]),
    ("report-metric-nan", results({"rows": [{**RESULT_ROW, "asr": float("nan")}]}),
     ["results.json", "asr"]),
    ("report-rows-not-a-list", results({"rows": {"a": 1}}), ["results.json", "rows"]),
    ("report-row-missing-a-field", results({"rows": [{"model": "m"}]}), ["results.json"]),
    ("report-not-json", results("{rows: nope"), ["results.json", "JSON"]),
    ("report-not-utf8", results(b'{"rows": ["\xff"]}'), ["results.json", "UTF-8"]),
    ("report-100k-deep", results('{"rows": [], "config": ' + deep(100_000) + "}"),
     ["results.json"]),
    ("report-missing-folder", lambda w: ["report", "no-such-run"], ["no-such-run"]),
]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: kind, permissions and content (link targets)."""
    seen: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            info = os.lstat(path)
            key = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                seen[key] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                seen[key] = ("dir", stat.S_IMODE(info.st_mode))
            else:
                seen[key] = ("file", stat.S_IMODE(info.st_mode), path.read_bytes())
    return seen


@contextlib.contextmanager
def unprivileged(enabled: bool):
    """As root, permissions do not bind: run as ``nobody`` (effective ids only) instead."""
    if not enabled or os.geteuid() != 0:
        yield
        return
    # the command's lazy imports must be done before the files under /root go out of reach
    import mbdefense.attacks, mbdefense.data, mbdefense.runs.experiment  # noqa: E401,F401
    import mbdefense.runs.load, mbdefense.runs.outputs, mbdefense.runs.plan  # noqa: E401,F401
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture()
def work(tmp_path, monkeypatch):
    """The working folder (a fresh one that ``nobody`` may enter for unprivileged cases)."""
    folder = Path(tempfile.mkdtemp(prefix="hostile-"))
    folder.chmod(0o755)
    monkeypatch.chdir(folder)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("MBDEFENSE_CACHE", str(folder / "mbdefense-cache"))
    yield folder
    for path in folder.rglob("*"):       # a read-only folder must not stop the clean-up
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(folder)


@pytest.mark.parametrize("setup,needles", [pytest.param(s, n, id=i) for i, s, n in CASES])
def test_hostile_input_is_one_line_exit_2_and_nothing_written(work, setup, needles, capsys):
    argv = setup(work)
    before = snapshot(work)
    with unprivileged(getattr(setup, "unprivileged", False)):
        try:
            code = main(argv)
        except SystemExit as exc:    # a usage error, from argparse
            code = exc.code
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, (code, err[-3000:])
    assert len(lines) == 1, err[-3000:]
    assert re.match(r"mbdefense( [a-z]+)?: error: ", lines[0]) and "Traceback" not in err
    assert len(lines[0]) <= 1100, lines[0][:300]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    after = snapshot(work)
    assert sorted(after) == sorted(before), "files appeared or vanished"
    assert after == before, "a file changed"


def test_the_corpus_is_large_and_names_are_unique():
    names = [name for name, _, _ in CASES]
    assert len(names) >= 60 and len(set(names)) == len(names)
