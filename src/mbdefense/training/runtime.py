"""Where training runs: one process (CPU or one GPU), or several under ``accelerate launch``.

Every process walks the same global batches in the same order (they are seeded); each takes its
shard of every batch (``batch.shard(rank, world)``) and the losses are normalised by the whole
batch's counts, so the averaged gradients are exactly the single-process gradients. DDP, FSDP
and DeepSpeed come from the accelerate config the run was launched with
(``configs/accelerate/``); a plain ``python``/``mbdefense`` run is a single process and needs
no accelerate machinery at all.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, TypeVar

ShardT = TypeVar("ShardT", bound="Shardable")


class Shardable(Protocol):
    def shard(self: ShardT, rank: int, world: int) -> ShardT:
        """This process's part of a global batch (never empty: a process without items gets
        one item with zero weight, so every process runs the same forward and backward)."""


def launched_world_size() -> int:
    """Processes started by ``accelerate launch``/``torchrun`` (1 for a plain run)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def launched_with_sharded_weights() -> bool:
    """Whether ``accelerate launch`` asked for an engine that shards the weights (FSDP, or
    DeepSpeed ZeRO-3), read from the variables it sets for its processes."""
    def flag(name: str) -> bool:
        return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")

    if launched_world_size() <= 1:
        return False
    return flag("ACCELERATE_USE_FSDP") or (
        flag("ACCELERATE_USE_DEEPSPEED")
        and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "").strip() == "3")


def is_main_process() -> bool:
    """True except in the second and later processes of a launch (they write nothing)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def default_device() -> Any:
    """This process's GPU (``cuda:LOCAL_RANK``) when there is one, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
    return torch.device("cpu")


@functools.lru_cache(maxsize=None)
def cpu_has_bf16_matmul(cpuinfo: str | Path = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX), from the flags
    of ``cpuinfo``; None where that does not say (not Linux x86)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), None)
    return None if flags is None else bool({"avx512_bf16", "amx_bf16"} & set(flags))


def resolve_precision(precision: str, device: Any) -> str:
    """``auto`` -> ``bf16`` on a GPU that supports it, else ``fp32``. ``bf16`` asked for
    explicitly also autocasts on a CPU (up to about twice as fast where it has bf16 matrix
    instructions, AVX512-BF16 or AMX; slower where it has not, so ``auto`` leaves it off)."""
    import torch

    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    kind = getattr(device, "type", str(device))
    if precision == "bf16" and kind == "cpu" and cpu_has_bf16_matmul() is False:
        import warnings

        warnings.warn("precision bf16 on a CPU without bf16 matrix instructions (no "
                      "avx512_bf16 or amx_bf16 in /proc/cpuinfo): torch emulates them, many "
                      "times slower than fp32 (docs/performance.md); use precision fp32 or "
                      "auto here", RuntimeWarning, stacklevel=2)
    if precision != "auto":
        return precision
    if kind == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


@dataclass
class Runtime:
    """The processes of one training run and what differs between one and many."""

    accelerator: Any = None
    precision: str = "fp32"
    device_type: str = "cpu"      # where a single process autocasts: the model's device

    @classmethod
    def for_run(cls, model: Any, precision: str = "auto", grad_accum: int = 1) -> "Runtime":
        """A single-process runtime, or an accelerate one when launched with several
        processes (its mixed precision then comes from the accelerate config)."""
        if launched_world_size() > 1:
            import torch
            from accelerate import Accelerator

            # without GPUs the processes talk over gloo (accelerate's MULTI_CPU)
            return cls(accelerator=Accelerator(gradient_accumulation_steps=grad_accum,
                                               cpu=not torch.cuda.is_available()))
        device = next(model.parameters()).device
        return cls(precision=resolve_precision(precision, device), device_type=device.type)

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator else 0

    @property
    def world(self) -> int:
        return self.accelerator.num_processes if self.accelerator else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare(self, model: Any, optimizer: Any) -> tuple[Any, Any]:
        """The model and optimizer wrapped for the launch's engine. The LR scheduler stays
        ours: accelerate would step it once per process for every optimizer step."""
        if self.accelerator is None:
            return model, optimizer
        return self.accelerator.prepare(model, optimizer)

    def local(self, batch: ShardT) -> ShardT:
        return batch if self.world == 1 else batch.shard(self.rank, self.world)

    def scale(self, loss: Any) -> Any:
        """The gradient all-reduce averages over processes; each shard's loss is already a
        part of the whole batch's, so it is multiplied back by the number of processes."""
        return loss * self.world

    @contextlib.contextmanager
    def forward_context(self) -> Iterator[None]:
        """bf16 autocast for a single process, on the model's device (GPU or CPU); a
        distributed engine's model goes through its own forward (which also casts, per the
        accelerate config)."""
        import torch

        from mbdefense.training.logprobs import whole_model_forward

        if self.accelerator is not None:
            with whole_model_forward():
                yield
        elif self.precision == "bf16":
            with torch.autocast(self.device_type, dtype=torch.bfloat16):
                yield
        else:
            yield

    @contextlib.contextmanager
    def accumulate(self, model: Any, sync: bool) -> Iterator[None]:
        """Skip the gradient all-reduce on micro-batches that don't end an optimizer step."""
        if self.accelerator is None or sync:
            yield
        else:
            with self.accelerator.no_sync(model):
                yield

    def backward(self, loss: Any, grad_accum: int) -> None:
        """Backward of one micro-batch's share of an optimizer step (accelerate divides by
        its ``gradient_accumulation_steps`` itself)."""
        if self.accelerator is None:
            (loss / grad_accum).backward()
        else:
            self.accelerator.backward(loss)

    def clip(self, model: Any, params: list[Any], max_norm: float) -> None:
        import torch

        if self.accelerator is None:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        else:
            self.accelerator.clip_grad_norm_(model.parameters(), max_norm)

    def global_value(self, local_loss: Any) -> float:
        """The whole batch's loss from the shards' parts (their sum over processes)."""
        if self.accelerator is None:
            return float(local_loss.detach())
        import torch.distributed as dist

        value = local_loss.detach().clone()
        dist.all_reduce(value)
        return float(value)

    def finish(self, model: Any) -> Any:
        """The trained model as a plain, whole module on every process (evaluation, the next
        stage and saving use it outside the engine)."""
        if self.accelerator is None:
            return model
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        plain = accelerator.unwrap_model(model)
        if not self.shards_weights():
            return plain  # DDP, ZeRO-1/2: every process already holds all the weights
        # FSDP / ZeRO-3: gather the full weights (on the first process), pass them through a
        # file on this node and load them into every process's module
        state = accelerator.get_state_dict(model)
        handoff = Path(tempfile.gettempdir()) / f"mbdefense-weights-{os.getppid()}.pt"
        if accelerator.is_main_process:
            import torch

            torch.save(state, handoff)
        accelerator.wait_for_everyone()
        whole = _load_whole(plain, handoff)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            handoff.unlink(missing_ok=True)
        return whole

    def shards_weights(self) -> bool:
        from accelerate.utils import DistributedType

        accelerator = self.accelerator
        if accelerator.distributed_type == DistributedType.FSDP:
            return True
        if accelerator.distributed_type == DistributedType.DEEPSPEED:
            return accelerator.state.deepspeed_plugin.zero_stage == 3
        return False


def _load_whole(sharded: Any, path: Path) -> Any:
    """A fresh module of ``sharded``'s class and config with the saved full weights."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    model = type(sharded)._from_config(sharded.config, dtype=next(iter(state.values())).dtype)
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model.to(default_device())
