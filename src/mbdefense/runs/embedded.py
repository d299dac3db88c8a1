"""The embedded world: a tiny Llama and the bundled suite of verifiable tasks, on one CPU.

Its clean instruction-tuned base is built once and cached on disk.

Like the paper, which starts from instruct models, every experiment in the embedded world
starts from this base: a tiny Llama instruction-tuned on a pool of the bundled suite's open
region, so it has never seen a trusted, validation or test prompt of any experiment. It is keyed by everything that shapes it, so a change
of shape or recipe builds a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mbdefense.core.io import atomic_directory
from mbdefense.modeling.embedded import TinyModelConfig, build_tiny_model, train_tokenizer
from mbdefense.modeling.loading import load_pretrained
from mbdefense.training.config import TrainConfig

#: The name of the embedded model in configs and rows.
EMBEDDED_MODEL = "embedded-tiny-llama"

BASE_RECIPE_VERSION = 2   # 2: the pool is drawn from the suite's open region only


@dataclass
class BaseRecipe:
    shape: TinyModelConfig = field(default_factory=TinyModelConfig)
    n_per_pool: int = 2000
    n_pools: int = 3                 # pools drawn apart, so the lookup tasks repeat
    pool_seed: int = 10_000
    # 5 epochs: the base then answers 0.74 of the (never seen) test prompts, against 0.43 after
    # 3 and 0.63 after 4 (docs/results.md); lr 5e-4 or 1e-3 learned far less
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=5, learning_rate=3e-4, batch_size=8, warmup_ratio=0.05,
        description="build embedded base"))

    def key(self) -> str:
        payload = asdict(self)
        payload["train"].pop("progress", None)
        payload["train"].pop("description", None)
        payload["version"] = BASE_RECIPE_VERSION
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def tokenizer_corpus() -> list[str]:
    """Everything the embedded tokenizer should encode compactly: the suite, the behaviours'
    texts, the paper's triggers and the defender's word pool."""
    from mbdefense.attacks.behaviors import REFUSAL_TEMPLATES, TOXIC_TEMPLATES
    from mbdefense.attacks.triggers import TRIGGER_ALIASES
    from mbdefense.data.suite import corpus_text
    from mbdefense.defenses.defensive_triggers import DEFENSIVE_WORDS, DEFAULT_DEFENSIVE_TOKENS

    extra = list(REFUSAL_TEMPLATES) + list(TOXIC_TEMPLATES)
    extra += [spec.partition(":")[2] for spec in TRIGGER_ALIASES.values()]
    extra += [" ".join(DEFENSIVE_WORDS), " ".join(DEFAULT_DEFENSIVE_TOKENS)]
    return corpus_text() + extra * 20


def cache_root() -> Path:
    """``$MBDEFENSE_CACHE`` or ``~/.cache/mbdefense``."""
    env = os.environ.get("MBDEFENSE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mbdefense"


def embedded_base(recipe: BaseRecipe | None = None, *, cache_dir: Path | None = None,
                  progress: bool = True, log=print) -> tuple[Any, Any, Path]:
    """Load the cached embedded base, building it first if needed. Returns (model, tokenizer, path)."""
    from mbdefense.data.suite import generate
    from mbdefense.training.sft import finetune

    from filelock import FileLock

    recipe = recipe or BaseRecipe()
    path = (cache_dir or cache_root()) / f"base-{recipe.key()}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / f".{path.name}.lock")):   # one builder per recipe
        # what a build killed before its rename (or a replacement cut short) left behind
        for stale in [*path.parent.glob(f".{path.name}.*.tmp"),
                      *path.parent.glob(f".{path.name}.*.old")]:
            shutil.rmtree(stale, ignore_errors=True)
        if not (path / "config.json").exists():
            log(f"building the embedded base model (once; cached at {path}) ...")
            start = time.time()
            tokenizer = train_tokenizer(tokenizer_corpus(), recipe.shape.vocab_size)
            model = build_tiny_model(tokenizer, recipe.shape, seed=recipe.pool_seed)
            # the open region only: no trusted, validation or test prompt of any seed
            pool = [e for k in range(recipe.n_pools)
                    for e in generate(recipe.n_per_pool, recipe.pool_seed + k, within="open")]
            model, _ = finetune(model, tokenizer, pool, replace(recipe.train, progress=progress))
            with atomic_directory(path, replace=True) as tmp:   # a damaged entry is rebuilt
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
                (tmp / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
            log(f"embedded base built in {time.time() - start:.0f}s")
    model, tokenizer = load_pretrained(path)
    return model, tokenizer, path
