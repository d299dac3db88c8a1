"""What every text-completion client shares: the :class:`TextClient` protocol, the identity
that keys caches and records, and :class:`LLMError`.

A client answers one prompt with one reply (``complete(prompt) -> str``). The LLM judge
(:mod:`mbdefense.evaluation.judge`) and the paraphraser (:mod:`mbdefense.attacks.rewriting`)
both take any such client; the two shipped ones are
:class:`~mbdefense.llm.openai_compat.OpenAICompatibleClient` (chat completions over HTTP) and
:class:`~mbdefense.llm.local_hf.HFLocalClient` (a local transformers model).
"""

from __future__ import annotations

import re
from typing import Any, Protocol, runtime_checkable

from mbdefense.core.errors import MBDefenseError

#: The environment variable an HTTP client reads its API key from unless told otherwise.
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"

__all__ = ["DEFAULT_API_KEY_ENV", "LLMError", "TextClient", "client_identity",
           "is_env_var_name"]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_env_var_name(name: object) -> bool:
    """Whether ``name`` can be an environment variable's name (letters, digits, ``_``).

    Settings such as ``api_key_env`` hold the variable's name, never the key: a value that
    fails this check (``sk-...``) is rejected without being echoed, as it may be the key.
    """
    return isinstance(name, str) and bool(_ENV_NAME.match(name))


class LLMError(MBDefenseError):
    """A client could not produce a reply: HTTP failure, refused redirect, malformed reply.

    ``url`` and ``status`` (the HTTP status, when there was one) say where it failed. The
    message never contains an API key.
    """

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None):
        self.url, self.status = url, status
        super().__init__(message)


@runtime_checkable
class TextClient(Protocol):
    """Anything that answers one prompt with a model's reply text.

    A client may also carry an ``identity`` string (backend, model and endpoint, never a
    secret); :func:`client_identity` reads it.
    """

    def complete(self, prompt: str) -> str:
        ...


def client_identity(client: Any) -> str:
    """What distinguishes a client's replies in caches and records: its ``identity``
    (e.g. ``openai-compatible:gpt-4o-mini@https://api.openai.com/v1``, ``hf:/models/judge``),
    else its class name. Never contains an API key."""
    identity = getattr(client, "identity", None)
    return str(identity) if identity else type(client).__qualname__
