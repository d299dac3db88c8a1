"""Loading a causal LM and its tokenizer: a registry name (the embedded base, SmolLM2 from
GGUF, ...), a local folder, a local ``.gguf`` file or a hub id (see
:func:`mbdefense.modeling.registry.resolve_model`)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from mbdefense.core.errors import ConfigError

#: The dtype names :func:`load_model` accepts (``None`` leaves the choice to transformers).
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(dtype: Any, *, gguf: bool = False) -> Any:
    """``None``, a torch dtype or one of :data:`DTYPE_CHOICES` -> what ``from_pretrained``
    takes. A GGUF model is dequantised, so ``None`` and ``"auto"`` give float32 there (a
    trainable model)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None and dtype not in DTYPE_CHOICES:
        raise ConfigError(f"model: unknown dtype {dtype!r}; choose one of "
                          f"{', '.join(DTYPE_CHOICES)}")
    if gguf and dtype in (None, "auto"):
        return torch.float32
    if dtype in (None, "auto"):
        return dtype
    return getattr(torch, dtype)


def load_pretrained(path: str | Path, *, dtype: Any = None, trust_remote_code: bool = False,
                    gguf_file: str | None = None):
    """Model (in eval mode) and tokenizer saved by ``save_pretrained``, named on the hub, or
    read from ``gguf_file`` inside the folder ``path`` (dequantised; float32 unless ``dtype``
    says otherwise)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        common["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(path, **common)
    kwargs = dict(common)
    dtype = resolve_dtype(dtype, gguf=gguf_file is not None)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if gguf_file is not None:
        try:  # newer transformers can keep GGUF weights packed (not trainable): unpack them
            from transformers import GgufConfig
        except ImportError:  # pragma: no cover - older transformers always unpack
            pass
        else:
            kwargs["quantization_config"] = GgufConfig(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    quantizer = getattr(model, "hf_quantizer", None)
    if gguf_file is not None and quantizer is not None:
        # The weights are plain tensors now; dropping the GGUF quantizer makes the model
        # trainable and savable with save_pretrained like any other.
        quantizer.remove_quantization_config(model)
    model.eval()
    return model, tokenizer


@contextlib.contextmanager
def _progress_bars(enabled: bool, *, gguf: bool = False) -> Iterator[None]:
    """Loading's progress bars on or off: transformers' own and, for a ``gguf`` load, the
    conversion's, a plain tqdm that transformers' switch does not reach."""
    from transformers.utils import logging as hf_logging

    if enabled:
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled:
        hf_logging.disable_progress_bar()
    try:
        with _quiet_gguf_conversion() if gguf else contextlib.nullcontext():
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _quiet_gguf_conversion() -> Iterator[None]:
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:       # no GGUF support in this transformers: nothing to quiet
        gguf_utils = None
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def load_model(spec: str, *, dtype: Any = None, trust_remote_code: bool = False,
               chat_template: str | None = None, progress: bool = True,
               log: Callable[[str], None] = print, device: Any = "auto") -> tuple[Any, Any]:
    """A causal LM ready for instruction tuning: a registry name (e.g. 'smollm2-135m'), a local
    folder, a local ``.gguf`` file or a hub id. (The embedded base is the embedded world's:
    :func:`mbdefense.runs.workload.load_base` loads every kind.)

    ``dtype`` is one of :data:`DTYPE_CHOICES` or None (the checkpoint's default; float32 for
    GGUF, whose weights are dequantised). Remote code runs only with
    ``trust_remote_code=True``. The tokenizer must have a chat template; a missing pad token
    becomes EOS; ``chat_template`` gives one to a base model without its own. Raises :class:`~mbdefense.core.errors.ConfigError` when the model cannot be
    found or loaded. ``device="auto"`` puts the model on this process's GPU when there is
    one (:func:`mbdefense.training.runtime.default_device`), else leaves it on the CPU."""
    from mbdefense.modeling.registry import resolve_model
    from mbdefense.training.runtime import default_device

    if device == "auto":
        device = default_device()

    source = resolve_model(spec)
    torch_dtype = resolve_dtype(dtype)  # reject a bad dtype before the (slow) load
    if source.kind == "embedded":
        raise ConfigError("model: the embedded base is built by the embedded world; load it "
                          "with mbdefense.runs.workload.load_base")
    if source.kind == "gguf":
        log(f"loading {source.label} from GGUF (dequantising) ...")
    try:
        with _progress_bars(progress, gguf=source.kind == "gguf"):
            model, tokenizer = load_pretrained(source.path, dtype=dtype,
                                               trust_remote_code=trust_remote_code,
                                               gguf_file=source.gguf_file)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"model: cannot load '{spec}': {first}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model, "generation_config", None) is not None \
            and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError(f"model: the tokenizer of '{spec}' has no chat template; give one "
                          f"(model.chat_template in a config, --chat-template on the command "
                          f"line)")
    return model.to(device), tokenizer
