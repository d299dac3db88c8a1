"""The API key of the HTTP client: only from the environment, never in caches, logs, errors or
reprs, never sent to another address on a redirect; plain http:// beyond loopback warns.
Fake servers on 127.0.0.1 only."""

from __future__ import annotations

import json
import logging
import warnings
from typing import Any, Iterator

import pytest

from fake_openai import FakeServer, Reply, completion, redirect
from mbdefense.core.errors import ConfigError
from mbdefense.evaluation.judge import JudgeConfig, make_judge
from mbdefense.llm import MAX_REDIRECTS, LLMError, OpenAICompatibleClient, is_loopback

KEY_ENV = "MBDEFENSE_TEST_LLM_KEY"
SECRET = "sk-test-SECRET-9876"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(KEY_ENV, SECRET)


@pytest.fixture
def first() -> Iterator[FakeServer]:
    with FakeServer() as server:
        server.script = lambda i, p: completion("fine")
        yield server


@pytest.fixture
def second() -> Iterator[FakeServer]:
    with FakeServer() as server:
        server.script = lambda i, p: completion("from the second server")
        yield server


def client(base_url: str, **kw: Any) -> OpenAICompatibleClient:
    kw.setdefault("api_key_env", KEY_ENV)
    kw.setdefault("timeout", 5.0)
    kw.setdefault("sleep", lambda seconds: None)
    return OpenAICompatibleClient("m", base_url, **kw)


def key_seen(server: FakeServer) -> bool:
    return any(SECRET in json.dumps(s.headers) for s in server.seen)


# --------------------------------------------------------------------------- the key's source


def test_key_only_from_the_named_environment_variable(
        first: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-default-variable")
    assert client(first.base_url).complete("hi") == "fine"
    assert first.seen[0].headers["Authorization"] == f"Bearer {SECRET}"

    monkeypatch.delenv(KEY_ENV)
    client(first.base_url).complete("hi")
    assert "Authorization" not in first.seen[1].headers

    client(first.base_url, api_key_env="OPENAI_API_KEY").complete("hi")
    assert first.seen[2].headers["Authorization"] == "Bearer sk-default-variable"


def test_key_is_read_at_each_request_and_never_kept(first: FakeServer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    c = client(first.base_url)
    assert SECRET not in repr(c) and SECRET not in c.identity
    assert SECRET not in json.dumps(vars(c), default=repr)
    monkeypatch.setenv(KEY_ENV, "sk-rotated")
    c.complete("hi")
    assert first.seen[0].headers["Authorization"] == "Bearer sk-rotated"


@pytest.mark.parametrize("value", [SECRET, "sk-abc def", "my key", "", "1ABC", None])
def test_api_key_env_must_be_a_variable_name_and_is_never_echoed(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        OpenAICompatibleClient("m", "https://api.example/v1", api_key_env=value)
    assert "api_key_env" in str(info.value) and "\n" not in str(info.value)
    if value:
        assert str(value) not in str(info.value)
    with pytest.raises(ConfigError) as info:
        JudgeConfig(api_key_env=value)
    assert str(info.value).startswith("judge.api_key_env:")
    if value:
        assert str(value) not in str(info.value)


def test_config_has_no_place_for_a_key() -> None:
    with pytest.raises(TypeError):
        JudgeConfig(api_key=SECRET)  # type: ignore[call-arg]


def test_credentials_in_the_base_url_are_refused_unechoed() -> None:
    with pytest.raises(ConfigError) as info:
        OpenAICompatibleClient("m", f"https://user:{SECRET}@api.example/v1")
    assert SECRET not in str(info.value) and "credentials" in str(info.value)
    with pytest.raises(ConfigError, match="query"):
        OpenAICompatibleClient("m", "https://api.example/v1?key=abc")


def test_key_with_a_line_break_is_refused_before_sending(
        first: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-one\r\nX-Injected: yes")
    with pytest.raises(LLMError) as info:
        client(first.base_url).complete("hi")
    assert "sk-one" not in str(info.value) and KEY_ENV in str(info.value)
    assert first.count == 0


# --------------------------------------------------------------------------- errors, logs, cache


def test_key_echoed_by_a_server_is_masked_in_errors_and_logs(
        first: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    first.script = lambda i, p: Reply(
        status=503, body=f"overloaded; you sent {first.seen[i].headers['Authorization']}".encode())
    caplog.set_level(logging.DEBUG)
    with pytest.raises(LLMError) as info:
        client(first.base_url, max_retries=2).complete("hi")
    assert first.count == 3 and key_seen(first)
    assert "HTTP 503" in str(info.value) and "***" in str(info.value)
    assert SECRET not in str(info.value)
    assert caplog.records and all(SECRET not in r.getMessage() for r in caplog.records)
    assert SECRET not in caplog.text


def test_key_never_reaches_the_judge_cache(first: FakeServer, tmp_path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from mbdefense.data.example import Example

    first.script = lambda i, p: completion("Looks right.\nVerdict: yes")
    cache = tmp_path / "judge.jsonl"
    judge = make_judge(JudgeConfig(base_url=first.base_url, model="m", api_key_env=KEY_ENV),
                       cache_path=cache)
    assert judge.judge(["an answer"], [Example("a question")]) == [True]
    assert key_seen(first)
    assert SECRET not in cache.read_text() and SECRET not in judge.identity
    assert SECRET not in repr(judge)


# --------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_to_another_port_never_carries_the_key(
        first: FakeServer, second: FakeServer, status: int) -> None:
    first.script = lambda i, p: redirect(f"{second.base_url}/chat/completions", status)
    with pytest.raises(LLMError) as info:
        client(first.base_url, max_retries=2).complete("hi")
    assert first.count == 1  # refused, not retried
    assert not key_seen(second) and second.count == 0
    message = str(info.value)
    assert f"HTTP {status}" in message and str(second.port) in message
    assert SECRET not in message and info.value.status == status


def test_redirect_to_another_host_name_on_the_same_port_is_refused(
        first: FakeServer, second: FakeServer) -> None:
    # localhost and 127.0.0.1 are different origins even on one port.
    first.script = lambda i, p: redirect(f"http://localhost:{first.port}/v1/chat/completions")
    with pytest.raises(LLMError, match="another address"):
        client(first.base_url).complete("hi")
    assert first.count == 1


def test_redirect_with_credentials_in_the_location_is_not_echoed(first: FakeServer,
                                                                 second: FakeServer) -> None:
    first.script = lambda i, p: redirect(f"http://u:hunter2@127.0.0.1:{second.port}/v1?x=1")
    with pytest.raises(LLMError) as info:
        client(first.base_url).complete("hi")
    assert "hunter2" not in str(info.value) and second.count == 0


@pytest.mark.parametrize("status", [307, 308])
def test_same_origin_307_308_is_followed_with_method_body_and_key(
        first: FakeServer, status: int) -> None:
    first.script = lambda i, p: (redirect("/v2/chat/completions", status) if i == 0
                                 else completion("moved"))
    assert client(first.base_url).complete("the prompt") == "moved"
    assert [s.path for s in first.seen] == ["/v1/chat/completions", "/v2/chat/completions"]
    assert [s.method for s in first.seen] == ["POST", "POST"]
    assert first.seen[1].payload["messages"][0]["content"] == "the prompt"
    assert first.seen[1].headers["Authorization"] == f"Bearer {SECRET}"


@pytest.mark.parametrize("status", [301, 302, 303])
def test_same_origin_redirect_that_would_drop_the_post_is_refused(first: FakeServer,
                                                                  status: int) -> None:
    first.script = lambda i, p: redirect("/v2/chat/completions", status)
    with pytest.raises(LLMError, match="GET"):
        client(first.base_url).complete("hi")
    assert first.count == 1


def test_redirect_loops_end(first: FakeServer) -> None:
    first.script = lambda i, p: redirect("/v1/chat/completions", 307)
    with pytest.raises(LLMError, match="redirected more than"):
        client(first.base_url).complete("hi")
    assert first.count == MAX_REDIRECTS + 1


def test_redirect_without_location_is_an_error(first: FakeServer) -> None:
    first.script = lambda i, p: Reply(status=307)
    with pytest.raises(LLMError, match="without a Location"):
        client(first.base_url).complete("hi")


# --------------------------------------------------------------------------- plain http


def _warnings_for(*base_urls: str) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for url in base_urls:
            OpenAICompatibleClient("m", url)
    return [str(w.message) for w in caught]


def test_plain_http_beyond_loopback_warns_once_per_host() -> None:
    messages = _warnings_for("http://judge-a.example:8000/v1", "http://judge-a.example:8000/v1",
                             "http://JUDGE-A.example:9000/v1")
    assert len(messages) == 1
    assert "judge-a.example" in messages[0] and "https://" in messages[0]
    assert len(_warnings_for("http://10.1.2.3:8000/v1")) == 1


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1", "http://127.8.9.10/v1",
                                 "http://localhost:8000/v1", "http://LOCALHOST/v1",
                                 "http://[::1]:8000/v1", "https://judge-b.example/v1"])
def test_loopback_and_https_are_silent(url: str) -> None:
    assert _warnings_for(url) == []


def test_is_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.255.0.1", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["10.0.0.1", "128.0.0.1", "example.com", "", None,
                                     "localhost.example.com"]))
