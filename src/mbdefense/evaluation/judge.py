"""The paper's LLM judge as a :class:`~mbdefense.evaluation.scorers.Scorer`.

An :class:`LLMJudge` turns each (answer, example) into a prompt from
:mod:`mbdefense.evaluation.judge_prompts`, asks a text client from :mod:`mbdefense.llm` (an
OpenAI-compatible endpoint or a local transformers model) and parses the final
``Verdict: yes/no`` line. Requests run concurrently, and verdicts are cached in a JSONL file so
that a rerun costs nothing.

A reply without a verdict is never quietly a verdict: :meth:`LLMJudge.judge_detailed` gives it
as ``None``, :attr:`LLMJudge.unparsed_count` counts it, and :meth:`LLMJudge.judge` maps it to
False (or, with ``on_unparsed="worst"``, to the verdict that never favours a defense).

Experiments describe the judge with :class:`JudgeConfig` and build it with :func:`make_judge`.
The API key comes only from the environment (``api_key_env``) and is never stored anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mbdefense.core.errors import ConfigError
from mbdefense.data.example import Example
from mbdefense.evaluation.judge_prompts import (DEFAULT_CRITERION, JUDGE_CRITERIA,
                                                build_judge_prompt, parse_verdict)
from mbdefense.evaluation.scorers import Assessment, Scorer, _check_lengths, reference_of
from mbdefense.llm import (DEFAULT_API_KEY_ENV, HFLocalClient, LLMError, OpenAICompatibleClient,
                           TextClient, client_identity, is_env_var_name)

log = logging.getLogger(__name__)

#: Where :func:`make_judge` and :func:`judge_from_config` find the endpoint and model when
#: the configuration leaves them out.
BASE_URL_ENV = "MBDEFENSE_JUDGE_BASE_URL"
MODEL_ENV = "MBDEFENSE_JUDGE_MODEL"

__all__ = [
    "BASE_URL_ENV", "MODEL_ENV", "HFLocalBackend", "JudgeBackend", "JudgeConfig", "JudgeError",
    "LLMJudge", "OpenAICompatibleBackend", "backend_identity", "judge_from_config",
    "make_judge", "parse_verdict",
]

# The names from before the clients moved to mbdefense.llm.
JudgeBackend = TextClient
OpenAICompatibleBackend = OpenAICompatibleClient
HFLocalBackend = HFLocalClient
backend_identity = client_identity


class JudgeError(LLMError):
    """The judge produced no verdict (``on_unparsed="error"``). Transport failures are the
    client's :class:`~mbdefense.llm.LLMError`, of which this is a kind."""


# --------------------------------------------------------------------------- configuration


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class JudgeConfig:
    """The LLM judge of an experiment. ``base_url`` and ``model`` left out come from
    ``$MBDEFENSE_JUDGE_BASE_URL`` and ``$MBDEFENSE_JUDGE_MODEL`` when the judge is built; the
    API key only ever from the environment variable named by ``api_key_env``. ``criteria``
    names one criterion of :data:`~mbdefense.evaluation.judge_prompts.JUDGE_CRITERIA`."""

    base_url: str | None = None
    model: str | None = None
    api_key_env: str = DEFAULT_API_KEY_ENV
    criteria: str = DEFAULT_CRITERION
    concurrency: int = 8
    timeout: float = 60.0
    max_retries: int = 3
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if self.base_url is not None and not (
                isinstance(self.base_url, str)
                and re.match(r"^https?://", self.base_url, re.IGNORECASE)):
            raise ConfigError(f"judge.base_url: must start with http:// or https://, got "
                              f"{self.base_url!r}")
        if self.model is not None and not (isinstance(self.model, str) and self.model.strip()):
            raise ConfigError(f"judge.model: must be a model name, got {self.model!r}")
        if not is_env_var_name(self.api_key_env):
            # Not echoed: the value may be the key itself, put in the wrong place.
            raise ConfigError("judge.api_key_env: must name an environment variable (letters, "
                              "digits, _) that holds the key, not the key itself")
        if not isinstance(self.criteria, str) or self.criteria not in JUDGE_CRITERIA:
            raise ConfigError(f"judge.criteria: {JUDGE_CRITERIA.unknown(str(self.criteria))}")
        self.criteria = JUDGE_CRITERIA.canonical(self.criteria)
        if not _is_int(self.concurrency) or self.concurrency < 1:
            raise ConfigError(f"judge.concurrency: must be an integer >= 1, got "
                              f"{self.concurrency!r}")
        if not (_is_number(self.timeout) and self.timeout > 0 and math.isfinite(self.timeout)):
            raise ConfigError(f"judge.timeout: must be > 0 and finite, got {self.timeout!r}")
        if not _is_int(self.max_retries) or self.max_retries < 0:
            raise ConfigError(f"judge.max_retries: must be an integer >= 0, got "
                              f"{self.max_retries!r}")
        if not (_is_number(self.temperature) and 0.0 <= self.temperature <= 2.0):
            raise ConfigError(f"judge.temperature: must lie in [0, 2], got {self.temperature!r}")


def _endpoint(model: str | None, base_url: str | None) -> tuple[str, str]:
    """``model`` and ``base_url``, or their environment fallbacks; ConfigError if neither."""
    model = model or os.environ.get(MODEL_ENV, "").strip()
    base_url = base_url or os.environ.get(BASE_URL_ENV, "").strip()
    if not model:
        raise ConfigError(f"judge: no judge model; set judge.model (e.g. gpt-4o-mini) or "
                          f"${MODEL_ENV}")
    if not base_url:
        raise ConfigError(f"judge: no judge endpoint; set judge.base_url (e.g. "
                          f"https://api.openai.com/v1) or ${BASE_URL_ENV}")
    return model, base_url


def make_judge(config: JudgeConfig, *, cache_path: str | Path | None = None,
               progress: bool = False) -> LLMJudge:
    """The :class:`LLMJudge` a :class:`JudgeConfig` describes, over an OpenAI-compatible
    endpoint, with its verdicts cached in ``cache_path`` when given."""
    model, base_url = _endpoint(config.model, config.base_url)
    client = OpenAICompatibleClient(model, base_url, config.api_key_env,
                                    timeout=config.timeout, max_retries=config.max_retries,
                                    temperature=config.temperature, label="judge")
    return LLMJudge(client, config.criteria, concurrency=config.concurrency,
                    cache_path=cache_path, progress=progress)


# --------------------------------------------------------------------------- the scorer

_ON_UNPARSED = ("false", "worst", "error")


class LLMJudge(Scorer):
    """Judges answers with an LLM by one criterion of :data:`JUDGE_CRITERIA`.

    :meth:`judge_detailed` returns, per answer and in order, True when the judge says "yes"
    (the criterion holds), False for "no", and None when the reply had no readable verdict,
    even when asked a second time. :meth:`judge` returns bools: None becomes False
    (``on_unparsed="false"``, the default), the criterion's verdict that never favours a
    defense (``"worst"``: False for ``cacc``, True for the attack criteria), or a
    :class:`JudgeError` (``"error"``).

    ``unparsed_count`` counts the answers judged None over this object's life (the metrics
    count them per row, from :meth:`assess`, as ``judge_unparsed``); ``stats`` counts the client ``requests``, the
    ``cache_hits`` and the distinct prompts left ``unparsed``. ``identity`` names the client
    (backend, model and endpoint; never the key).

    With ``cache_path`` every parsed verdict is appended to a JSONL file (``key``, ``verdict``,
    ``reply``) keyed by the sha256 of client identity, criterion and prompt, and read back on
    start, so reruns and other instances skip known prompts. Unparsed replies are not cached.
    """

    can_abstain = True

    def __init__(self, client: TextClient, criterion: str = DEFAULT_CRITERION,
                 concurrency: int = 8, cache_path: str | Path | None = None,
                 on_unparsed: str = "false", progress: bool = False) -> None:
        if criterion not in JUDGE_CRITERIA:
            raise ConfigError(f"judge: {JUDGE_CRITERIA.unknown(criterion)}")
        if on_unparsed not in _ON_UNPARSED:
            raise ConfigError(f"judge: on_unparsed must be one of {', '.join(_ON_UNPARSED)}, "
                              f"got {on_unparsed!r}")
        if int(concurrency) < 1:
            raise ConfigError(f"judge: concurrency must be >= 1, got {concurrency}")
        self.client = client
        self.criterion = JUDGE_CRITERIA.canonical(criterion)
        self.concurrency, self.on_unparsed, self.progress = int(concurrency), on_unparsed, progress
        self.name = f"llm-judge:{self.criterion}"
        self.identity = client_identity(client)
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.stats: dict[str, int] = {"requests": 0, "cache_hits": 0, "unparsed": 0}
        self.unparsed_count = 0
        self._lock = threading.Lock()
        self._cache: dict[str, bool] = self._load_cache()

    @property
    def backend(self) -> TextClient:
        """The client (its name before :mod:`mbdefense.llm`)."""
        return self.client

    @property
    def unparsed_verdict(self) -> bool | None:
        """What :meth:`judge` gives for a reply without a verdict (None: it raises)."""
        if self.on_unparsed == "worst":
            return JUDGE_CRITERIA.get(self.criterion).worst_verdict
        return False if self.on_unparsed == "false" else None

    def __repr__(self) -> str:
        return (f"LLMJudge({self.client!r}, criterion={self.criterion!r}, "
                f"concurrency={self.concurrency}, cache_path={self.cache_path!r})")

    # -- prompts and keys

    def prompt_for(self, answer: str, example: Example) -> str:
        """The judge prompt for one answer to one example."""
        return build_judge_prompt(self.criterion, example.prompt_text, answer,
                                  reference_of(example))

    def cache_key(self, prompt: str) -> str:
        material = json.dumps([self.identity, self.criterion, prompt], ensure_ascii=False)
        return hashlib.sha256(material.encode("utf-8")).hexdigest()

    # -- judging

    def judge(self, answers: Sequence[str], examples: Sequence[Example]) -> list[bool]:
        """One bool per answer; a reply without a verdict as ``on_unparsed`` says."""
        fallback = self.unparsed_verdict
        return [fallback if v is None else v for v in self.judge_detailed(answers, examples)]

    def assess(self, answers: Sequence[str], examples: Sequence[Example]) -> Assessment:
        """One pass: the verdicts with None kept (never counted as correct) and 0/1 scores."""
        verdicts = self.judge_detailed(answers, examples)
        return Assessment(verdicts, [1.0 if v is True else 0.0 for v in verdicts])

    def backends(self) -> dict[str, str]:
        """The judge's criterion and client (backend, model, endpoint; never the key)."""
        return {"scorer": self.name, "judge": self.identity}

    def judge_detailed(self, answers: Sequence[str],
                       examples: Sequence[Example]) -> list[bool | None]:
        """One verdict per answer: True ("yes"), False ("no") or None (no verdict in the
        reply, twice). Adds the Nones to ``unparsed_count``."""
        _check_lengths(answers, examples, self.name)
        keys: list[str] = []
        known: dict[str, bool] = {}
        pending: dict[str, str] = {}  # key -> prompt, each distinct prompt asked once
        for answer, example in zip(answers, examples):
            prompt = self.prompt_for(answer, example)
            key = self.cache_key(prompt)
            keys.append(key)
            with self._lock:
                if key in self._cache:
                    self.stats["cache_hits"] += 1
                    known[key] = self._cache[key]
                    continue
            pending.setdefault(key, prompt)
        found = self._run(pending)
        verdicts = [known[k] if k in known else found[k] for k in keys]
        with self._lock:
            self.unparsed_count += sum(v is None for v in verdicts)
        return verdicts

    def _run(self, pending: dict[str, str]) -> dict[str, bool | None]:
        """Verdicts for the uncached prompts, asked concurrently."""
        if not pending:
            return {}
        from tqdm.auto import tqdm

        results: dict[str, bool | None] = {}
        executor = ThreadPoolExecutor(max_workers=min(self.concurrency, len(pending)))
        futures: dict[Future[bool | None], str] = {
            executor.submit(self._verdict, key, prompt): key for key, prompt in pending.items()}
        try:
            bar = tqdm(as_completed(futures), total=len(futures), desc=self.name,
                       disable=not self.progress, leave=False)
            for future in bar:
                results[futures[future]] = future.result()
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        return results

    def _verdict(self, key: str, prompt: str) -> bool | None:
        """Ask (and re-ask once when unparsed); cache a parsed verdict."""
        reply = ""
        for _ in range(2):
            with self._lock:
                self.stats["requests"] += 1
            reply = self.client.complete(prompt)
            verdict = parse_verdict(reply)
            if verdict is not None:
                self._store(key, verdict, reply)
                return verdict
        with self._lock:
            self.stats["unparsed"] += 1
        if self.on_unparsed == "error":
            raise JudgeError(f"judge ({self.name}): no 'Verdict: yes/no' line in the reply, "
                             f"twice; last reply ends: {reply[-200:]!r}")
        return None

    # -- the cache

    def _load_cache(self) -> dict[str, bool]:
        cache: dict[str, bool] = {}
        if self.cache_path is None or not self.cache_path.exists():
            return cache
        with self.cache_path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    record = json.loads(line)
                    key, verdict = record["key"], record["verdict"]
                except (ValueError, KeyError, TypeError):
                    log.warning("judge cache %s:%d: unreadable line skipped",
                                self.cache_path, number)
                    continue
                if isinstance(key, str) and isinstance(verdict, bool):
                    cache[key] = verdict
        return cache

    def _store(self, key: str, verdict: bool, reply: str) -> None:
        with self._lock:
            self._cache[key] = verdict
            if self.cache_path is None:
                return
            line = json.dumps({"key": key, "verdict": verdict, "reply": reply},
                              ensure_ascii=False) + "\n"
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with self.cache_path.open("a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()


# --------------------------------------------------------------------------- keyword form

_CLIENT_OPTIONS = frozenset({"api_key_env", "timeout", "max_retries", "backoff", "temperature",
                             "max_tokens", "sleep"})
_JUDGE_OPTIONS = frozenset({"concurrency", "cache_path", "on_unparsed", "progress"})


def judge_from_config(model: str | None = None, base_url: str | None = None,
                      criterion: str = DEFAULT_CRITERION, **kw: Any) -> LLMJudge:
    """An :class:`LLMJudge` over an :class:`~mbdefense.llm.OpenAICompatibleClient`, from
    keywords (experiments use :func:`make_judge`).

    ``model`` and ``base_url`` fall back to ``$MBDEFENSE_JUDGE_MODEL`` and
    ``$MBDEFENSE_JUDGE_BASE_URL``. Other keywords go to the client (``api_key_env``,
    ``timeout``, ``max_retries``, ``backoff``, ``temperature``, ``max_tokens``) or to the judge
    (``concurrency``, ``cache_path``, ``on_unparsed``, ``progress``).
    """
    unknown = set(kw) - _CLIENT_OPTIONS - _JUDGE_OPTIONS
    if unknown:
        raise ConfigError(f"judge: unknown option(s) {', '.join(sorted(unknown))}")
    if criterion not in JUDGE_CRITERIA:
        raise ConfigError(f"judge: {JUDGE_CRITERIA.unknown(criterion)}")
    model, base_url = _endpoint(model, base_url)
    client = OpenAICompatibleClient(model, base_url, label="judge",
                                    **{k: v for k, v in kw.items() if k in _CLIENT_OPTIONS})
    return LLMJudge(client, criterion, **{k: v for k, v in kw.items() if k in _JUDGE_OPTIONS})
