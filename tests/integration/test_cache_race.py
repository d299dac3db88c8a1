"""Two processes race for the same stage-cache entry, again and again: neither crashes, the
entry is built exactly once per race, and both get the same content (the builder's, or the
entry it saved). Forty races take a few seconds: the builder only writes a few files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).resolve().parents[1] / "cache_race_worker.py"


def race(tmp_path: Path, races: int) -> None:
    folders = {name: tmp_path / name for name in ("cache", "markers", "sync", "out")}
    for folder in folders.values():
        folder.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    sides = [subprocess.Popen(
        [sys.executable, str(WORKER), "--side", str(side), "--races", str(races),
         *[x for name, folder in folders.items() for x in (f"--{name}", str(folder))]],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for side in (0, 1)]
    for side in sides:
        out, err = side.communicate(timeout=300)
        assert side.returncode == 0, err[-3000:]   # no crash, no traceback
        assert err == ""

    for n in range(races):
        markers = list(folders["markers"].glob(f"{n}.*"))
        assert len(markers) == 1, f"race {n}: built {len(markers)} times"
        got = [json.loads((folders["out"] / f"{n}.{side}.json").read_text()) for side in (0, 1)]
        assert got[0] == got[1], f"race {n}: the two sides got different entries"
        entry = folders["cache"] / f"finetune-race{n:02d}"
        saved = {p.name: p.read_text() for p in entry.iterdir() if p.name != "info.json"}
        assert saved == got[0]["files"]
        assert json.loads((entry / "info.json").read_text()) == got[0]["info"]
    leftovers = [p.name for p in folders["cache"].iterdir()
                 if p.name.endswith((".tmp", ".old"))]
    assert not leftovers
    entries = sorted(p.name for p in folders["cache"].iterdir() if p.name != "locks")
    assert entries == [f"finetune-race{n:02d}" for n in range(races)]


def test_forty_races_of_two_processes_build_each_entry_once(tmp_path):
    race(tmp_path, 40)
