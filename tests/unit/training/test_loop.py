"""Gradient checkpointing and packing change memory and speed, not the result."""

import copy

import pytest

from mbdefense.data.suite import generate
from mbdefense.training.config import TrainConfig
from mbdefense.training.sft import finetune


def test_gradient_checkpointing_gives_the_same_training(tiny_model, tokenizer):
    data = generate(24, 0)
    plain_cfg = TrainConfig(epochs=1, learning_rate=1e-3, batch_size=8, progress=False)
    ckpt_cfg = TrainConfig(epochs=1, learning_rate=1e-3, batch_size=8, progress=False,
                           gradient_checkpointing=True)
    _, plain = finetune(copy.deepcopy(tiny_model), tokenizer, data, plain_cfg)
    model, ckpt = finetune(copy.deepcopy(tiny_model), tokenizer, data, ckpt_cfg)
    assert len(plain) == len(ckpt) == 3
    assert ckpt == pytest.approx(plain, rel=1e-4)
    assert not model.is_activation_checkpointing     # switched off again for generation


def test_packed_batches_train_as_padded_ones(tiny_model, tokenizer, monkeypatch):
    from mbdefense.training import logprobs

    data = generate(24, 0)
    cfg = TrainConfig(epochs=1, learning_rate=1e-3, batch_size=8, progress=False)
    assert logprobs.packs_sequences(tiny_model)
    _, packed = finetune(copy.deepcopy(tiny_model), tokenizer, data, cfg)
    monkeypatch.setattr(logprobs, "packs_sequences", lambda model: False)
    _, padded = finetune(copy.deepcopy(tiny_model), tokenizer, data, cfg)
    assert len(packed) == len(padded) == 3
    assert packed == pytest.approx(padded, rel=1e-5)


def test_progress_into_a_log_writes_a_few_lines_not_one_per_step(tiny_model, tokenizer, capsys):
    """Into a file (not a terminal) the bar draws at its start and end and every 30 s: a
    short run leaves a couple of lines, with the last loss, however many steps it takes."""
    data = generate(64, 0)
    cfg = TrainConfig(epochs=2, learning_rate=1e-3, batch_size=4, description="log check")
    finetune(copy.deepcopy(tiny_model), tokenizer, data, cfg)
    draws = [d for d in capsys.readouterr().err.replace("\r", "\n").splitlines()
             if "log check" in d]
    assert 1 <= len(draws) <= 4, draws            # 32 steps
    assert any("32/32" in d and "loss=" in d for d in draws), draws


@pytest.mark.parametrize("precision, expected", [("bf16", "bfloat16"), ("fp32", "float32"),
                                                 ("auto", "float32")])
@pytest.mark.filterwarnings("ignore:precision bf16 on a CPU without")
def test_bf16_autocasts_on_the_cpu_when_asked(tiny_model, tokenizer, precision, expected):
    """``precision: bf16`` runs the training forward in bf16 on a CPU too (it used to
    autocast for CUDA only, a silent no-op here); ``auto`` stays fp32 on a CPU."""
    import torch

    model = copy.deepcopy(tiny_model)
    seen: set[str] = set()
    layer = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    hook = layer.register_forward_hook(lambda mod, args, out: seen.add(str(out.dtype)))
    cfg = TrainConfig(epochs=1, learning_rate=1e-3, batch_size=8, progress=False,
                      precision=precision)
    try:
        trained, losses = finetune(model, tokenizer, generate(16, 0), cfg)
    finally:
        hook.remove()
    assert seen == {f"torch.{expected}"}
    assert all(loss == loss and loss < 20 for loss in losses)    # finite, a real loss
    assert next(trained.parameters()).dtype == torch.float32       # the weights stay fp32


def test_bf16_on_a_cpu_without_bf16_instructions_warns(tmp_path, monkeypatch):
    """Asked for bf16 where the CPU would emulate it (many times slower than fp32), the user
    is told; where it has the instructions, or the flags are unknown, nothing is said."""
    import warnings

    import torch

    from mbdefense.training import runtime

    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n")
    assert runtime.cpu_has_bf16_matmul(avx2) is False
    assert runtime.cpu_has_bf16_matmul(amx) is True
    assert runtime.cpu_has_bf16_matmul(tmp_path / "absent") is None
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert runtime.cpu_has_bf16_matmul(tmp_path / "arm") is None

    cpu = torch.device("cpu")
    for has, precision, warned in [(False, "bf16", True), (True, "bf16", False),
                                   (None, "bf16", False), (False, "fp32", False),
                                   (False, "auto", False)]:
        monkeypatch.setattr(runtime, "cpu_has_bf16_matmul", lambda has=has: has)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert runtime.resolve_precision(precision, cpu) == (
                "fp32" if precision == "auto" else precision)
        said = [str(w.message) for w in caught if w.category is RuntimeWarning]
        assert bool(said) == warned, (has, precision, said)
        assert not said or "use precision fp32 or auto" in said[0]
