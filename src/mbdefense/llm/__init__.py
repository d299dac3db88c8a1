"""Text-completion clients shared by the LLM judge and the paraphraser.

- :class:`TextClient`: the protocol (``complete(prompt) -> str``), :func:`client_identity`
  for caches and records, :class:`LLMError` for failures;
- :class:`OpenAICompatibleClient`: chat completions over HTTP (retries, backoff,
  ``Retry-After``; the API key only from the environment and never sent to another address);
- :class:`HFLocalClient`: a local transformers model.

This package imports only :mod:`mbdefense.core` (and model loading lazily, inside the local
client), so any layer may use it.
"""

from mbdefense.llm.client import (DEFAULT_API_KEY_ENV, LLMError, TextClient, client_identity,
                                  is_env_var_name)
from mbdefense.llm.local_hf import HFLocalClient
from mbdefense.llm.openai_compat import MAX_REDIRECTS, OpenAICompatibleClient, is_loopback

__all__ = [
    "DEFAULT_API_KEY_ENV", "HFLocalClient", "LLMError", "MAX_REDIRECTS",
    "OpenAICompatibleClient", "TextClient", "client_identity", "is_env_var_name",
    "is_loopback",
]
