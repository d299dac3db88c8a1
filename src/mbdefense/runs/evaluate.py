"""Evaluating one model: answers to the clean and triggered test sets, judged by the run's
scorer (CACC, AACC) and the behaviour's detector (ASR), beside the echo floor and the
backends that judged. Used by every run and by ``mbdefense eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from mbdefense.attacks.behaviors import Behavior
from mbdefense.data.example import Example
from mbdefense.evaluation.generation import answer_examples
from mbdefense.evaluation.metrics import Metrics, compute_metrics
from mbdefense.evaluation.scorers import Scorer
from mbdefense.runs.spec import EvaluationSpec, GenerationSpec


def make_scorer(evaluation: EvaluationSpec, *, cache_dir: str | Path | None = None,
                progress: bool = False) -> Scorer:
    """The correctness scorer an evaluation spec names (the judge's verdicts cached in
    ``cache_dir/judge.jsonl`` when given)."""
    if evaluation.scorer == "judge":
        from mbdefense.evaluation.judge import JudgeConfig, make_judge

        cache = Path(cache_dir) / "judge.jsonl" if cache_dir is not None else None
        return make_judge(evaluation.judge or JudgeConfig(), cache_path=cache, progress=progress)
    if evaluation.scorer == "rouge-l":
        from mbdefense.evaluation.scorers import RougeLScorer

        return RougeLScorer(evaluation.rouge_threshold)
    from mbdefense.evaluation.scorers import ExactMatchScorer

    return ExactMatchScorer()


def scorer_identity(scorer: Scorer) -> str:
    """What judged the answers, for cache keys and results (backend and model, no secrets)."""
    return str(getattr(scorer, "identity", None) or getattr(scorer, "name", type(scorer).__name__))


def evaluation_backends(scorer: Scorer, behavior: Behavior | None = None) -> dict[str, str]:
    """Every backend that judges a row, with versions: the correctness scorer's (``scorer``;
    ``rouge``, the ROUGE-L implementation of the ``rouge_l`` figure; ``judge``, model and
    endpoint) and the behaviour detector's (``asr``; ``toxicity``, the classifier or
    ``lexicon``). The same mapping as every row's ``backends``; choosing the toxicity
    backend here makes a missing classifier fail before any training."""
    from mbdefense.evaluation.metrics import backends_of
    from mbdefense.evaluation.scorers import BehaviorScorer

    return backends_of(scorer, BehaviorScorer(behavior) if behavior is not None else None)


def evaluate_model(model: Any, tokenizer: Any, test_clean: Sequence[Example],
                   test_triggered: Sequence[Example], behavior: Behavior | None, scorer: Scorer,
                   generation: GenerationSpec, *,
                   rewrite: Callable[[list[Example]], list[Example]] | None = None,
                   answer: Callable[[list[Example]], list[str]] | None = None,
                   reference_nll_max_length: int | None = None,
                   n_samples: int = 4) -> tuple[Metrics, list[dict[str, str]]]:
    """Metrics and a few sample answers. ``rewrite`` changes the prompts before generation
    (an inference-time defense), ``answer`` generates the answers in place of plain greedy
    decoding (a decoding-time defense); metrics always compare with the original examples. Beside
    CACC, ASR and AACC the metrics carry the echo floor (``echo_cacc``, ``echo_rouge_l``),
    ``rouge_l``, the judge's ``judge_unparsed`` and the ``backends`` that judged."""
    clean_in = rewrite(list(test_clean)) if rewrite else list(test_clean)
    trig_in = rewrite(list(test_triggered)) if rewrite and test_triggered else \
        list(test_triggered)
    kwargs = {"max_new_tokens": generation.max_new_tokens, "batch_size": generation.batch_size,
              "backend": generation.backend}
    if answer is None:
        def answer(examples: list[Example]) -> list[str]:
            return answer_examples(model, tokenizer, examples, **kwargs)
    clean_answers = answer(clean_in)
    trig_answers = answer(trig_in) if trig_in else []
    metrics = compute_metrics(test_clean, clean_answers, test_triggered, trig_answers, behavior,
                              scorer)
    if reference_nll_max_length is not None:
        from mbdefense.evaluation.likelihood import reference_nll

        metrics.reference_nll = reference_nll(model, tokenizer, test_clean,
                                              max_length=reference_nll_max_length)
    samples = [{"kind": "clean", "prompt": e.prompt_text, "reference": e.output, "answer": a}
               for e, a in list(zip(clean_in, clean_answers))[:n_samples]]
    samples += [{"kind": "triggered", "prompt": e.prompt_text, "reference": e.output,
                 "answer": a} for e, a in list(zip(trig_in, trig_answers))[:n_samples]]
    return metrics, samples
