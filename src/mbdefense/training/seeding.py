"""Seeded torch randomness for a training run: LoRA's initial weights and dropout masks.

Data order and trigger positions use their own ``random.Random(seed)`` objects; what torch
draws (LoRA's ``lora_A`` initialisation, dropout masks) comes from torch's global generators.
:func:`seeded` seeds them inside a fork of their state, so a training run draws the same
numbers whatever ran before it, and the caller's generators are left exactly as they were
(Python's and NumPy's global generators are not used by training and are not touched).

On the CPU the same seed and config give the same weights, bit for bit. On a GPU the draws are
the same too and cuDNN is asked for deterministic algorithms while the run lasts, but some CUDA
kernels (atomic adds in backward passes, such as embedding gradients) sum in a varying order,
so weights agree closely rather than bit for bit. torch's global
``torch.use_deterministic_algorithms(True)`` would close that gap but raises on operations
without a deterministic kernel (and needs ``CUBLAS_WORKSPACE_CONFIG``), so it is not set here;
a user who wants it can set it before the run.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Iterator


def derive_seed(seed: int, purpose: str) -> int:
    """A torch seed for one use of ``seed`` (LoRA init and dropout get independent streams)."""
    digest = hashlib.sha256(f"{purpose}:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1     # below 2**63


@contextlib.contextmanager
def seeded(seed: int, purpose: str, device: Any = None) -> Iterator[None]:
    """Run the block with torch's CPU generator (and ``device``'s, when it is a GPU) seeded
    from ``seed`` and ``purpose``; restore the generators and cuDNN flags afterwards."""
    import torch

    value = derive_seed(seed, purpose)
    cuda = device is not None and getattr(device, "type", str(device)).startswith("cuda")
    index = None
    if cuda:
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
    cudnn = torch.backends.cudnn
    flags = (cudnn.deterministic, cudnn.benchmark)
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.default_generator.manual_seed(value)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(value)
            cudnn.deterministic, cudnn.benchmark = True, False
        try:
            yield
        finally:
            cudnn.deterministic, cudnn.benchmark = flags


def device_of(model: Any) -> Any:
    """The device of ``model``'s first parameter (``None`` for a model without any)."""
    for param in model.parameters():
        return param.device
    return None


__all__ = ["derive_seed", "device_of", "seeded"]
