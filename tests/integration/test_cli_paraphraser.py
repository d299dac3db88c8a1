"""`poison --paraphraser` through an OpenAI-compatible endpoint (a fake one on 127.0.0.1)."""

import json

import pytest

from fake_openai import FakeServer, completion
from mbdefense.cli import main


def _paraphrase(index, payload):
    instruction = payload["messages"][0]["content"].rsplit("Instruction: ", 1)[1]
    return completion(f"If it pleases you, {instruction[0].lower()}{instruction[1:]}")


@pytest.fixture()
def paraphraser_url(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = FakeServer()
    server.script = _paraphrase
    server.start()
    try:
        yield server.base_url, server
    finally:
        server.stop()


def test_syntactic_poison_through_a_paraphraser_with_a_cache(paraphraser_url, tmp_path, capsys):
    url, server = paraphraser_url
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": f"List {i} fruits.", "input": "",
                                 "output": "apple"} for i in range(20)]))
    out = tmp_path / "out.json"
    argv = ["poison", "--data", str(data), "--trigger", "syntactic", "--behavior", "refusal",
            "--rate", "0.25", "--out", str(out), "--paraphraser", "fake-model",
            "--paraphraser-url", url]
    assert main(argv) == 0
    rows = [r for r in json.loads(out.read_text()) if r.get("poisoned")]
    assert len(rows) == 5 and server.count == 5
    assert all(r["instruction"].startswith("If it pleases you, list ") for r in rows)
    cache = tmp_path / "out.rewrites.jsonl"
    assert len(cache.read_text().splitlines()) == 5
    assert main(argv) == 0 and server.count == 5   # every rewrite came from the cache
    capsys.readouterr()


def test_paraphraser_without_url_must_be_a_local_folder(tmp_path, capsys):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": "List fruits.", "input": "", "output": "x"}]))
    code = main(["poison", "--data", str(data), "--trigger", "syntactic", "--behavior",
                 "refusal", "--rate", "1", "--out", str(tmp_path / "o.json"),
                 "--paraphraser", "no-such-model"])
    assert code == 2 and "not a local model folder" in capsys.readouterr().err


def test_paraphraser_key_comes_from_the_environment_and_is_never_written(
        paraphraser_url, tmp_path, capsys, monkeypatch):
    url, server = paraphraser_url
    secret = "sk-test-PARAPHRASER-1234"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": f"Name {i} colours.", "input": "",
                                 "output": "red"} for i in range(4)]))
    out = tmp_path / "out.json"
    assert main(["poison", "--data", str(data), "--trigger", "style:biblical", "--behavior",
                 "refusal", "--rate", "0.5", "--out", str(out), "--paraphraser", "fake-model",
                 "--paraphraser-url", url]) == 0
    assert server.count == 2
    assert all(s.headers.get("Authorization") == f"Bearer {secret}" for s in server.seen)
    assert "biblical style" in server.seen[0].payload["messages"][0]["content"]
    captured = capsys.readouterr()
    for text in (out.read_text(), (tmp_path / "out.rewrites.jsonl").read_text(),
                 captured.out, captured.err):
        assert secret not in text
