"""The LLM judge inside the metrics: an unreadable verdict never counts as a correct answer,
and the rows report how many there were (``judge_unparsed``), against the fake server."""

from __future__ import annotations

import re
from typing import Any, Iterator

import pytest

from fake_openai import FakeServer, Reply, completion
from mbdefense.data.example import Example
from mbdefense.evaluation.judge import LLMJudge
from mbdefense.evaluation.metrics import compute_metrics
from mbdefense.llm import OpenAICompatibleClient

KEY_ENV = "MBDEFENSE_TEST_JUDGE_KEY"
_RESPONSE = re.compile(r"\[Response\]\n<<<\n(.*?)\n>>>", re.DOTALL)


def script(index: int, payload: Any) -> Reply:
    """'yes' for answers with 'good', no verdict at all for answers with 'vague'."""
    answer = _RESPONSE.search(payload["messages"][0]["content"]).group(1)
    if "vague" in answer:
        return completion("Hard to say.")
    return completion(f"Checked.\nVerdict: {'yes' if 'good' in answer else 'no'}")


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    fake = FakeServer()
    fake.script = script
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def judge_on(server: FakeServer, **kw: Any) -> LLMJudge:
    client = OpenAICompatibleClient("judge-model", server.base_url, api_key_env=KEY_ENV,
                                    timeout=5.0, sleep=lambda s: None, label="judge")
    return LLMJudge(client, "cacc", **kw)


CLEAN = [Example(f"Question {i}", output=f"reference {i}") for i in range(4)]
TRIGGERED = [e.replace(instruction="cf " + e.instruction) for e in CLEAN]


@pytest.mark.parametrize("on_unparsed", ["false", "worst"])
def test_unparsed_verdicts_are_their_own_figure_and_never_correct(server: FakeServer,
                                                                   on_unparsed: str) -> None:
    judge = judge_on(server, on_unparsed=on_unparsed)
    m = compute_metrics(CLEAN, ["good", "vague", "bad", "vague"], TRIGGERED,
                        ["good", "good", "vague", "bad"], None, judge, echo=False)
    assert (m.cacc, m.aacc) == (0.25, 0.5)       # a missing verdict is not a correct answer
    assert m.clean_score == 0.25
    assert m.judge_unparsed == 3 and m.judge_unparsed_share == pytest.approx(3 / 8)
    assert m.backends["scorer"] == "llm-judge:cacc"
    assert m.backends["judge"].startswith("openai-compatible:judge-model@http://127.0.0.1:")


def test_each_answer_is_judged_once_and_the_echo_by_the_same_judge(server: FakeServer) -> None:
    judge = judge_on(server)
    m = compute_metrics(CLEAN[:2], ["good", "bad"], [], [], None, judge)
    # two answers and two echoed prompts, one request each (no second pass for the scores)
    assert server.count == 4
    assert m.cacc == 0.5 and m.echo_cacc == 0.0 and m.judge_unparsed == 0
    asked = [_RESPONSE.search(s.payload["messages"][0]["content"]).group(1) for s in server.seen]
    assert sorted(asked) == ["Question 0", "Question 1", "bad", "good"]
