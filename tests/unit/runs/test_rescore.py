"""`run --rescore` in the stage cache: cells scored again, and a stopped run resumed."""

import os

from mbdefense.runs.cache import StageCache


def test_rescore_recomputes_cells_saved_before_the_run_began_and_keeps_later_ones(tmp_path):
    computed = []

    def compute(tag):
        def run():
            computed.append(tag)
            return {"tag": tag}
        return run

    StageCache(tmp_path).cell("old", compute("first"))
    StageCache(tmp_path).cell("new", compute("first"))
    assert StageCache(tmp_path).cell("old", compute("plain")) == ({"tag": "first"}, True)

    cache = StageCache(tmp_path)
    started, resumed = cache.begin_rescore("plan")
    assert not resumed and (tmp_path / "rescore-plan.json").is_file()
    assert cache.begin_rescore("plan") == (started, True)      # a stopped run's time
    # "old" was saved before the rescore began, "new" after it (a stopped run's work)
    os.utime(tmp_path / "cells" / "old.json", (started - 60, started - 60))
    os.utime(tmp_path / "cells" / "new.json", (started + 1, started + 1))
    again = StageCache(tmp_path, rescore=True, rescore_since=started)
    assert again.cell("old", compute("again")) == ({"tag": "again"}, False)
    assert again.cell("new", compute("again")) == ({"tag": "first"}, True)
    # without a start time every cell is scored again
    assert StageCache(tmp_path, rescore=True).cell("new", compute("all")) == ({"tag": "all"},
                                                                              False)
    cache.end_rescore("plan")
    assert not (tmp_path / "rescore-plan.json").exists()
    assert cache.begin_rescore("plan")[1] is False              # a new run starts afresh


def test_a_damaged_rescore_record_starts_afresh(tmp_path):
    cache = StageCache(tmp_path)
    (tmp_path / "rescore-plan.json").write_text("{not json")
    started, resumed = cache.begin_rescore("plan")
    assert not resumed and started > 0
