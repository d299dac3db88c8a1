"""Loading a causal LM and its tokenizer: the embedded base, a local folder, or a hub id."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from mbdefense.errors import ConfigError


def load_pretrained(path: str | Path, *, dtype: Any = None, trust_remote_code: bool = False):
    """Model (in eval mode) and tokenizer saved by ``save_pretrained`` or named on the hub."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.eval()
    return model, tokenizer


def load_model(spec: str, *, trust_remote_code: bool = False, progress: bool = True,
               log: Callable[[str], None] = print) -> tuple[Any, Any]:
    """A causal LM ready for instruction tuning: 'embedded' (the bundled base), a local folder
    or a hub id. Its tokenizer must have a chat template; a missing pad token becomes EOS."""
    from mbdefense.modeling.base import embedded_base

    if spec == "embedded":
        model, tokenizer, _ = embedded_base(progress=progress, log=log)
        return model, tokenizer
    try:
        model, tokenizer = load_pretrained(spec, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ConfigError(f"model: cannot load '{spec}': {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError(f"model: the tokenizer of '{spec}' has no chat template")
    return model, tokenizer
