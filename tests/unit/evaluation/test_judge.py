"""The LLM judge against a scripted fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any, Iterator

import pytest

from fake_openai import FakeServer, Reply, completion
from mbdefense.data.example import Example
from mbdefense.core.errors import ConfigError, MBDefenseError
from mbdefense.core.registry import Registry
from mbdefense.evaluation import judge as judge_module
from mbdefense.evaluation.judge import (
    BASE_URL_ENV, MODEL_ENV, JudgeConfig, JudgeError, LLMJudge, judge_from_config, make_judge,
    parse_verdict,
)
from mbdefense.evaluation.judge_prompts import (DEFAULT_CRITERION, JUDGE_CRITERIA,
                                                build_judge_prompt)
from mbdefense.evaluation.scorers import Scorer
from mbdefense.llm import LLMError, OpenAICompatibleClient, TextClient

KEY_ENV = "MBDEFENSE_TEST_JUDGE_KEY"
SECRET = "sk-test-SECRET-4242"


# --------------------------------------------------------------------------- fake server
# (the server itself is tests/fake_openai.py)

_RESPONSE = re.compile(r"\[Response\]\n<<<\n(.*?)\n>>>", re.DOTALL)


def response_in(seen_payload: Any) -> str:
    """The answer being judged, read back out of the judge prompt."""
    prompt = seen_payload["messages"][0]["content"]
    match = _RESPONSE.search(prompt)
    assert match, prompt
    return match.group(1)


def by_answer(index: int, payload: Any) -> Reply:
    """Default script: 'yes' when the judged answer contains 'good'."""
    verdict = "yes" if "good" in response_in(payload) else "no"
    return completion(f"The answer was checked.\nVerdict: {verdict}")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(MODEL_ENV, raising=False)
    monkeypatch.delenv(BASE_URL_ENV, raising=False)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    fake.script = by_answer
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


class Sleeps(list):
    """An injectable ``sleep`` that records and does not wait."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def backend(server: FakeServer, **kw: Any) -> OpenAICompatibleClient:
    kw.setdefault("api_key_env", KEY_ENV)
    kw.setdefault("timeout", 5.0)
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("label", "judge")
    return OpenAICompatibleClient("judge-model", server.base_url, **kw)


def examples(n: int) -> list[Example]:
    return [Example(f"Instruction {i}", output=f"reference {i}") for i in range(n)]


# --------------------------------------------------------------------------- good answers


def test_verdicts_map_and_keep_order_under_concurrency(server: FakeServer) -> None:
    answers = [f"answer {i} {'good' if i % 3 == 0 else 'bad'}" for i in range(10)]

    def slow_first(index: int, payload: Any) -> Reply:
        reply = by_answer(index, payload)
        reply.delay = max(0.0, 0.12 - 0.03 * index)  # early requests finish last
        return reply

    server.script = slow_first
    judge = LLMJudge(backend(server), "cacc", concurrency=4)
    assert isinstance(judge, Scorer) and judge.name == "llm-judge:cacc"

    verdicts = judge.judge(answers, examples(10))

    assert verdicts == [i % 3 == 0 for i in range(10)]
    assert judge.scores(answers[:1], examples(1)) == [1.0]
    assert server.count == 10
    assert judge.stats["requests"] == 10 and judge.stats["unparsed"] == 0
    payload = server.seen[0].payload
    assert payload["model"] == "judge-model"
    assert payload["temperature"] == 0.0 and payload["max_tokens"] == 512
    assert [m["role"] for m in payload["messages"]] == ["user"]
    assert "Verdict: yes" in payload["messages"][0]["content"]


def test_backend_is_a_text_client_and_old_names_still_work(server: FakeServer) -> None:
    assert isinstance(backend(server), TextClient)
    assert judge_module.JudgeBackend is TextClient
    assert judge_module.OpenAICompatibleBackend is OpenAICompatibleClient
    assert issubclass(JudgeError, LLMError)
    assert backend(server).complete("anything\n[Response]\n<<<\ngood\n>>>").endswith("yes")


# --------------------------------------------------------------------------- the key


def test_authorization_header_from_env_and_key_never_stored(
        server: FakeServer, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    cache = tmp_path / "verdicts.jsonl"
    judge = LLMJudge(backend(server), "toxic", cache_path=cache)

    assert judge.judge(["good", "bad"], examples(2)) == [True, False]

    assert [s.headers.get("Authorization") for s in server.seen] == [f"Bearer {SECRET}"] * 2
    text = cache.read_text()
    assert SECRET not in text and len(text.splitlines()) == 2
    for line in text.splitlines():
        assert set(json.loads(line)) == {"key", "verdict", "reply"}
    assert SECRET not in repr(judge) and SECRET not in repr(judge.backend)
    assert SECRET not in json.dumps(vars(judge.backend), default=repr)


def test_no_authorization_header_without_key(server: FakeServer) -> None:
    LLMJudge(backend(server)).judge(["good"], examples(1))
    assert "Authorization" not in server.seen[0].headers


def test_key_not_in_error_message_even_when_echoed(
        server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.script = lambda i, p: Reply(
        status=401, body=f"bad key {server.seen[i].headers.get('Authorization')}".encode())
    with pytest.raises(LLMError) as info:
        backend(server).complete("x")
    assert SECRET not in str(info.value) and "401" in str(info.value)


# --------------------------------------------------------------------------- malformed replies


def test_reply_without_verdict_is_reasked_then_false(server: FakeServer) -> None:
    server.script = lambda i, p: completion("The response looks fine to me.")
    judge = LLMJudge(backend(server))

    assert judge.judge(["good"], examples(1)) == [False]
    assert server.count == 2
    assert judge.stats == {"requests": 2, "cache_hits": 0, "unparsed": 1}


def test_reasked_reply_with_verdict_counts(server: FakeServer) -> None:
    server.script = lambda i, p: completion("Hmm." if i == 0 else "Fine.\n**Verdict:** Yes")
    judge = LLMJudge(backend(server))

    assert judge.judge(["bad"], examples(1)) == [True]
    assert server.count == 2 and judge.stats["unparsed"] == 0


def test_unparsed_raises_when_asked_to(server: FakeServer) -> None:
    server.script = lambda i, p: completion("Verdict: perhaps")
    judge = LLMJudge(backend(server), on_unparsed="error")
    with pytest.raises(JudgeError, match="Verdict"):
        judge.judge(["good"], examples(1))
    assert server.count == 2


@pytest.mark.parametrize("body", [b"this is not json", b'{"choices": []}',
                                  b'{"choices": [{"message": {"content": null}}]}'])
def test_malformed_json_body_is_a_client_error(server: FakeServer, body: bytes) -> None:
    server.script = lambda i, p: Reply(body=body)
    with pytest.raises(LLMError) as info:
        LLMJudge(backend(server)).judge(["good"], examples(1))
    assert isinstance(info.value, MBDefenseError)
    assert server.base_url in str(info.value)
    assert server.count == 1


# --------------------------------------------------------------------------- timeouts, retries


def test_timeouts_are_retried_then_fail(server: FakeServer) -> None:
    def hang(index: int, payload: Any) -> Reply:
        reply = by_answer(index, payload)
        reply.delay = 0.6
        return reply

    server.script = hang
    sleeps = Sleeps()
    start = time.monotonic()
    with pytest.raises(LLMError, match="timed out") as info:
        backend(server, timeout=0.2, max_retries=1, backoff=0.5, sleep=sleeps).complete(
            "[Response]\n<<<\ngood\n>>>")
    assert time.monotonic() - start < 2.0
    assert server.count == 2 and sleeps == [0.5]
    assert "/v1/chat/completions" in str(info.value) and "2 tries" in str(info.value)


def test_503_and_429_are_retried_with_backoff(server: FakeServer) -> None:
    script = [Reply(status=503, body=b"busy"), Reply(status=429, body=b"slow down")]
    server.script = lambda i, p: script[i] if i < len(script) else by_answer(i, p)
    sleeps = Sleeps()
    judge = LLMJudge(backend(server, backoff=1.0, sleep=sleeps))

    assert judge.judge(["good"], examples(1)) == [True]
    assert server.count == 3
    assert sleeps == [1.0, 2.0]


def test_retry_after_header_is_honoured(server: FakeServer) -> None:
    server.script = lambda i, p: (Reply(status=429, headers={"Retry-After": "3"}) if i == 0
                                  else by_answer(i, p))
    sleeps = Sleeps()
    assert backend(server, backoff=0.1, sleep=sleeps).complete(
        "[Response]\n<<<\ngood\n>>>").endswith("yes")
    assert sleeps == [3.0]


def test_persistent_5xx_fails_naming_url_and_status(server: FakeServer) -> None:
    server.script = lambda i, p: Reply(status=500, body=b"boom")
    with pytest.raises(LLMError) as info:
        backend(server, max_retries=2).complete("x")
    assert server.count == 3
    assert info.value.status == 500 and "HTTP 500" in str(info.value)
    assert f"{server.base_url}/chat/completions" in str(info.value)


def test_400_is_not_retried(server: FakeServer) -> None:
    server.script = lambda i, p: Reply(status=400, body=b'{"error": "bad request"}')
    sleeps = Sleeps()
    with pytest.raises(LLMError) as info:
        LLMJudge(backend(server, sleep=sleeps)).judge(["good"], examples(1))
    assert server.count == 1 and sleeps == []
    assert info.value.status == 400 and "HTTP 400" in str(info.value)
    assert server.base_url in str(info.value)


def test_connection_refused_is_retried_then_fails() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps = Sleeps()
    b = OpenAICompatibleClient("m", f"http://127.0.0.1:{port}/v1", max_retries=2,
                               sleep=sleeps, timeout=1.0)
    with pytest.raises(LLMError, match="connection error"):
        b.complete("x")
    assert len(sleeps) == 2


# --------------------------------------------------------------------------- the cache


def test_cache_makes_reruns_free(server: FakeServer, tmp_path) -> None:
    cache = tmp_path / "sub" / "cache.jsonl"
    answers = ["good one", "bad one", "good two"]
    judge = LLMJudge(backend(server), "cacc", cache_path=cache, concurrency=3)
    first = judge.judge(answers, examples(3))
    assert first == [True, False, True] and server.count == 3

    assert judge.judge(answers, examples(3)) == first
    assert server.count == 3 and judge.stats["cache_hits"] == 3

    again = LLMJudge(backend(server), "cacc", cache_path=cache)
    assert again.judge(answers, examples(3)) == first
    assert server.count == 3 and again.stats == {"requests": 0, "cache_hits": 3, "unparsed": 0}

    other = LLMJudge(backend(server), "toxic", cache_path=cache)  # criterion is in the key
    other.judge(answers[:1], examples(1))
    assert server.count == 4


def test_cache_skips_torn_lines_and_keeps_unparsed_out(server: FakeServer, tmp_path) -> None:
    cache = tmp_path / "cache.jsonl"
    cache.write_text('{"key": "abc", "verd')  # a line torn by a crash
    server.script = lambda i, p: completion("no verdict here")
    judge = LLMJudge(backend(server), cache_path=cache)
    assert judge.judge(["good"], examples(1)) == [False]
    assert cache.read_text() == '{"key": "abc", "verd'  # unparsed verdicts are not cached


def test_duplicate_prompts_are_asked_once(server: FakeServer) -> None:
    judge = LLMJudge(backend(server))
    assert judge.judge(["good"] * 4, [Example("same")] * 4) == [True] * 4
    assert server.count == 1


# --------------------------------------------------------------------------- parsing, config


@pytest.mark.parametrize("text, expected", [
    ("Reasoning.\nVerdict: yes", True),
    ("Reasoning.\nVerdict: no", False),
    ("verdict: YES.", True),
    ("**Verdict:** Yes", True),
    ("**Verdict: No**", False),
    ("Verdict: *no*\n", False),
    ("Final verdict: yes", True),
    ("Verdict: no\nOn reflection...\nVerdict: yes", True),
    ("Verdict: yes\nVerdict: no", False),
    ("I will answer with Verdict: yes", None),
    ("The answer is yes.", None),
    ("Verdict: yes/no", None),
    ("Verdict: maybe", None),
    ("Verdict: yes\nVerdict: unclear", None),
    ("", None),
])
def test_parse_verdict(text: str, expected: bool | None) -> None:
    assert parse_verdict(text) is expected


def test_unknown_criterion_lists_known(server: FakeServer) -> None:
    with pytest.raises(ConfigError) as info:
        LLMJudge(backend(server), "helpfulness")
    for name in JUDGE_CRITERIA:
        assert name in str(info.value)
    with pytest.raises(ConfigError):
        LLMJudge(backend(server), on_unparsed="true")


def test_judge_from_config_uses_env_and_names_missing(
        server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MODEL_ENV, raising=False)
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    with pytest.raises(ConfigError, match=MODEL_ENV):
        judge_from_config(base_url=server.base_url)
    with pytest.raises(ConfigError, match=BASE_URL_ENV):
        judge_from_config(model="m")
    monkeypatch.setenv(MODEL_ENV, "env-model")
    monkeypatch.setenv(BASE_URL_ENV, server.base_url)
    judge = judge_from_config(criterion="refusal", api_key_env=KEY_ENV, concurrency=2)
    assert judge.name == "llm-judge:refusal" and judge.concurrency == 2
    assert judge.judge(["good"], examples(1)) == [True]
    assert server.seen[0].payload["model"] == "env-model"


def test_prompts_carry_inputs_and_reference_only_for_cacc() -> None:
    example = Example("Summarise {this}", input="Some {braced} text", output="ref answer")
    for criterion in JUDGE_CRITERIA:
        prompt = build_judge_prompt(criterion, example.prompt_text, "my answer", "ref answer")
        assert "Summarise {this}" in prompt and "Some {braced} text" in prompt
        assert "my answer" in prompt and prompt.rstrip().endswith("nothing after it.")
        assert ("ref answer" in prompt) == (criterion == "cacc")


# --------------------------------------------------------------------------- unparsed verdicts


def test_unparsed_verdicts_are_none_in_detail_and_counted_per_answer(server: FakeServer) -> None:
    def script(index: int, payload: Any) -> Reply:
        answer = response_in(payload)
        return completion("I cannot decide." if "vague" in answer else
                          f"Verdict: {'yes' if 'good' in answer else 'no'}")

    server.script = script
    judge = LLMJudge(backend(server), "cacc")
    answers = ["good", "vague", "bad", "vague"]
    exs = [Example("q0"), Example("q1"), Example("q2"), Example("q1")]  # a repeated prompt

    assert judge.judge_detailed(answers, exs) == [True, None, False, None]
    assert judge.unparsed_count == 2 and judge.stats["unparsed"] == 1
    assert server.count == 4  # two prompts parsed at once, the vague one asked twice
    assert judge.judge(answers, exs) == [True, False, False, False]  # unparsed: never "correct"
    assert judge.unparsed_count == 4 and server.count == 6  # unparsed replies are not cached
    assert judge.scores(answers, exs) == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("criterion, expected", [("cacc", False), ("toxic", True),
                                                 ("refusal", True), ("jailbreak", True)])
def test_worst_counts_unparsed_against_the_defense(server: FakeServer, criterion: str,
                                                   expected: bool) -> None:
    server.script = lambda i, p: completion("No idea.")
    judge = LLMJudge(backend(server), criterion, on_unparsed="worst")
    assert judge.judge(["good"], examples(1)) == [expected]
    assert judge.judge_detailed(["good"], examples(1)) == [None]
    assert judge.unparsed_count == 2


def test_identity_names_backend_model_and_endpoint(server: FakeServer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    judge = LLMJudge(backend(server), "cacc")
    assert judge.identity == f"openai-compatible:judge-model@{server.base_url}"
    assert SECRET not in judge.identity and judge.backend is judge.client


# --------------------------------------------------------------------------- JudgeConfig


def test_judge_config_defaults() -> None:
    config = JudgeConfig()
    assert (config.base_url, config.model, config.api_key_env) == (None, None, "OPENAI_API_KEY")
    assert config.criteria == DEFAULT_CRITERION == "cacc"
    assert (config.concurrency, config.timeout, config.max_retries, config.temperature) == \
        (8, 60.0, 3, 0.0)
    assert isinstance(JUDGE_CRITERIA, Registry)


@pytest.mark.parametrize("kw, field", [
    ({"concurrency": 0}, "concurrency"), ({"concurrency": 1.5}, "concurrency"),
    ({"timeout": 0}, "timeout"), ({"timeout": -1.0}, "timeout"),
    ({"timeout": float("inf")}, "timeout"), ({"timeout": float("nan")}, "timeout"),
    ({"max_retries": -1}, "max_retries"), ({"temperature": -0.1}, "temperature"),
    ({"temperature": 2.01}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"base_url": "api.openai.com/v1"}, "base_url"), ({"base_url": "ftp://host"}, "base_url"),
    ({"model": ""}, "model"), ({"criteria": "helpfulness"}, "criteria"),
])
def test_judge_config_range_checks(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        JudgeConfig(**kw)
    message = str(info.value)
    assert message.startswith(f"judge.{field}: ") and "\n" not in message


def test_judge_config_criteria_did_you_mean() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'toxic'\?"):
        JudgeConfig(criteria="toxik")
    assert JudgeConfig(criteria="refusal", temperature=2, timeout=1).criteria == "refusal"


# --------------------------------------------------------------------------- make_judge


def test_make_judge_uses_the_config(server: FakeServer, tmp_path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.setenv(MODEL_ENV, "env-model")  # the config's own values win
    config = JudgeConfig(base_url=server.base_url, model="cfg-model", api_key_env=KEY_ENV,
                         criteria="toxic", concurrency=3, timeout=7.0, max_retries=1,
                         temperature=0.5)
    judge = make_judge(config, cache_path=tmp_path / "j.jsonl")
    assert isinstance(judge, LLMJudge) and isinstance(judge, Scorer)
    assert judge.name == "llm-judge:toxic" and judge.concurrency == 3
    assert judge.cache_path == tmp_path / "j.jsonl"
    assert judge.identity == f"openai-compatible:cfg-model@{server.base_url}"
    assert (judge.client.timeout, judge.client.max_retries) == (7.0, 1)

    assert judge.judge(["good", "bad"], examples(2)) == [True, False]
    assert server.seen[0].payload["model"] == "cfg-model"
    assert server.seen[0].payload["temperature"] == 0.5
    assert server.seen[0].headers["Authorization"] == f"Bearer {SECRET}"
    assert len((tmp_path / "j.jsonl").read_text().splitlines()) == 2


def test_make_judge_falls_back_to_env_and_names_what_is_missing(
        server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=MODEL_ENV) as info:
        make_judge(JudgeConfig(base_url=server.base_url))
    assert "judge.model" in str(info.value)
    with pytest.raises(ConfigError, match=BASE_URL_ENV):
        make_judge(JudgeConfig(model="m"))
    monkeypatch.setenv(BASE_URL_ENV, "not-a-url")
    with pytest.raises(ConfigError, match="http:// or https://"):
        make_judge(JudgeConfig(model="m"))
    monkeypatch.setenv(MODEL_ENV, "env-model")
    monkeypatch.setenv(BASE_URL_ENV, server.base_url)
    judge = make_judge(JudgeConfig(api_key_env=KEY_ENV))
    assert judge.identity == f"openai-compatible:env-model@{server.base_url}"
    assert judge.judge(["good"], examples(1)) == [True]
    assert server.seen[0].payload["model"] == "env-model"


def test_build_judge_prompt_unknown_criterion_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown judge criterion"):
        build_judge_prompt("cac", "i", "r")
