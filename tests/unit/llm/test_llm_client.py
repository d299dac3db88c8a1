"""The shared text clients: identity, protocol, retries details, the local HF client, and the
package's place in the layers (it imports only mbdefense.core)."""

from __future__ import annotations

import ast
import subprocess
import sys
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from fake_openai import FakeServer, Reply, completion
from mbdefense.core.errors import ConfigError, MBDefenseError
from mbdefense.llm import (HFLocalClient, LLMError, OpenAICompatibleClient, TextClient,
                           client_identity)

LLM_PACKAGE = Path(__file__).resolve().parents[3] / "src" / "mbdefense" / "llm"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as fake:
        fake.script = lambda i, p: completion("a reply")
        yield fake


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def test_identity_names_backend_model_and_endpoint(server: FakeServer) -> None:
    c = OpenAICompatibleClient("gpt-4o-2024-08-06", server.base_url + "/", label="judge")
    assert c.identity == f"openai-compatible:gpt-4o-2024-08-06@{server.base_url}"
    assert client_identity(c) == c.identity
    assert isinstance(c, TextClient)

    class Bare:
        def complete(self, prompt: str) -> str:
            return prompt

    assert client_identity(Bare()).endswith("Bare") and isinstance(Bare(), TextClient)


def test_payload_and_label(server: FakeServer) -> None:
    c = OpenAICompatibleClient("m", server.base_url, temperature=0.7, max_tokens=64,
                               label="paraphraser")
    assert c.complete("rewrite this") == "a reply"
    payload = server.seen[0].payload
    assert payload == {"model": "m", "messages": [{"role": "user", "content": "rewrite this"}],
                       "temperature": 0.7, "max_tokens": 64}
    server.script = lambda i, p: Reply(status=404, body=b"no such route")
    with pytest.raises(LLMError) as info:
        c.complete("x")
    assert str(info.value).startswith("paraphraser: ") and isinstance(info.value, MBDefenseError)
    assert info.value.status == 404 and info.value.url == f"{server.base_url}/chat/completions"


def test_retry_after_as_an_http_date(server: FakeServer) -> None:
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    server.script = lambda i, p: (Reply(status=503, headers={"Retry-After": when}) if i == 0
                                  else completion("ok"))
    sleeps = Sleeps()
    c = OpenAICompatibleClient("m", server.base_url, backoff=0.1, sleep=sleeps)
    assert c.complete("x") == "ok"
    assert len(sleeps) == 1 and 25.0 <= sleeps[0] <= 30.0


@pytest.mark.parametrize("value, expected", [("1000", 60.0), ("-5", 0.25), ("soon", 0.25),
                                             ("nan", 0.25)])
def test_retry_after_is_bounded(server: FakeServer, value: str, expected: float) -> None:
    server.script = lambda i, p: (Reply(status=429, headers={"Retry-After": value}) if i == 0
                                  else completion("ok"))
    sleeps = Sleeps()
    OpenAICompatibleClient("m", server.base_url, backoff=0.25, sleep=sleeps).complete("x")
    assert sleeps == [expected]


@pytest.mark.parametrize("kw, match", [
    ({"base_url": "ftp://host/v1"}, "http:// or https://"),
    ({"base_url": "http:///v1"}, "no host"),
    ({"base_url": "http://host:port/v1"}, "invalid port"),
    ({"model": " "}, "model name"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": float("inf")}, "timeout"),
    ({"max_retries": -1}, "max_retries"),
    ({"temperature": 2.5}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
])
def test_client_settings_are_checked(kw: dict[str, Any], match: str) -> None:
    args = {"model": "m", "base_url": "https://api.example/v1", **kw}
    with pytest.raises(ConfigError, match=match):
        OpenAICompatibleClient(**args)


# --------------------------------------------------------------------------- local HF client


class _FakeTokenizer:
    chat_template = "{{ messages }}"
    pad_token_id = None
    eos_token_id = 0

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return f"<user>{messages[0]['content']}<assistant>"

    def __call__(self, text, add_special_tokens, return_tensors):
        import torch

        ids = torch.tensor([[1, 2, 3]])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def decode(self, ids, skip_special_tokens):
        return " " + " ".join(str(int(i)) for i in ids) + " "


class _FakeModel:
    name_or_path = "tiny/judge"

    def __init__(self) -> None:
        import torch

        self.weight = torch.zeros(1)
        self.calls: list[dict[str, Any]] = []

    def parameters(self):
        return iter([self.weight])

    def generate(self, input_ids, **kw):
        import torch

        self.calls.append(kw)
        return torch.cat([input_ids, torch.tensor([[7, 8]])], dim=1)


def test_hf_local_client_generates_greedily_from_the_chat_template() -> None:
    pytest.importorskip("torch")
    model = _FakeModel()
    c = HFLocalClient(model, _FakeTokenizer(), max_new_tokens=5, label="paraphraser")
    assert c.identity == "hf:tiny/judge" and isinstance(c, TextClient)
    assert c.complete("hello") == "7 8"
    assert model.calls[0]["do_sample"] is False and model.calls[0]["max_new_tokens"] == 5
    assert model.calls[0]["pad_token_id"] == 0


def test_hf_local_client_checks_its_inputs() -> None:
    with pytest.raises(ConfigError, match="tokenizer"):
        HFLocalClient(_FakeModel())
    tokenizer = _FakeTokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="chat template"):
        HFLocalClient(_FakeModel(), tokenizer)


# --------------------------------------------------------------------------- layering


def _module_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:  # module level only, not inside functions
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_llm_package_imports_only_core_at_module_level() -> None:
    files = sorted(LLM_PACKAGE.glob("*.py"))
    assert files
    for path in files:
        ours = {n for n in _module_level_imports(path) if n.startswith("mbdefense")}
        assert all(n.startswith(("mbdefense.core", "mbdefense.llm")) for n in ours), (path, ours)


def test_judge_and_paraphraser_do_not_import_each_other() -> None:
    code = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m.startswith('mbdefense')))")

    def loaded(module: str) -> str:
        return subprocess.run([sys.executable, "-c", code, module], check=True,
                              capture_output=True, text=True).stdout

    assert "mbdefense.evaluation" not in loaded("mbdefense.attacks.rewriting")
    assert "mbdefense.attacks" not in loaded("mbdefense.evaluation.judge")
    llm_only = loaded("mbdefense.llm")
    assert "mbdefense.modeling" not in llm_only and "mbdefense.evaluation" not in llm_only
