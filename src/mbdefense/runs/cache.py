"""The stage cache: every finished stage on disk under a key made from all of its inputs.

Entries are fine-tuned models (``finetune-KEY/``), stage-1 models after the implant check
(``stage1-KEY/``), with ``keep_defended`` each defense's model after training
(``defended-KEY/``: MB-Defense's stage 2, Clean-FFT, pruning, ...), evaluated cells and the
stage-1 models' scores (``cells/KEY.json``), and while a ``run --rescore`` is under way, when
it began (``rescore-PLAN.json``). Each entry is built under a lock of its own
(``locks/NAME.lock``), so two runs sharing a cache train a stage once and the second loads
it. Entries appear in one rename; temporaries left by a killed run are removed when the cache
is opened, and an entry that cannot be read is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from mbdefense.core.io import atomic_directory, atomic_write_json, jsonable
from mbdefense.data.example import Example
from mbdefense.training.config import weight_settings

#: Part of every key, with the package's version: raise it when a change alters what a stage
#: computes between releases.
CACHE_VERSION = 3


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (cache keys), under the cache's and the
    package's versions."""
    from mbdefense import __version__

    blob = json.dumps([CACHE_VERSION, __version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fingerprint(examples: Sequence[Example]) -> str:
    return digest(*(e.to_dict() for e in examples))


def finetune_key(model_identity: str, examples: Sequence[Example], config: Any) -> str:
    """A fine-tuning run's key: the base, the data and the settings that change the weights."""
    return digest("finetune", model_identity, fingerprint(examples), weight_settings(config))


class StageCache:
    """Finished stages under ``root`` (``None``: keep nothing, build every time). With
    ``rescore`` every cell is computed again (and saved over its entry) while the trained
    models are still reused: a cell cached by an older version lacks what a newer one
    records, e.g. per-prompt outcomes. ``rescore_since`` (a time, from
    :meth:`begin_rescore`) keeps the cells saved since then: a resumed ``--rescore`` run does
    not score again what it already did. ``keep_defended`` keeps each defense's model after
    training too (a model per defense and attacked model: off by default, as for a large
    model that is much disk), so scoring it again (``--rescore``, another split) skips the
    training."""

    def __init__(self, root: str | Path | None, log: Callable[[str], None] = print,
                 rescore: bool = False, rescore_since: float | None = None,
                 keep_defended: bool = False) -> None:
        self.root = Path(root) if root is not None else None
        self.log = log
        self.rescore = rescore
        self.rescore_since = rescore_since
        self.keep_defended = keep_defended and self.root is not None
        if self.root is not None:
            (self.root / "locks").mkdir(parents=True, exist_ok=True)   # marks a run's cache
            self._clean_stale()

    def _clean_stale(self) -> None:
        """Remove temporaries (``.NAME.*.tmp``, and ``.NAME.*.old`` from a replacement cut
        short) that no live writer holds: a run killed while writing leaves them behind."""
        assert self.root is not None
        for folder in (self.root, self.root / "cells"):
            if not folder.is_dir():
                continue
            for tmp in [*folder.glob(".*.tmp"), *folder.glob(".*.old")]:
                name = tmp.name[1:].split(".")[0]
                lock = self._lock(name if folder == self.root else f"cell-{name}")
                try:
                    lock.acquire(timeout=0)
                except Exception:   # a live writer holds it
                    continue
                try:
                    if tmp.is_dir():
                        shutil.rmtree(tmp, ignore_errors=True)
                    else:
                        tmp.unlink(missing_ok=True)
                finally:
                    lock.release()

    def _lock(self, name: str):
        from filelock import FileLock

        assert self.root is not None
        locks = self.root / "locks"
        locks.mkdir(exist_ok=True)
        return FileLock(str(locks / f"{name}.lock"))

    def has_model(self, kind: str, key: str) -> bool:
        """Whether a finished ``KIND-KEY`` model is in the cache."""
        return self.root is not None and (self.root / f"{kind}-{key}" / "info.json").is_file()

    def model(self, kind: str, key: str, label: str, build: Callable[[], tuple[Any, dict]],
              load: Callable[[Path], Any]) -> tuple[Any, dict[str, Any]]:
        """``build()`` once per key: (model, info). With a root, the model and its info live in
        ``KIND-KEY/``; ``load(folder)`` reads a saved one."""
        if self.root is None:
            return build()
        name = f"{kind}-{key}"
        saved = self.root / name
        with self._lock(name):
            if self.has_model(kind, key):
                try:
                    info = json.loads((saved / "info.json").read_text())
                    model = load(saved)
                except Exception as exc:   # damaged: rebuild below
                    self.log(f"cache entry {saved} is damaged ({type(exc).__name__}); "
                             f"rebuilding it")
                else:
                    self.log(f"loading {label} from {saved}")
                    return model, info
            model, info = build()
            with atomic_directory(saved, replace=True) as tmp:
                model.save_pretrained(tmp)
                (tmp / "info.json").write_text(json.dumps(jsonable(info), indent=1))
            return model, info

    def cell(self, key: str, compute: Callable[[], dict[str, Any]],
             reuse: bool = True) -> tuple[dict[str, Any], bool]:
        """A cell's result document, from ``cells/KEY.json`` when finished before (and
        ``reuse``), else computed and saved. Returns (document, whether it was cached)."""
        if self.root is None:
            return jsonable(compute()), False
        saved = self.root / "cells" / f"{key}.json"
        with self._lock(f"cell-{key}"):
            if reuse and saved.is_file() and not self._to_rescore(saved):
                try:
                    return json.loads(saved.read_text()), True
                except (OSError, ValueError):
                    self.log(f"cache entry {saved} is damaged; recomputing it")
            out = jsonable(compute())
            atomic_write_json(saved, out)
            return out, False

    def _to_rescore(self, saved: Path) -> bool:
        """Whether a saved cell is to be scored again: with ``rescore``, unless saved since
        ``rescore_since``."""
        return self.rescore and (self.rescore_since is None
                                 or saved.stat().st_mtime < self.rescore_since)

    def _rescore_record(self, plan: str) -> Path:
        assert self.root is not None
        return self.root / f"rescore-{plan}.json"

    def begin_rescore(self, plan: str) -> tuple[float, bool]:
        """When the ``--rescore`` run of ``plan`` (a key of the run's settings) began, and
        whether an earlier run of it was stopped: that run's recorded time, else now,
        recorded."""
        assert self.root is not None
        record = self._rescore_record(plan)
        with self._lock(f"rescore-{plan}"):
            try:
                return float(json.loads(record.read_text())["started"]), True
            except (OSError, ValueError, KeyError, TypeError):
                started = time.time()
                atomic_write_json(record, {"started": started})
                return started, False

    def end_rescore(self, plan: str) -> None:
        """Forget the record once every cell of ``plan`` is scored again."""
        with self._lock(f"rescore-{plan}"):
            self._rescore_record(plan).unlink(missing_ok=True)


def model_identity(name: str, path: str | None = None) -> str:
    """What a base model is, for cache keys: its name, and for a local folder or file the
    sizes and times of its files (a changed checkpoint gets new keys)."""
    if path is None or not os.path.exists(path):
        return name
    target = Path(path)
    files = [target] if target.is_file() else sorted(p for p in target.iterdir() if p.is_file())
    return digest(name, str(target.resolve()),
                  [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files])
