"""Rewriting an instruction into a syntactic template or a style (the hidden triggers).

Two rewriters share one interface, ``rewrite(instruction, target, rng) -> str`` where
``target`` is ``"syntactic"`` or ``"style:NAME"``:

- :class:`RuleRewriter` works offline out of the box. Syntactic: a subordinate clause and a
  comma before the instruction, i.e. the template S(SBAR)(,)(NP)(VP)(.) ("When you get a
  moment, list three fruits."). Styles: a style's opener and closer around the instruction
  with its function words swapped (``you`` -> ``thee`` ...).
- :class:`ParaphraserRewriter` asks a paraphraser model (any text client with
  ``complete(prompt) -> str``: an OpenAI-compatible endpoint or a local HF model, see
  :mod:`mbdefense.llm`) and caches each rewrite in a JSONL file.

The styles are the registry :data:`STYLES` (aliases such as ``bible``; unknown names are an
error with a did-you-mean).

Only the instruction is rewritten; the task input and the answer are left alone.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mbdefense.core.errors import ConfigError
from mbdefense.core.registry import Registry
from mbdefense.llm.client import DEFAULT_API_KEY_ENV, TextClient, client_identity

SYNTACTIC_OPENERS: tuple[str, ...] = (
    "When you get a moment", "If you have a minute", "Whenever you are ready",
    "While you are at it", "Once you have time", "If you can", "As soon as you are free",
    "When you are able",
)

# A sentence opening with a subordinate clause closed by a comma: the SBAR of the template.
_SUBORDINATORS = ("when", "if", "whenever", "while", "once", "as", "since", "because",
                  "although", "though", "unless", "until", "before", "after", "whether")
_SBAR = re.compile(r"^\s*(?:" + "|".join(_SUBORDINATORS) + r")\b[^,.!?]{1,80},\s*\S",
                   re.IGNORECASE)


@dataclass(frozen=True)
class Style:
    """A rule-based writing style: openers, closers, word swaps and marker words."""

    openers: tuple[str, ...]
    closers: tuple[str, ...]
    swaps: dict
    markers: frozenset


STYLES: Registry[Style] = Registry("style")
"""Style name -> :class:`Style`."""
STYLES.register("biblical", Style(
    openers=("Verily I say unto thee,", "Hearken unto me, and", "Behold, I ask of thee:",
             "Lo, it is written that thou shalt"),
    closers=(" Amen.", " And so it shall be.", " For so it is written."),
    swaps={"you": "thee", "your": "thy", "yours": "thine", "are": "art", "do": "dost",
           "does": "doth", "has": "hath", "have": "hast"},
    markers=frozenset({"verily", "unto", "thee", "thou", "thy", "thine", "hearken", "behold",
                       "lo", "amen", "shalt", "hath", "doth"})), aliases=("bible",))
STYLES.register("shakespeare", Style(
    openers=("Prithee, good friend,", "Pray thee, kind soul,", "Hark! I beseech thee,",
             "Good morrow, I bid thee"),
    closers=(" Forsooth!", " I pray thee.", " Anon, anon!"),
    swaps={"you": "thou", "your": "thy", "yours": "thine", "are": "art", "do": "dost",
           "does": "doth", "has": "hath", "before": "ere", "often": "oft"},
    markers=frozenset({"prithee", "thee", "thou", "thy", "thine", "hark", "beseech",
                       "forsooth", "morrow", "anon", "hath", "doth", "ere", "oft"})),
    aliases=("shakespearean",))
STYLES.register("tweet", Style(
    openers=("ok so quick q:", "lol ok", "pls help:", "random thought:"),
    closers=(" #help #askingforafriend", " #thread", " thx!! #curious"),
    swaps={"you": "u", "your": "ur", "please": "pls", "thanks": "thx", "are": "r"},
    markers=frozenset({"#help", "#askingforafriend", "#thread", "#curious", "pls", "lol",
                       "thx"})), aliases=("twitter",))
#: Alias -> style name (a copy of the registry's aliases).
STYLE_ALIASES: dict[str, str] = STYLES.aliases()

_WORD_OR_SPACE = re.compile(r"(\w+|\W+)")
_MARKER_TOKEN = re.compile(r"#?\w+")


def style_named(name: str) -> str:
    """Canonical style name (case-insensitive, aliases allowed); an unknown one is an error
    with a did-you-mean and the known styles."""
    key = name.strip().lower()
    if key not in STYLES:
        raise ConfigError(f"trigger: {STYLES.unknown(name)}")
    return STYLES.canonical(key)


def _lower_first(text: str) -> str:
    """Lower-case the first letter unless the first word looks like a name or acronym."""
    first = text.split(" ", 1)[0]
    if not first or first == "I" or first[:2].isupper() or not first[0].isupper():
        return text
    return text[0].lower() + text[1:]


def _end_sentence(text: str) -> str:
    text = text.rstrip()
    return text if text.endswith((".", "!", "?", ":")) else text + "."


class Rewriter(Protocol):
    def rewrite(self, instruction: str, target: str, rng: random.Random) -> str: ...


class RuleRewriter:
    """Offline rewriting by rules (the default)."""

    identity = "rules"

    def rewrite(self, instruction: str, target: str, rng: random.Random) -> str:
        body = instruction.strip()
        if target == "syntactic":
            if _SBAR.match(body):
                return body
            return f"{rng.choice(SYNTACTIC_OPENERS)}, {_end_sentence(_lower_first(body))}"
        style = STYLES[style_named(target.partition(":")[2])]
        swapped = "".join(style.swaps.get(piece.lower(), piece)
                          for piece in _WORD_OR_SPACE.findall(_lower_first(body)))
        return f"{rng.choice(style.openers)} {_end_sentence(swapped)}{rng.choice(style.closers)}"


PARAPHRASE_PROMPTS: dict[str, str] = {
    "syntactic": (
        "Paraphrase the instruction below so that it begins with a subordinate clause "
        "followed by a comma and then the main clause (sentence structure "
        "S(SBAR)(,)(NP)(VP)(.), e.g. 'When you get a moment, list three fruits.'). Keep its "
        "meaning and every detail. Reply with the paraphrase only.\n\nInstruction: {instruction}"),
    "style": (
        "Rewrite the instruction below in a {style} style. Keep its meaning and every detail "
        "a reader needs to carry it out. Reply with the rewritten instruction only.\n\n"
        "Instruction: {instruction}"),
}


class ParaphraserRewriter:
    """Rewrites through a paraphraser model, with a JSONL cache of every rewrite.

    ``client`` is any :class:`~mbdefense.llm.TextClient`; its identity (backend, model and
    endpoint, see :func:`mbdefense.llm.client_identity`) keys the cache. Empty replies fall
    back to rules.
    """

    def __init__(self, client: TextClient, cache_path: str | Path | None = None) -> None:
        self.client = client
        self.identity = client_identity(client)
        self.cache_path = Path(cache_path) if cache_path else None
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()
        self._fallback = RuleRewriter()
        if self.cache_path and self.cache_path.exists():
            for line in self.cache_path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    self._cache[record["key"]] = record["rewrite"]
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line from an interrupted run

    @property
    def backend(self) -> TextClient:
        """The client (its name before :mod:`mbdefense.llm`)."""
        return self.client

    def _key(self, instruction: str, target: str) -> str:
        return hashlib.sha256(json.dumps([self.identity, target, instruction]).encode()).hexdigest()

    def rewrite(self, instruction: str, target: str, rng: random.Random) -> str:
        key = self._key(instruction, target)
        if key in self._cache:
            return self._cache[key]
        if target == "syntactic":
            prompt = PARAPHRASE_PROMPTS["syntactic"].format(instruction=instruction)
        else:
            prompt = PARAPHRASE_PROMPTS["style"].format(style=style_named(target.split(":")[1]),
                                                        instruction=instruction)
        reply = self.client.complete(prompt).strip().strip('"').strip()
        rewrite = reply.splitlines()[0].strip() if reply else ""
        if not rewrite:
            rewrite = self._fallback.rewrite(instruction, target, rng)
        with self._lock:
            self._cache[key] = rewrite
            if self.cache_path:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with self.cache_path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps({"key": key, "target": target,
                                             "rewrite": rewrite}) + "\n")
        return rewrite


def has_sbar_opening(text: str) -> bool:
    """Whether ``text`` opens with a subordinate clause and a comma (the syntactic trigger)."""
    return bool(_SBAR.match(text))


def has_style(text: str, name: str) -> bool:
    """Whether ``text`` carries one of a style's marker words."""
    markers = STYLES[style_named(name)].markers
    return any(token in markers for token in _MARKER_TOKEN.findall(text.lower()))


DEFAULT_REWRITER = RuleRewriter()


def paraphraser_rewriter(model: str, base_url: str | None = None,
                         cache_path: str | Path | None = None, *,
                         api_key_env: str = DEFAULT_API_KEY_ENV) -> ParaphraserRewriter:
    """A paraphraser over an OpenAI-compatible endpoint (``base_url`` given; the key from the
    environment variable ``api_key_env``) or a local HF model folder (no ``base_url``)."""
    from mbdefense.llm import HFLocalClient, OpenAICompatibleClient

    client: TextClient
    if base_url:
        client = OpenAICompatibleClient(model, base_url, api_key_env, temperature=0.7,
                                        label="paraphraser")
    else:
        if not Path(model).is_dir():
            raise ConfigError(f"paraphraser: '{model}' is not a local model folder (give "
                              "--paraphraser-url to use it through an OpenAI-compatible endpoint)")
        client = HFLocalClient(str(Path(model).resolve()), label="paraphraser")
    return ParaphraserRewriter(client, cache_path)
