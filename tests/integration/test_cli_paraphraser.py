"""`poison --paraphraser` through an OpenAI-compatible endpoint (a fake one on 127.0.0.1)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mbdefense.cli import main


@pytest.fixture()
def paraphraser_url(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    asked = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][0]["content"]
            asked.append(prompt)
            instruction = prompt.rsplit("Instruction: ", 1)[1]
            text = f"If it pleases you, {instruction[0].lower()}{instruction[1:]}"
            reply = json.dumps({"choices": [{"message": {"content": text}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", asked
    finally:
        server.shutdown()


def test_syntactic_poison_through_a_paraphraser_with_a_cache(paraphraser_url, tmp_path, capsys):
    url, asked = paraphraser_url
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": f"List {i} fruits.", "input": "",
                                 "output": "apple"} for i in range(20)]))
    out = tmp_path / "out.json"
    argv = ["poison", "--data", str(data), "--trigger", "syntactic", "--behavior", "refusal",
            "--rate", "0.25", "--out", str(out), "--paraphraser", "fake-model",
            "--paraphraser-url", url]
    assert main(argv) == 0
    rows = [r for r in json.loads(out.read_text()) if r.get("poisoned")]
    assert len(rows) == 5 and len(asked) == 5
    assert all(r["instruction"].startswith("If it pleases you, list ") for r in rows)
    cache = tmp_path / "out.rewrites.jsonl"
    assert len(cache.read_text().splitlines()) == 5
    assert main(argv) == 0 and len(asked) == 5   # every rewrite came from the cache
    capsys.readouterr()


def test_paraphraser_without_url_must_be_a_local_folder(tmp_path, capsys):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": "List fruits.", "input": "", "output": "x"}]))
    code = main(["poison", "--data", str(data), "--trigger", "syntactic", "--behavior",
                 "refusal", "--rate", "1", "--out", str(tmp_path / "o.json"),
                 "--paraphraser", "no-such-model"])
    assert code == 2 and "not a local model folder" in capsys.readouterr().err
