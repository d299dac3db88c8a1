"""The paraphraser on the shared clients: style registry names, the client it builds, its cache
keyed by the client's identity, and the key rules through it. Fake servers on 127.0.0.1."""

from __future__ import annotations

import random
from typing import Iterator

import pytest

from fake_openai import FakeServer, completion, redirect
from mbdefense.attacks.rewriting import (STYLE_ALIASES, STYLES, ParaphraserRewriter,
                                         paraphraser_rewriter, style_named)
from mbdefense.core.errors import ConfigError
from mbdefense.core.registry import Registry
from mbdefense.llm import LLMError, OpenAICompatibleClient

KEY_ENV = "MBDEFENSE_TEST_PARAPHRASER_KEY"
SECRET = "sk-test-PARA-5555"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(KEY_ENV, SECRET)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as fake:
        fake.script = lambda i, p: completion("When you are ready, list three fruits.")
        yield fake


def test_styles_are_a_registry_with_aliases_and_did_you_mean() -> None:
    assert isinstance(STYLES, Registry) and list(STYLES) == ["biblical", "shakespeare", "tweet"]
    assert STYLE_ALIASES == {"bible": "biblical", "shakespearean": "shakespeare",
                             "twitter": "tweet"}
    assert style_named(" Bible ") == "biblical" and style_named("TWEET") == "tweet"
    assert STYLES["twitter"] is STYLES["tweet"]
    with pytest.raises(ConfigError) as info:
        style_named("shakespear")
    assert "unknown style 'shakespear'" in str(info.value)
    assert "did you mean 'shakespeare'?" in str(info.value)


def test_paraphraser_rewriter_builds_an_http_client(server: FakeServer, tmp_path) -> None:
    rewriter = paraphraser_rewriter("para-model", server.base_url, tmp_path / "r.jsonl",
                                    api_key_env=KEY_ENV)
    assert isinstance(rewriter.client, OpenAICompatibleClient)
    assert rewriter.identity == f"openai-compatible:para-model@{server.base_url}"
    out = rewriter.rewrite("List three fruits.", "syntactic", random.Random(0))
    assert out == "When you are ready, list three fruits."
    assert server.seen[0].payload["temperature"] == 0.7
    assert server.seen[0].headers["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in (tmp_path / "r.jsonl").read_text()
    # another client identity does not reuse the rewrites
    other = ParaphraserRewriter(OpenAICompatibleClient("other", server.base_url),
                                tmp_path / "r.jsonl")
    other.rewrite("List three fruits.", "syntactic", random.Random(0))
    assert server.count == 2


def test_paraphraser_refuses_a_redirect_elsewhere(server: FakeServer) -> None:
    with FakeServer() as elsewhere:
        server.script = lambda i, p: redirect(f"{elsewhere.base_url}/chat/completions", 302)
        rewriter = paraphraser_rewriter("para-model", server.base_url, api_key_env=KEY_ENV)
        with pytest.raises(LLMError) as info:
            rewriter.rewrite("List three fruits.", "style:tweet", random.Random(0))
        assert str(info.value).startswith("paraphraser: ") and SECRET not in str(info.value)
        assert elsewhere.count == 0
