"""A local transformers causal LM as a text client (the judge or the paraphraser without any
endpoint): the prompt as the user turn of the model's chat template, greedy decoding."""

from __future__ import annotations

import os
import threading
from typing import Any

from mbdefense.core.errors import ConfigError

__all__ = ["HFLocalClient"]


class HFLocalClient:
    """``model_path_or_obj`` is a folder or hub id (loaded with ``trust_remote_code=False``)
    or a loaded model, in which case ``tokenizer`` is required. Generation is serialised with
    a lock, so a thread pool can share one model. ``identity`` is ``hf:PATH`` (or the loaded
    model's ``name_or_path``)."""

    def __init__(self, model_path_or_obj: Any, tokenizer: Any = None,
                 max_new_tokens: int = 256, *, label: str = "llm") -> None:
        self.label = label
        if isinstance(model_path_or_obj, (str, os.PathLike)):
            from mbdefense.modeling.loading import load_pretrained

            path = str(model_path_or_obj)
            try:
                model, loaded = load_pretrained(path, trust_remote_code=False)
            except OSError as exc:
                raise ConfigError(f"{label}: cannot load '{path}': "
                                  f"{str(exc).splitlines()[0]}") from None
            self.identity = f"hf:{path}"
            self.model, self.tokenizer = model, tokenizer or loaded
        else:
            if tokenizer is None:
                raise ConfigError(f"{label}: a loaded model needs its tokenizer")
            self.model, self.tokenizer = model_path_or_obj, tokenizer
            name = getattr(model_path_or_obj, "name_or_path", "") or ""
            self.identity = f"hf:{name or type(model_path_or_obj).__qualname__}"
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ConfigError(f"{label}: the local model's tokenizer has no chat template")
        if int(max_new_tokens) < 1:
            raise ConfigError(f"{label}: max_new_tokens must be >= 1, got {max_new_tokens}")
        self.max_new_tokens = int(max_new_tokens)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HFLocalClient({self.identity!r}, max_new_tokens={self.max_new_tokens})"

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
