"""One small training (SFT, then stage 2), run plainly or under ``accelerate launch``.

Rank 0 writes the step losses, the optimizer steps, stage 2's eval losses and the final
weights to ``--out`` (torch.save), for tests/unit/training/test_distributed.py to compare.
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from mbdefense.data.suite import generate
    from mbdefense.defenses.defensive_triggers import make_defensive_pairs
    from mbdefense.defenses.neutralization import NeutralizationConfig, neutralize
    from mbdefense.modeling.embedded import TinyModelConfig, build_tiny_model, train_tokenizer
    from mbdefense.runs.embedded import tokenizer_corpus
    from mbdefense.training.config import TrainConfig
    from mbdefense.training.sft import finetune

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = {"count": 0}
    register_optimizer_step_post_hook(lambda *_: steps.update(count=steps["count"] + 1))

    tokenizer = train_tokenizer(tokenizer_corpus(), 512)
    model = build_tiny_model(tokenizer, TinyModelConfig(hidden_size=32, num_layers=1,
                                                        num_heads=2, intermediate_size=64))
    # 37 examples in batches of 8: the last batch (5) splits unevenly over 2 processes
    sft = TrainConfig(epochs=2, learning_rate=1e-3, batch_size=8, grad_accum=2, progress=False)
    model, sft_losses = finetune(model, tokenizer, generate(37, 0), sft)
    sft_steps = steps["count"]
    stage2 = NeutralizationConfig(margin=1.0, triggers_per_step="all", train=TrainConfig(
        epochs=2, learning_rate=1e-3, batch_size=3, progress=False))
    model, info = neutralize(model, tokenizer, generate(11, 1), make_defensive_pairs()[:2],
                             stage2, seed=0)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save({"sft_losses": sft_losses, "sft_steps": sft_steps,
                    "stage2_steps": steps["count"] - sft_steps,
                    "stage2_eval": [h["loss"] for h in info["history"]],
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                    "world": int(os.environ.get("WORLD_SIZE", "1"))}, args.out)


if __name__ == "__main__":
    main()
