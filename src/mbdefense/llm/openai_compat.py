"""Chat completions from any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, ...) over the
standard library's ``urllib``, with retries and a careful handling of the API key.

The key:

- comes only from the environment variable named by ``api_key_env`` (default
  ``$OPENAI_API_KEY``), read at each request and never kept on the object; it is sent as
  ``Authorization: Bearer`` and masked in every error and log message;
- never leaves for another address: urllib does not follow redirects here. A 307/308 to the
  same scheme, host and port is followed (method and body kept, at most
  :data:`MAX_REDIRECTS` times); any other redirect is an :class:`LLMError` naming the target;
- crosses the network in clear only with a warning: a plain ``http://`` base URL to a host
  that is not loopback (127.0.0.0/8, ::1, localhost) warns once per host and process.

Timeouts, connection errors, HTTP 429 and 5xx are retried ``max_retries`` times with
exponential backoff (``backoff * 2**attempt`` seconds, or a server's ``Retry-After`` when
longer, capped at a minute); other HTTP errors fail at once.
"""

from __future__ import annotations

import email.utils
import http.client
import ipaddress
import json
import logging
import math
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from datetime import datetime, timezone
from typing import Any, Callable

from mbdefense.core.errors import ConfigError
from mbdefense.llm.client import DEFAULT_API_KEY_ENV, LLMError, is_env_var_name

log = logging.getLogger(__name__)

__all__ = ["MAX_REDIRECTS", "OpenAICompatibleClient", "is_loopback"]

#: Same-origin 307/308 redirects followed per request before giving up.
MAX_REDIRECTS = 3

_RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_FOLLOWED_REDIRECTS = frozenset({307, 308})  # the only ones that keep the POST and its body
_MAX_RETRY_AFTER = 60.0
_HEADER_SAFE = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: no space, no line break

_warned_hosts: set[str] = set()
_warned_lock = threading.Lock()


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine: ``localhost``, 127.0.0.0/8 or ``::1``."""
    if not host:
        return False
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_plaintext(label: str, base_url: str, host: str) -> None:
    with _warned_lock:
        if host in _warned_hosts:
            return
        _warned_hosts.add(host)
    warnings.warn(f"{label}: {base_url} is plain http:// to {host}, which is not this machine: "
                  f"the API key and every prompt travel unencrypted (use https://)",
                  UserWarning, stacklevel=3)


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``url``; ValueError when its port is not a number."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def _shown(url: str) -> str:
    """``url`` without user info, query or fragment, for messages."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Lets every 3xx reach the client as an HTTPError: the client decides, not urllib
    (which would resend the Authorization header to wherever it is sent)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None


class OpenAICompatibleClient:
    """A chat-completions endpoint; ``complete(prompt)`` sends ``prompt`` as the one user turn.

    ``label`` names the caller in messages (``judge``, ``paraphraser``). ``identity`` is
    ``openai-compatible:MODEL@BASE_URL`` (no key). ``sleep`` is injectable for tests.
    """

    def __init__(self, model: str, base_url: str, api_key_env: str = DEFAULT_API_KEY_ENV,
                 timeout: float = 60.0, max_retries: int = 3, backoff: float = 1.0,
                 temperature: float = 0.0, max_tokens: int = 512, *, label: str = "llm",
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"{label}: the client needs a model name")
        base_url = _check_base_url(label, base_url)
        if not is_env_var_name(api_key_env):
            # The value is not echoed: it may be the key itself, pasted in the wrong place.
            raise ConfigError(f"{label}: api_key_env must name an environment variable "
                              f"(letters, digits, _), not hold the key")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ConfigError(f"{label}: timeout must be > 0 and finite, got {timeout}")
        if max_retries < 0 or not (backoff >= 0 and math.isfinite(backoff)):
            raise ConfigError(f"{label}: max_retries and backoff must be >= 0, got "
                              f"{max_retries} and {backoff}")
        if not 0.0 <= temperature <= 2.0:
            raise ConfigError(f"{label}: temperature must lie in [0, 2], got {temperature}")
        if max_tokens < 1:
            raise ConfigError(f"{label}: max_tokens must be >= 1, got {max_tokens}")
        self.model, self.base_url, self.label = model, base_url, label
        self.api_key_env, self.timeout = api_key_env, float(timeout)
        self.max_retries, self.backoff = int(max_retries), float(backoff)
        self.temperature, self.max_tokens = float(temperature), int(max_tokens)
        self._sleep = sleep
        self._opener = urllib.request.build_opener(_NoRedirect)
        host = urllib.parse.urlsplit(base_url).hostname or ""
        if base_url.lower().startswith("http://") and not is_loopback(host):
            _warn_plaintext(label, base_url, host)

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    @property
    def identity(self) -> str:
        return f"openai-compatible:{self.model}@{self.base_url}"

    def __repr__(self) -> str:
        return (f"OpenAICompatibleClient(model={self.model!r}, base_url={self.base_url!r}, "
                f"api_key_env={self.api_key_env!r}, timeout={self.timeout})")

    # -- one completion

    def complete(self, prompt: str) -> str:
        """The reply's ``choices[0].message.content``, after retries; LLMError otherwise."""
        payload = json.dumps({
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }).encode("utf-8")
        attempts = self.max_retries + 1
        last, status = "", None
        for attempt in range(attempts):
            wait = self._backoff(attempt)
            try:
                body = self._post(payload)
            except urllib.error.HTTPError as exc:
                status, last = exc.code, f"HTTP {exc.code}{_snippet(exc)}"
                if exc.code not in _RETRY_STATUSES:
                    raise self._error(f"{self.url} answered {last}", status=exc.code) from None
                wait = max(wait, _retry_after(exc.headers))
            except TimeoutError as exc:
                status, last = None, f"timed out after {self.timeout:g} s ({exc})"
            except urllib.error.URLError as exc:
                status = None
                last = (f"timed out after {self.timeout:g} s"
                        if isinstance(exc.reason, TimeoutError)
                        else f"connection error: {exc.reason}")
            except (OSError, http.client.HTTPException) as exc:  # reset, refused, bad status
                status, last = None, f"connection error: {exc}"
            else:
                return self._content(body)
            if attempt + 1 < attempts:
                log.debug("%s", self._redact(f"{self.label}: {self.url} try {attempt + 1}/"
                                             f"{attempts} failed ({last}); retrying in "
                                             f"{wait:.2f} s"))
                self._sleep(wait)
        raise self._error(f"{self.url} failed after {attempts} tries; last error: {last}",
                          status=status)

    def _post(self, payload: bytes) -> bytes:
        """POST ``payload``, following same-origin 307/308 redirects only."""
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            request = urllib.request.Request(url, data=payload, headers=self._headers(),
                                             method="POST")
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as exc:
                if exc.code not in _REDIRECT_STATUSES:
                    raise
                location = exc.headers.get("Location") if exc.headers is not None else None
                exc.close()
                url = self._redirect_target(url, exc.code, location)
        raise self._error(f"{self.url} redirected more than {MAX_REDIRECTS} times")

    def _redirect_target(self, current: str, code: int, location: str | None) -> str:
        if not location:
            raise self._error(f"{current} answered HTTP {code} (a redirect) without a "
                              f"Location", status=code)
        target = urllib.parse.urljoin(current, location.strip())
        try:
            same_origin = _origin(target) == _origin(current)
        except ValueError:
            same_origin = False
        if same_origin and code in _FOLLOWED_REDIRECTS:
            return target
        why = ("it would turn the POST into a GET" if same_origin else
               "the API key is never sent to another address")
        raise self._error(f"{current} redirects (HTTP {code}) to {_shown(target)}; not "
                          f"followed, as {why}: set base_url to the endpoint itself",
                          status=code)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._key()
        if key:
            if not _HEADER_SAFE.match(key):
                raise self._error(f"${self.api_key_env} holds characters an HTTP header "
                                  f"cannot carry (a space or a line break?)")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _key(self) -> str:
        return os.environ.get(self.api_key_env, "").strip()

    def _backoff(self, attempt: int) -> float:
        return self.backoff * (2 ** attempt)

    def _content(self, body: bytes) -> str:
        try:
            content = json.loads(body.decode("utf-8"))["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise self._error(f"{self.url} returned a malformed reply (expected JSON with "
                              f"choices[0].message.content): {body[:200]!r}") from None
        if not isinstance(content, str):
            raise self._error(f"{self.url} returned no text in choices[0].message.content")
        return content

    def _error(self, message: str, *, status: int | None = None) -> LLMError:
        return LLMError(self._redact(f"{self.label}: {message}"), url=self.url, status=status)

    def _redact(self, message: str) -> str:
        """``message`` with the API key masked, should a server have echoed it back."""
        key = self._key()
        return message.replace(key, "***") if key else message


def _check_base_url(label: str, base_url: Any) -> str:
    if not isinstance(base_url, str) or not re.match(r"^https?://", base_url, re.IGNORECASE):
        raise ConfigError(f"{label}: base_url must start with http:// or https://, "
                          f"got {base_url!r}")
    parts = urllib.parse.urlsplit(base_url)
    # Values that may carry a secret are not echoed.
    if "@" in parts.netloc:
        raise ConfigError(f"{label}: base_url must not carry credentials (user:password@); "
                          f"the key comes from the environment (api_key_env)")
    if parts.query or parts.fragment:
        raise ConfigError(f"{label}: base_url must not have a query or fragment (?... #...)")
    try:
        parts.port
    except ValueError:
        raise ConfigError(f"{label}: base_url has an invalid port: {base_url!r}") from None
    if not parts.hostname:
        raise ConfigError(f"{label}: base_url has no host: {base_url!r}")
    return base_url.rstrip("/")


def _snippet(exc: urllib.error.HTTPError, limit: int = 200) -> str:
    try:
        text = exc.read()[:limit].decode("utf-8", "replace").strip()
    except Exception:  # the body is only a courtesy in the message
        return ""
    return f": {text}" if text else ""


def _retry_after(headers: Any) -> float:
    """A server's ``Retry-After`` (seconds or an HTTP date) in seconds, within [0, 60]."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return 0.0
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if not math.isfinite(seconds):
        return 0.0
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)
