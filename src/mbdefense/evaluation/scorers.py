"""Scorers: the one interface through which answers are judged.

A :class:`Scorer` takes a batch of answers with their examples and returns one verdict per
answer (``judge``), and where it can a graded score in [0, 1] (``scores``). Batches let slow
judges (an LLM over HTTP) work concurrently and cache. Three families exist:

- rules: :class:`ExactMatchScorer` (the verifiable suite) and :class:`BehaviorScorer` (a
  backdoor behaviour's own detector, for ASR);
- reference similarity, offline: :class:`RougeLScorer` (ROUGE-L F-measure against the
  reference, computed as the rouge-score package does);
- an LLM judge following the paper's criteria: :mod:`mbdefense.evaluation.judge`.

:data:`SCORERS` registers the correctness scorers by the names configs and the CLI use:
``rules`` (exact match on the embedded suite; alias ``exact``), ``rouge-l`` and ``judge`` (the
LLM judge, built from its ``judge:`` settings).
"""

from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from mbdefense.data.example import Example
from mbdefense.data.suite import exact_match
from mbdefense.core.errors import ConfigError
from mbdefense.core.registry import Registry


def reference_of(example: Example) -> str:
    """The clean reference answer of an example (poisoned copies keep it in ``meta``)."""
    return example.meta.get("clean_output", example.output)


@dataclass
class Assessment:
    """A scorer's judgement of a batch: ``verdicts`` (True, False, or None when the scorer
    gave none, e.g. an unparsable judge reply) and graded ``scores`` in [0, 1]."""

    verdicts: list[bool | None]
    scores: list[float]

    @property
    def correct(self) -> list[bool]:
        """Verdicts as bools: a missing verdict never counts as correct."""
        return [v is True for v in self.verdicts]

    @property
    def missing(self) -> int:
        return sum(v is None for v in self.verdicts)


class Scorer:
    """Judges answers. Subclasses implement ``judge`` (and ``scores`` when graded)."""

    name = "scorer"
    #: Whether some answers can get no verdict (an LLM judge's unreadable reply).
    can_abstain = False

    def judge(self, answers: Sequence[str], examples: Sequence[Example]) -> list[bool]:
        raise NotImplementedError

    def scores(self, answers: Sequence[str], examples: Sequence[Example]) -> list[float]:
        return [float(v) for v in self.judge(answers, examples)]

    def assess(self, answers: Sequence[str], examples: Sequence[Example]) -> Assessment:
        """Verdicts (None: the scorer could not give one) and graded scores in one pass."""
        verdicts: list[bool | None] = list(self.judge(answers, examples))
        if type(self).scores is not Scorer.scores:   # a graded scorer's own scores
            return Assessment(verdicts, list(self.scores(answers, examples)))
        return Assessment(verdicts, [float(bool(v)) for v in verdicts])

    def backends(self) -> dict[str, str]:
        """What judges the answers, with versions where there are some, for results."""
        return {"scorer": self.name}

    def __call__(self, answer: str, example: Example) -> bool:
        return self.judge([answer], [example])[0]


def _check_lengths(answers: Sequence[str], examples: Sequence[Example], name: str) -> None:
    if len(answers) != len(examples):
        raise ValueError(f"{name}: {len(answers)} answers for {len(examples)} examples")


class ExactMatchScorer(Scorer):
    """Correct when the answer matches the reference (normalised; the verifiable suite)."""

    name = "exact"

    def judge(self, answers, examples):
        _check_lengths(answers, examples, self.name)
        return [exact_match(a, reference_of(e)) for a, e in zip(answers, examples)]


class BehaviorScorer(Scorer):
    """True when an answer shows a backdoor behaviour, by the behaviour's own detector."""

    def __init__(self, behavior) -> None:
        self.behavior = behavior
        self.name = f"detect:{behavior.spec}"

    def judge(self, answers, examples=None):
        return [self.behavior.detect(a) for a in answers]

    def backends(self) -> dict[str, str]:
        return {"scorer": self.name, **self.behavior.backends()}


class FunctionScorer(Scorer):
    """Wraps a plain ``(answer, example) -> bool`` function."""

    def __init__(self, fn: Callable[[str, Example], bool], name: str = "function") -> None:
        self.fn, self.name = fn, name

    def judge(self, answers, examples):
        _check_lengths(answers, examples, self.name)
        return [bool(self.fn(a, e)) for a, e in zip(answers, examples)]


# ROUGE-L as the rouge-score package computes it (google-research/rouge, rouge_scorer with
# rouge_types=["rougeL"]): lower-case, every run of characters other than a-z and 0-9 is a
# space, tokens of [a-z0-9] (optionally Porter-stemmed when longer than 3 characters), and the
# F-measure of the longest common subsequence. Tested against the package.
_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str, stem: Callable[[str], str] | None = None) -> list[str]:
    """rouge-score's tokens of ``text`` (``stem`` applied to tokens longer than 3)."""
    tokens = _ROUGE_TOKEN.findall(text.lower())
    if stem is not None:
        tokens = [stem(t) if len(t) > 3 else t for t in tokens]
        tokens = [t for t in tokens if _ROUGE_TOKEN.fullmatch(t)]
    return tokens


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison and Dix, 1986): one
    integer holds a row of the table as bits, so a long answer costs len(a) word operations."""
    if not a or not b:
        return 0
    positions: dict[str, int] = {}
    for i, token in enumerate(b):
        positions[token] = positions.get(token, 0) | (1 << i)
    full = (1 << len(b)) - 1
    row = full
    for token in a:
        matches = row & positions.get(token, 0)
        row = ((row + matches) | (row - matches)) & full
    return len(b) - row.bit_count()


def rouge_l_tokens(candidate: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F-measure of two token lists (0 when either is empty)."""
    lcs = lcs_length(candidate, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def rouge_l(candidate: str, reference: str, *, use_stemmer: bool = False) -> float:
    """ROUGE-L F-measure as ``rouge_score.rouge_scorer.RougeScorer(["rougeL"],
    use_stemmer=...)`` gives it (0 when either side has no token)."""
    stem = porter_stemmer() if use_stemmer else None
    return rouge_l_tokens(rouge_tokens(candidate, stem), rouge_tokens(reference, stem))


def porter_stemmer() -> Callable[[str], str]:
    """NLTK's Porter stemmer, as rouge-score uses it (cached per word); a
    :class:`ConfigError` when NLTK is missing."""
    global _STEM
    if _STEM is None:
        try:
            from nltk.stem import porter
        except ImportError:
            raise ConfigError("rouge-l: use_stemmer needs NLTK's Porter stemmer "
                              "(pip install nltk)") from None
        _STEM = functools.lru_cache(maxsize=65536)(porter.PorterStemmer().stem)
    return _STEM


_STEM: Callable[[str], str] | None = None


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown version"


class RougeLScorer(Scorer):
    """Reference similarity that works offline: ROUGE-L F-measure as rouge-score computes it
    (``use_stemmer``: with its Porter stemming), correct at ``threshold`` or above.

    Examples without a reference are an error: the score would mean nothing.
    """

    name = "rouge-l"

    def __init__(self, threshold: float = 0.2, use_stemmer: bool = False) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"rouge-l: threshold must lie in [0, 1], got {threshold}")
        self.threshold, self.use_stemmer = threshold, bool(use_stemmer)
        self._stem = porter_stemmer() if self.use_stemmer else None

    def backends(self) -> dict[str, str]:
        rouge = "builtin (rouge-score's tokenizer and LCS F-measure)"
        if self.use_stemmer:
            rouge += f", Porter stemmer of nltk {_version('nltk')}"
        return {"scorer": f"{self.name} (F >= {self.threshold:g})", "rouge": rouge}

    def scores(self, answers, examples):
        _check_lengths(answers, examples, self.name)
        out = []
        for answer, example in zip(answers, examples):
            reference = reference_of(example)
            if not reference.strip():
                raise ConfigError(f"rouge-l: example without a reference answer: "
                                  f"{example.instruction[:60]!r}")
            out.append(rouge_l_tokens(rouge_tokens(answer, self._stem),
                                      rouge_tokens(reference, self._stem)))
        return out

    def judge(self, answers, examples):
        return self.assess(answers, examples).correct

    def assess(self, answers, examples):
        scores = self.scores(answers, examples)
        return Assessment([s >= self.threshold for s in scores], scores)


ScorerFactory = Callable[..., Scorer]

#: Correctness scorers by name: factories that take the scorer's own settings as keywords.
SCORERS: Registry[ScorerFactory] = Registry("scorer")
SCORERS.register("rules", ExactMatchScorer, aliases=("exact",))
SCORERS.register("rouge-l", RougeLScorer)


@SCORERS.register("judge")
def _judge(**settings: Any) -> Scorer:
    """The LLM judge of :mod:`mbdefense.evaluation.judge`, from its ``judge:`` settings."""
    if not settings:
        raise ConfigError("scorer 'judge' needs its judge: settings (model, base_url, "
                          "criterion, ...); give them under judge: in the config")
    from mbdefense.evaluation.judge import judge_from_config

    return judge_from_config(**settings)


def get_scorer(name: str, settings: Mapping[str, Any] | None = None) -> Scorer:
    """A correctness scorer by name (``rules``, ``rouge-l``, ``judge`` or an alias), built with
    its own ``settings`` (``threshold`` for ``rouge-l``; the ``judge:`` settings for ``judge``).
    Unknown names are a :class:`ConfigError` with a did-you-mean hint."""
    factory = SCORERS.get(name)
    settings = dict(settings or {})
    try:
        inspect.signature(factory).bind(**settings)
    except TypeError:
        raise ConfigError(f"scorer '{SCORERS.canonical(name)}': unknown setting(s) "
                          f"{', '.join(sorted(settings))}") from None
    return factory(**settings)


def as_scorer(scorer: Scorer | Callable[[str, Example], bool]) -> Scorer:
    return scorer if isinstance(scorer, Scorer) else FunctionScorer(scorer)

