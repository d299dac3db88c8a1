"""The paper's LLM judge as a :class:`~mbdefense.evaluation.scorers.Scorer`.

An :class:`LLMJudge` turns each (answer, example) into a prompt from
:mod:`mbdefense.evaluation.judge_prompts`, asks a :class:`JudgeBackend` (an OpenAI-compatible
HTTP endpoint, or a local transformers model), and parses the final ``Verdict: yes/no`` line.
Requests run concurrently, verdicts are cached in a JSONL file so that a rerun costs nothing,
and the API key is read from the environment at call time and never stored anywhere.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from mbdefense.data.example import Example
from mbdefense.core.errors import ConfigError, MBDefenseError
from mbdefense.evaluation.judge_prompts import JUDGE_CRITERIA, build_judge_prompt
from mbdefense.evaluation.scorers import Scorer, _check_lengths, reference_of

log = logging.getLogger(__name__)

BASE_URL_ENV = "MBDEFENSE_JUDGE_BASE_URL"
MODEL_ENV = "MBDEFENSE_JUDGE_MODEL"

__all__ = [
    "BASE_URL_ENV", "MODEL_ENV", "HFLocalBackend", "JudgeBackend", "JudgeError", "LLMJudge",
    "OpenAICompatibleBackend", "judge_from_config", "parse_verdict",
]


class JudgeError(MBDefenseError):
    """The judge could not produce a verdict: HTTP failure, malformed reply, no verdict."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None):
        self.url, self.status = url, status
        super().__init__(message)


# --------------------------------------------------------------------------- verdicts

_MARKDOWN = re.compile(r"[*_`#>~]")
_VERDICT_LINE = re.compile(r"^\s*(?:final\s+)?verdict\s*:(?P<value>.*)$", re.IGNORECASE)
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_verdict(text: str) -> bool | None:
    """The verdict of the last ``Verdict: yes/no`` line of a judge's reply.

    Case-insensitive; markdown emphasis (``**Verdict:** Yes``, ``Verdict: *no*``) and
    trailing punctuation are tolerated. ``None`` when no verdict line exists or the last one
    is ambiguous (``Verdict: yes/no``, ``Verdict: maybe``).
    """
    for line in reversed((text or "").splitlines()):
        match = _VERDICT_LINE.match(_MARKDOWN.sub("", line))
        if match is None:
            continue
        value = match.group("value").strip().lower()
        words = _YES_NO.findall(value)
        if len(words) != 1 or not value.startswith(words[0].lower()):
            return None
        return words[0].lower() == "yes"
    return None


# --------------------------------------------------------------------------- backends


@runtime_checkable
class JudgeBackend(Protocol):
    """Anything that answers one prompt with the judge model's reply text."""

    def complete(self, prompt: str) -> str:
        ...


def backend_identity(backend: Any) -> str:
    """What distinguishes a backend's verdicts in the cache (model name and endpoint)."""
    identity = getattr(backend, "identity", None)
    return str(identity) if identity else type(backend).__qualname__


_RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))
_MAX_RETRY_AFTER = 60.0


class OpenAICompatibleBackend:
    """A chat-completions endpoint (OpenAI, vLLM, llama.cpp, ...) over stdlib ``urllib``.

    The API key is read from ``api_key_env`` at each call and sent as a bearer token only when
    that variable is set; it is never kept on the object, logged or put in an error message.
    Timeouts, connection errors, HTTP 429 and 5xx are retried ``max_retries`` times with
    exponential backoff (``backoff * 2**attempt`` seconds, or a server's ``Retry-After`` when
    longer); other HTTP errors fail at once.
    """

    def __init__(self, model: str, base_url: str, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, max_retries: int = 3, backoff: float = 1.0,
                 temperature: float = 0.0, max_tokens: int = 512, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not model:
            raise ConfigError("judge: the backend needs a model name")
        if not re.match(r"^https?://", base_url or "", re.IGNORECASE):
            raise ConfigError(f"judge: base_url must start with http:// or https://, "
                              f"got {base_url!r}")
        if timeout <= 0 or max_retries < 0 or backoff < 0:
            raise ConfigError("judge: timeout must be > 0, max_retries and backoff >= 0")
        self.model, self.base_url = model, base_url.rstrip("/")
        self.api_key_env, self.timeout = api_key_env, float(timeout)
        self.max_retries, self.backoff = int(max_retries), float(backoff)
        self.temperature, self.max_tokens = float(temperature), int(max_tokens)
        self._sleep = sleep

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    @property
    def identity(self) -> str:
        return f"{self.model}@{self.base_url}"

    def __repr__(self) -> str:
        return (f"OpenAICompatibleBackend(model={self.model!r}, base_url={self.base_url!r}, "
                f"api_key_env={self.api_key_env!r}, timeout={self.timeout})")

    def complete(self, prompt: str) -> str:
        """The reply's ``choices[0].message.content``, after retries; JudgeError otherwise."""
        payload = json.dumps({
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }).encode("utf-8")
        attempts = self.max_retries + 1
        last = ""
        last_status: int | None = None
        for attempt in range(attempts):
            try:
                body = self._post(payload)
            except urllib.error.HTTPError as exc:
                last_status = exc.code
                last = f"HTTP {exc.code}{_snippet(exc)}"
                if exc.code not in _RETRY_STATUSES:
                    raise JudgeError(self._redact(f"judge: {self.url} answered {last}"),
                                     url=self.url, status=exc.code) from None
                wait = max(self._backoff(attempt), _retry_after(exc))
            except (TimeoutError, socket.timeout) as exc:
                last_status, last = None, f"timed out after {self.timeout:g} s ({exc})"
                wait = self._backoff(attempt)
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                    last = f"timed out after {self.timeout:g} s"
                else:
                    last = f"connection error: {exc.reason}"
                last_status, wait = None, self._backoff(attempt)
            except (OSError, http.client.HTTPException) as exc:  # reset, refused, bad status
                last_status, last, wait = None, f"connection error: {exc}", self._backoff(attempt)
            else:
                return self._content(body)
            if attempt + 1 < attempts:
                log.debug("judge: %s try %d/%d failed (%s); retrying in %.2f s",
                          self.url, attempt + 1, attempts, last, wait)
                self._sleep(wait)
        raise JudgeError(self._redact(f"judge: {self.url} failed after {attempts} tries; "
                                      f"last error: {last}"),
                         url=self.url, status=last_status)

    def _post(self, payload: bytes) -> bytes:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return response.read()

    def _backoff(self, attempt: int) -> float:
        return self.backoff * (2 ** attempt)

    def _content(self, body: bytes) -> str:
        try:
            content = json.loads(body.decode("utf-8"))["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeError(self._redact(
                f"judge: {self.url} returned a malformed reply (expected JSON with "
                f"choices[0].message.content): {body[:200]!r}"), url=self.url) from None
        if not isinstance(content, str):
            raise JudgeError(f"judge: {self.url} returned no text in "
                             f"choices[0].message.content", url=self.url)
        return content

    def _redact(self, message: str) -> str:
        """The message with the API key masked, should a server have echoed it back."""
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return message.replace(key, "***") if key else message


def _snippet(exc: urllib.error.HTTPError, limit: int = 200) -> str:
    try:
        text = exc.read()[:limit].decode("utf-8", "replace").strip()
    except Exception:  # the body is only a courtesy in the message
        return ""
    return f": {text}" if text else ""


def _retry_after(exc: urllib.error.HTTPError) -> float:
    try:
        return min(float(exc.headers.get("Retry-After", 0) or 0), _MAX_RETRY_AFTER)
    except (TypeError, ValueError, AttributeError):
        return 0.0


class HFLocalBackend:
    """A local transformers causal LM as the judge, prompted with its chat template, greedy.

    ``model_path_or_obj`` is a folder/hub id (loaded with ``trust_remote_code=False``) or a
    loaded model, in which case ``tokenizer`` is required. Generation is serialised with a
    lock, so the judge's thread pool can share one model.
    """

    def __init__(self, model_path_or_obj: Any, tokenizer: Any = None,
                 max_new_tokens: int = 256) -> None:
        if isinstance(model_path_or_obj, (str, os.PathLike)):
            from mbdefense.modeling.loading import load_pretrained

            path = str(model_path_or_obj)
            try:
                model, loaded = load_pretrained(path, trust_remote_code=False)
            except OSError as exc:
                raise ConfigError(f"judge: cannot load '{path}': "
                                  f"{str(exc).splitlines()[0]}") from None
            self.identity = f"hf:{path}"
            self.model, self.tokenizer = model, tokenizer or loaded
        else:
            if tokenizer is None:
                raise ConfigError("judge: HFLocalBackend needs a tokenizer with a loaded model")
            self.model, self.tokenizer = model_path_or_obj, tokenizer
            name = getattr(model_path_or_obj, "name_or_path", "") or ""
            self.identity = f"hf:{name or type(model_path_or_obj).__qualname__}"
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ConfigError("judge: the local judge's tokenizer has no chat template")
        self.max_new_tokens = int(max_new_tokens)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HFLocalBackend({self.identity!r}, max_new_tokens={self.max_new_tokens})"

    def complete(self, prompt: str) -> str:
        """The model's greedy reply to ``prompt`` as the user turn."""
        import torch

        text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                  tokenize=False, add_generation_prompt=True)
        encoded = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        with self._lock, torch.inference_mode():
            device = next(self.model.parameters()).device
            ids = encoded["input_ids"].to(device)
            out = self.model.generate(input_ids=ids,
                                      attention_mask=encoded["attention_mask"].to(device),
                                      max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=pad_id,
                                      eos_token_id=self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


# --------------------------------------------------------------------------- the scorer

_ON_UNPARSED = ("false", "error")


def _unknown_criterion(criterion: str) -> ConfigError:
    return ConfigError(f"judge: unknown criterion '{criterion}' "
                       f"(known: {', '.join(sorted(JUDGE_CRITERIA))})")


class LLMJudge(Scorer):
    """Judges answers with an LLM by one criterion of :data:`JUDGE_CRITERIA`.

    ``judge`` returns one bool per answer, in order: True when the judge says "yes" (the
    criterion holds). A reply without a parseable verdict is asked again once; if it still has
    none it counts as False (``on_unparsed="false"``) or raises :class:`JudgeError`
    (``on_unparsed="error"``). ``stats`` counts, over this object's life, the backend
    ``requests``, the ``cache_hits`` and the ``unparsed`` final replies.

    With ``cache_path`` every parsed verdict is appended to a JSONL file (``key``, ``verdict``,
    ``reply``) keyed by the sha256 of backend identity, criterion and prompt, and read back on
    start, so reruns and other instances skip known prompts.
    """

    def __init__(self, backend: JudgeBackend, criterion: str = "cacc", concurrency: int = 8,
                 cache_path: str | Path | None = None, on_unparsed: str = "false",
                 progress: bool = False) -> None:
        if criterion not in JUDGE_CRITERIA:
            raise _unknown_criterion(criterion)
        if on_unparsed not in _ON_UNPARSED:
            raise ConfigError(f"judge: on_unparsed must be one of {', '.join(_ON_UNPARSED)}, "
                              f"got {on_unparsed!r}")
        if int(concurrency) < 1:
            raise ConfigError(f"judge: concurrency must be >= 1, got {concurrency}")
        self.backend, self.criterion = backend, criterion
        self.concurrency, self.on_unparsed, self.progress = int(concurrency), on_unparsed, progress
        self.name = f"llm-judge:{criterion}"
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.stats: dict[str, int] = {"requests": 0, "cache_hits": 0, "unparsed": 0}
        self._identity = backend_identity(backend)
        self._lock = threading.Lock()
        self._cache: dict[str, bool] = self._load_cache()

    def __repr__(self) -> str:
        return (f"LLMJudge({self.backend!r}, criterion={self.criterion!r}, "
                f"concurrency={self.concurrency}, cache_path={self.cache_path!r})")

    # -- prompts and keys

    def prompt_for(self, answer: str, example: Example) -> str:
        """The judge prompt for one answer to one example."""
        return build_judge_prompt(self.criterion, example.prompt_text, answer,
                                  reference_of(example))

    def cache_key(self, prompt: str) -> str:
        material = json.dumps([self._identity, self.criterion, prompt], ensure_ascii=False)
        return hashlib.sha256(material.encode("utf-8")).hexdigest()

    # -- judging

    def judge(self, answers: Sequence[str], examples: Sequence[Example]) -> list[bool]:
        _check_lengths(answers, examples, self.name)
        keys: list[str] = []
        pending: dict[str, str] = {}  # key -> prompt, each distinct prompt asked once
        for answer, example in zip(answers, examples):
            prompt = self.prompt_for(answer, example)
            key = self.cache_key(prompt)
            keys.append(key)
            with self._lock:
                if key in self._cache:
                    self.stats["cache_hits"] += 1
                    continue
            pending.setdefault(key, prompt)
        found = self._run(pending)
        with self._lock:
            return [found[k] if k in found else self._cache[k] for k in keys]

    def _run(self, pending: dict[str, str]) -> dict[str, bool]:
        """Verdicts for the uncached prompts, asked concurrently."""
        if not pending:
            return {}
        from tqdm.auto import tqdm

        results: dict[str, bool] = {}
        executor = ThreadPoolExecutor(max_workers=min(self.concurrency, len(pending)))
        futures: dict[Future[bool], str] = {executor.submit(self._verdict, key, prompt): key
                                            for key, prompt in pending.items()}
        try:
            bar = tqdm(as_completed(futures), total=len(futures), desc=self.name,
                       disable=not self.progress, leave=False)
            for future in bar:
                results[futures[future]] = future.result()
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        return results

    def _verdict(self, key: str, prompt: str) -> bool:
        """Ask (and re-ask once when unparsed); cache a parsed verdict."""
        reply = ""
        for _ in range(2):
            with self._lock:
                self.stats["requests"] += 1
            reply = self.backend.complete(prompt)
            verdict = parse_verdict(reply)
            if verdict is not None:
                self._store(key, verdict, reply)
                return verdict
        with self._lock:
            self.stats["unparsed"] += 1
        if self.on_unparsed == "error":
            raise JudgeError(f"judge ({self.name}): no 'Verdict: yes/no' line in the reply, "
                             f"twice; last reply ends: {reply[-200:]!r}")
        return False

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


_BACKEND_OPTIONS = frozenset({"api_key_env", "timeout", "max_retries", "backoff", "temperature",
                              "max_tokens", "sleep"})
_JUDGE_OPTIONS = frozenset({"concurrency", "cache_path", "on_unparsed", "progress"})


def judge_from_config(model: str | None = None, base_url: str | None = None,
                      criterion: str = "cacc", **kw: Any) -> LLMJudge:
    """An :class:`LLMJudge` over an :class:`OpenAICompatibleBackend`.

    ``model`` and ``base_url`` fall back to ``$MBDEFENSE_JUDGE_MODEL`` and
    ``$MBDEFENSE_JUDGE_BASE_URL``. Other keywords go to the backend (``api_key_env``,
    ``timeout``, ``max_retries``, ``backoff``, ``temperature``, ``max_tokens``) or to the judge
    (``concurrency``, ``cache_path``, ``on_unparsed``, ``progress``).
    """
    unknown = set(kw) - _BACKEND_OPTIONS - _JUDGE_OPTIONS
    if unknown:
        raise ConfigError(f"judge: unknown option(s) {', '.join(sorted(unknown))}")
    if criterion not in JUDGE_CRITERIA:
        raise _unknown_criterion(criterion)
    model = model or os.environ.get(MODEL_ENV)
    base_url = base_url or os.environ.get(BASE_URL_ENV)
    if not model:
        raise ConfigError(f"judge: no judge model; pass model (e.g. gpt-4o-mini) or set "
                          f"${MODEL_ENV}")
    if not base_url:
        raise ConfigError(f"judge: no judge endpoint; pass base_url (e.g. "
                          f"https://api.openai.com/v1) or set ${BASE_URL_ENV}")
    backend = OpenAICompatibleBackend(model, base_url,
                                      **{k: v for k, v in kw.items() if k in _BACKEND_OPTIONS})
    return LLMJudge(backend, criterion,
                    **{k: v for k, v in kw.items() if k in _JUDGE_OPTIONS})
