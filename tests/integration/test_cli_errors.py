"""Bad input: a one-line error naming file, line and field; non-zero exit; nothing written."""

import json

import pytest

from mbdefense.cli import main


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def good_rows(n=10):
    return [{"instruction": f"What is {i} plus 1?", "input": "", "output": str(i + 1)}
            for i in range(n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def good_file(tmp_path):
    return write_jsonl(tmp_path / "good.jsonl", good_rows())


def poison_args(data, out, **over):
    args = {"--data": str(data), "--trigger": "badnet", "--behavior": "refusal", "--rate": "0.2",
            "--seed": "0", "--out": str(out)}
    args.update(over)
    return ["poison"] + [x for kv in args.items() for x in kv]


def assert_one_line_error(code, err, *needles):
    assert code != 0
    lines = [l for l in err.strip().splitlines() if l]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_poison_writes_tagged_output(good_file, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    code, stdout, _ = run(poison_args(good_file, out), capsys)
    assert code == 0
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == 10 and sum(bool(r.get("poisoned")) for r in rows) == 2
    assert "poisoned 2 of 10" in stdout


def test_malformed_json_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(good_rows(1)[0]) + "\n" + '{"instruction": "x", "output": \n')
    out = tmp_path / "out.jsonl"
    code, _, err = run(poison_args(bad, out), capsys)
    assert_one_line_error(code, err, "bad.jsonl", ":2")
    assert not out.exists()


@pytest.mark.parametrize("record,field", [
    ({"input": "", "output": "1"}, "instruction"),
    ({"instruction": "x", "input": ""}, "output"),
    ({"instruction": ["x"], "output": "1"}, "instruction"),
    ({"instruction": "x", "input": 3, "output": "1"}, "input"),
])
def test_missing_or_non_string_field(tmp_path, capsys, record, field):
    bad = write_jsonl(tmp_path / "bad.jsonl", good_rows(3) + [record])
    out = tmp_path / "out.jsonl"
    code, _, err = run(poison_args(bad, out), capsys)
    assert_one_line_error(code, err, "bad.jsonl", ":4", field)
    assert not out.exists()


def test_empty_file(tmp_path, capsys):
    bad = tmp_path / "empty.jsonl"
    bad.write_text("")
    out = tmp_path / "out.jsonl"
    code, _, err = run(poison_args(bad, out), capsys)
    assert_one_line_error(code, err, "empty.jsonl")
    assert not out.exists()


def test_non_utf8_file(tmp_path, capsys):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"instruction": "ok", "output": "1"}\n{"instruction": "caf\xe9", "output": "1"}\n')
    out = tmp_path / "out.jsonl"
    code, _, err = run(poison_args(bad, out), capsys)
    assert_one_line_error(code, err, "latin1.jsonl", ":2", "UTF-8")
    assert not out.exists()


@pytest.mark.parametrize("flag,value,needle", [
    ("--trigger", "magic:cf", "trigger"), ("--behavior", "insult", "behavior"),
    ("--rate", "1.5", "rate"), ("--rate", "-0.1", "rate"),
])
def test_bad_names_and_rates(good_file, tmp_path, capsys, flag, value, needle):
    out = tmp_path / "out.jsonl"
    code, _, err = run(poison_args(good_file, out, **{flag: value}), capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


@pytest.mark.parametrize("flag,value,needle", [
    ("--attack", "nope:x", "trigger"), ("--behavior", "insult", "behavior"),
    ("--rate", "1.5", "poison_rate"), ("--defenses", "none,bogus", "bogus"),
    ("--attack", "style:haiku", "unknown style"), ("--behavior", "jailbreak", "--source"),
])
def test_demo_rejects_bad_input_before_any_work(tmp_path, monkeypatch, capsys, flag, value, needle):
    monkeypatch.setenv("MBDEFENSE_CACHE", str(tmp_path / "cache"))
    code, _, err = run(["demo", "--out", str(tmp_path / "d"), flag, value], capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "d").exists()
    assert not (tmp_path / "cache").exists()   # no base model was built


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("vllm") is not None,
                    reason="vllm is installed")
def test_demo_with_vllm_absent_says_so_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MBDEFENSE_CACHE", str(tmp_path / "cache"))
    code, _, err = run(["demo", "--out", str(tmp_path / "d"), "--generator", "vllm"], capsys)
    assert_one_line_error(code, err, "pip install vllm")
    assert not (tmp_path / "d").exists() and not (tmp_path / "cache").exists()


def test_missing_file(tmp_path, capsys):
    code, _, err = run(poison_args(tmp_path / "absent.jsonl", tmp_path / "o.jsonl"), capsys)
    assert_one_line_error(code, err, "absent.jsonl")
