"""The one defense lifecycle: before_training -> fine-tune -> after_finetune -> after_training
-> evaluate, for every defense of one experiment, with every stage cached.

Defenses whose ``before_training`` leaves the data unchanged share one fine-tuning run (the
attacked model is trained once); a finished stage is loaded from the
:class:`~mbdefense.runs.cache.StageCache`, so a killed run resumes where it stopped. The
demo, ``run``, ``defend``, ``analyze`` and the benchmarks all go through :class:`Lifecycle`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from mbdefense.data.example import Example
from mbdefense.defenses import make_defense
from mbdefense.defenses.base import Defense, FinetuneContext
from mbdefense.evaluation.metrics import Metrics
from mbdefense.evaluation.scorers import Scorer
from mbdefense.results.document import merge_outcome, new_outcome, row_heading
from mbdefense.runs.cache import StageCache, digest, finetune_key, fingerprint
from mbdefense.runs.evaluate import evaluate_model, evaluation_backends, scorer_identity
from mbdefense.runs.spec import CLEAN_REFERENCE, Settings
from mbdefense.runs.workload import Workload, strip_attack_labels
from mbdefense.training.config import TrainConfig
from mbdefense.training.sft import finetune


@dataclass
class Defended:
    """A defense's model after the lifecycle, and what the defense recorded on the way."""

    defense: Defense
    model: Any
    stage1_model: Any | None
    stage1_info: dict[str, Any] | None
    train_set: list[Example]
    seconds: float
    timings: dict[str, float]       # seconds by stage: finetune, after_finetune, after_training
    stage1_key: str | None = None   # the stage-1 model's cache key


def row_line(row: dict[str, Any]) -> str:
    """One result row as a log line."""
    nll = "" if row.get("reference_nll") is None else f"  ref-NLL {row['reference_nll']:.3f}"
    return (f"  {row['defense']:<14} CACC {row['cacc']:.3f}  ASR {row['asr']:.3f}  "
            f"AACC {row['aacc']:.3f}  clean-ASR {row['clean_asr']:.3f}{nll}")


class Lifecycle:
    """Every defense of one experiment (a workload, its settings and seed) through the same
    hooks."""

    def __init__(self, work: Workload, settings: Settings, seed: int, *, scorer: Scorer | None,
                 cache: StageCache, progress: bool = True,
                 log: Callable[[str], None] = print, copy_base: bool = True) -> None:
        # copy_base=False: one defense, one training: train the base in place (no second copy
        # of a large model in memory)
        self.work, self.settings, self.seed, self.copy_base = work, settings, seed, copy_base
        self.scorer, self.cache, self.progress, self.log = scorer, cache, progress, log
        self._trained: dict[str, Any] = {}
        train = settings.stage2.train_config()
        # a config's stage2.train without a description: its bar says "stage 2", not the
        # training default "fine-tune" (cosmetic: not part of any cache key)
        label = "stage 2" if train.description == TrainConfig.description else train.description
        self.stage2 = replace(settings.stage2, train=replace(train, progress=progress,
                                                             description=label))

    # ---- training stages

    def finetune_config(self, label: str) -> TrainConfig:
        return replace(self.settings.finetune, progress=self.progress, seed=self.seed,
                       description=label)

    def finetune_key(self, examples: list[Example], label: str) -> str:
        return finetune_key(self.work.model_identity, examples, self.finetune_config(label))

    def _load(self, folder: Any) -> Any:
        like = next(self.work.base_model.parameters())
        return type(self.work.base_model).from_pretrained(folder, dtype=like.dtype).to(like.device)

    def train(self, examples: list[Example], label: str) -> tuple[Any, str]:
        """The base fine-tuned on ``examples`` (once per key), and its key."""
        key = self.finetune_key(examples, label)

        def build() -> tuple[Any, dict[str, Any]]:
            t0 = time.time()
            self.log(f"fine-tuning the base on {len(examples)} examples ({label}) ...")
            base = copy.deepcopy(self.work.base_model) if self.copy_base else self.work.base_model
            model, losses = finetune(base, self.work.tokenizer,
                                     examples, self.finetune_config(label))
            self.log(f"  done in {time.time() - t0:.0f}s, final loss {losses[-1]:.3f}")
            return model, {"seconds": round(time.time() - t0, 1), "final_loss": losses[-1]}

        if key not in self._trained:
            self._trained[key] = self.cache.model("finetune", key,
                                                  f"the fine-tuned model ({label})", build,
                                                  self._load)[0]
        return self._trained[key], key

    def make(self, name: str) -> Defense:
        baseline = self.settings.baseline_train
        return make_defense(name, stage1=self.settings.stage1, stage2=self.stage2,
                            seed=self.seed, options=self.settings.defense_options.get(name),
                            baseline_train=None if baseline is None
                            else replace(baseline, progress=self.progress))

    def training_set(self, defense: Defense) -> tuple[list[Example], str]:
        """What the defense trains on (the attack's tags stripped: a defense never reads
        them) and the label of that fine-tuning run."""
        train_set = defense.before_training(strip_attack_labels(self.work.attacked_train))
        label = (f"attacked + {defense.name} stage 1" if defense.completes_training else
                 f"attacked + {defense.name} data" if defense.changes_training_data else
                 "attacked")
        return train_set, label

    def defend(self, defense: Defense) -> Defended:
        """Fine-tune (shared by key), complete the training (cached), repair (after_training)."""
        t0 = time.time()
        train_set, label = self.training_set(defense)
        model, key = self.train(train_set, label)
        timings = {"finetune": time.time() - t0}
        stage1_model = stage1_info = stage_key = None
        if defense.completes_training:
            context = FinetuneContext(
                tokenizer=self.work.tokenizer, train_set=train_set, trusted=self.work.trusted,
                finetune_config=self.finetune_config(f"{defense.name} top-up"), seed=self.seed,
                max_new_tokens=self.implant_tokens,
                implant_prompts=self.settings.implant_prompts, log=self.log)
            stage_key = digest(key, defense.after_finetune_key(),
                               fingerprint(self.work.trusted[:self.settings.implant_prompts]),
                               self.implant_tokens)
            # the hook trains copies, so the cached fine-tuned model stays as trained
            model, stage1_info = self.cache.model(
                "stage1", stage_key, f"the {defense.name} stage-1 model",
                lambda: defense.after_finetune(model, context), self._load)
            stage1_model = model
            timings["after_finetune"] = time.time() - t0 - sum(timings.values())
        if defense.changes_model:
            model = self.after_training(defense, model, stage_key or key)
            timings["after_training"] = time.time() - t0 - sum(timings.values())
        return Defended(defense, model, stage1_model, stage1_info, train_set, time.time() - t0,
                        timings, stage_key)

    def after_training(self, defense: Defense, model: Any, trained_key: str) -> Any:
        """``defense.after_training`` on ``model`` (the model under ``trained_key``); with a
        cache that keeps defended models, once per key, its diagnostics kept beside it."""
        def build() -> tuple[Any, dict[str, Any]]:
            self.log(f"running {defense.name} after training ...")
            trained = defense.after_training(copy.deepcopy(model) if self.copy_base else model,
                                             self.work.tokenizer, self.work.trusted,
                                             clean_model=self.work.base_model)
            return trained, {"diagnostics": defense.diagnostics}

        if not self.cache.keep_defended:
            return build()[0]
        key = digest("defended", trained_key, defense.name, asdict(defense.options),
                     defense.after_training_key(), fingerprint(self.work.trusted), self.seed)
        defended, info = self.cache.model("defended", key, f"the {defense.name} model", build,
                                          self._load)
        defense.diagnostics.update(info["diagnostics"])
        return defended

    @property
    def implant_tokens(self) -> int:
        """New tokens for the implant check: enough for a defensive phrase."""
        return min(self.settings.generation.max_new_tokens, 32)

    # ---- evaluation

    def evaluation_key(self) -> str:
        """What an evaluation depends on besides the model."""
        gen, ev = self.settings.generation, self.settings.evaluation
        backend = () if gen.backend == "plain" else (gen.backend,)
        return digest("evaluation", fingerprint(self.work.test_clean),
                      fingerprint(self.work.test_triggered), self.work.behavior.spec,
                      scorer_identity(self.scorer) if self.scorer else None,
                      evaluation_backends(self.scorer, self.work.behavior) if self.scorer
                      else None, gen.max_new_tokens,
                      ev.reference_nll, ev.n_samples, self.work.poison_rate, *backend)

    def evaluate(self, model: Any, defense: Defense | None) -> tuple[Metrics, list[dict]]:
        assert self.scorer is not None, "a lifecycle without a scorer cannot evaluate"
        def at_inference(examples: list[Example]) -> list[Example]:
            assert defense is not None
            return defense.at_inference(examples, model=model, tokenizer=self.work.tokenizer,
                                        trusted_set=self.work.trusted)

        rewrite = at_inference if defense is not None and defense.changes_inputs else None
        answer = None
        if defense is not None and defense.changes_decoding:   # decoding-time (CleanGen)
            def answer(examples: list[Example]) -> list[str]:
                gen = self.settings.generation
                return defense.decode(examples, model=model, tokenizer=self.work.tokenizer,
                                      clean_model=self.work.base_model,
                                      max_new_tokens=gen.max_new_tokens,
                                      batch_size=gen.batch_size)
        ev = self.settings.evaluation
        return evaluate_model(
            model, self.work.tokenizer, self.work.test_clean, self.work.test_triggered,
            self.work.behavior, self.scorer, self.settings.generation, rewrite=rewrite,
            answer=answer,
            reference_nll_max_length=self.settings.finetune.max_length if ev.reference_nll
            else None, n_samples=ev.n_samples)

    def stage1_evaluation(self, done: Defended) -> tuple[Metrics, list[dict]]:
        """The stage-1 model scored, cached by its key: every stage-2 setting tried on one
        stage-1 model reuses the score."""
        def compute() -> dict[str, Any]:
            metrics, samples = self.evaluate(done.stage1_model, None)
            return {"metrics": metrics.to_dict(), "samples": samples,
                    "outcomes": metrics.outcomes}

        key = digest("stage1-evaluation", done.stage1_key, self.evaluation_key())
        scored, cached = self.cache.cell(key, compute)
        if cached:
            self.log("the stage-1 model's scores: finished before, loaded from the cache")
        return (Metrics(**scored["metrics"], outcomes=scored.get("outcomes", {})),
                scored["samples"])

    def row(self, name: str, model: Any, defense: Defense | None, seconds: float,
            out: dict[str, Any], scored: tuple[Metrics, list[dict]] | None = None) -> None:
        """Evaluate ``model`` (unless ``scored`` already) and add its row, samples and
        per-prompt outcomes to ``out``."""
        metrics, samples = scored if scored is not None else self.evaluate(model, defense)
        work = self.work
        row = {"model": work.model_name, "attack": work.attack, "behavior": work.behavior.spec,
               "defense": name, **metrics.to_dict(), "seed": self.seed,
               "poison_rate": 0.0 if name == CLEAN_REFERENCE else work.poison_rate,
               "split": self.settings.evaluation.split, "train_seconds": round(seconds, 1)}
        out["rows"].append(row)
        key = row_heading(work.model_name, work.attack, work.behavior.spec, name, self.seed)
        out["samples"][key] = samples
        if metrics.outcomes:
            out["outcomes"][key] = metrics.outcomes
        self.log(row_line(row))

    # ---- cells

    def clean_cell(self) -> tuple[str, Callable[[dict[str, Any]], None]]:
        """The never-attacked reference: the base fine-tuned on the clean training set."""
        def compute(out: dict[str, Any]) -> None:
            t0 = time.time()
            model = self.train(list(self.work.clean_train), "clean reference")[0]
            self.row(CLEAN_REFERENCE, model, None, time.time() - t0, out)

        key = digest("cell", CLEAN_REFERENCE,
                     self.finetune_key(list(self.work.clean_train), "clean reference"),
                     self.evaluation_key())
        return key, compute

    def defense_cell(self, name: str, *, keep: dict[str, Any] | None = None
                     ) -> tuple[str, Callable[[dict[str, Any]], None]]:
        defense = self.make(name)
        train_set, label = self.training_set(defense)
        ev = self.settings.evaluation
        key = digest("cell", name, self.finetune_key(train_set, label), asdict(defense.options),
                     defense.after_finetune_key() if defense.completes_training else None,
                     defense.after_training_key(),
                     fingerprint(self.work.trusted), self.settings.implant_prompts,
                     ev.stage1_rows, self.evaluation_key())

        def compute(out: dict[str, Any]) -> None:
            done = self.defend(defense)
            if done.stage1_info is not None:
                info = out["diagnostics"][f"{name}/stage1"] = dict(done.stage1_info)
                scored = self.stage1_evaluation(done)
                if ev.stage1_rows:
                    self.row(f"{name}:stage1", done.stage1_model, None, done.seconds, out,
                             scored)
                metrics = info["metrics"] = scored[0].to_dict()
                self.log(f"  after stage 1: ASR {metrics['asr']:.3f} (stage-1 model, before "
                         f"stage 2)")
            self.row(name, done.model, defense, done.seconds, out)
            out["diagnostics"][name] = defense.diagnostics
            if keep is not None:
                keep[name] = done.model
                if done.stage1_model is not None:
                    keep[f"{name}:stage1"] = done.stage1_model

        return key, compute

    def run(self, defenses: list[str], *, include_clean_reference: bool = True,
            on_cell: Callable[[str, bool], None] | None = None,
            keep_models: bool = False) -> dict[str, Any]:
        """Rows (the clean reference, then one per defense), samples and diagnostics; with
        ``keep_models`` also ``models`` by defense (cells are then computed, not loaded)."""
        for name in defenses:   # unknown names and bad options fail before any training
            self.make(name)
        outcome = new_outcome()
        kept: dict[str, Any] = {}
        cells = ([("clean reference", *self.clean_cell())] if include_clean_reference else [])
        cells += [(name, *self.defense_cell(name, keep=kept if keep_models else None))
                  for name in defenses]
        for label, key, compute in cells:
            def document(compute: Callable[[dict[str, Any]], None] = compute) -> dict[str, Any]:
                out = new_outcome()
                compute(out)
                return out

            out, cached = self.cache.cell(key, document, reuse=not keep_models)
            if cached:
                self.log(f"{label}: finished before, loaded from the cache")
                for row in out["rows"]:
                    self.log(row_line(row))
            merge_outcome(outcome, out)
            if on_cell is not None:
                on_cell(label, cached)
        if keep_models:
            outcome["models"] = kept
        return outcome
