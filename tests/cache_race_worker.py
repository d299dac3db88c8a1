"""One side of the stage-cache races of tests/integration/test_cache_race.py.

Two of these run at once on one cache folder. For each race both wait at a file barrier,
open the cache (which cleans stale temporaries) and ask for the same entry; the builder
leaves a marker file, writes random content and sleeps a little, so that a second build
would be seen (two markers, different content). Each side writes what it got to
``OUT/RACE.SIDE.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from pathlib import Path


class FakeModel:
    """Stands in for a model: a few files, saved with ``save_pretrained``."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def save_pretrained(self, folder: Path) -> None:
        for name, text in self.files.items():
            (Path(folder) / name).write_text(text)

    @classmethod
    def load(cls, folder: Path) -> "FakeModel":
        return cls({p.name: p.read_text() for p in sorted(Path(folder).iterdir())
                    if p.name != "info.json"})


def barrier(sync: Path, race: int, side: int) -> None:
    (sync / f"{race}.{side}").touch()
    other = sync / f"{race}.{1 - side}"
    deadline = time.time() + 60
    while not other.exists():
        if time.time() > deadline:
            raise TimeoutError(f"race {race}: the other side never came")
        time.sleep(0.001)


def main() -> None:
    from mbdefense.runs.cache import StageCache

    parser = argparse.ArgumentParser()
    for name in ("--cache", "--markers", "--sync", "--out"):
        parser.add_argument(name, type=Path, required=True)
    parser.add_argument("--side", type=int, required=True)
    parser.add_argument("--races", type=int, required=True)
    parser.add_argument("--sleep", type=float, default=0.05)
    args = parser.parse_args()

    for race in range(args.races):
        def build(race: int = race) -> tuple[FakeModel, dict]:
            (args.markers / f"{race}.{args.side}.{os.getpid()}").touch()
            files = {"weights.bin": uuid.uuid4().hex * 64, "config.json": json.dumps(
                {"race": race, "nonce": uuid.uuid4().hex})}
            time.sleep(args.sleep)
            return FakeModel(files), {"built_by": args.side, "nonce": uuid.uuid4().hex}

        barrier(args.sync, race, args.side)
        cache = StageCache(args.cache, log=lambda message: None)
        model, info = cache.model("finetune", f"race{race:02d}", "a fake model", build,
                                  FakeModel.load)
        (args.out / f"{race}.{args.side}.json").write_text(
            json.dumps({"files": model.files, "info": info}, sort_keys=True))


if __name__ == "__main__":
    main()
