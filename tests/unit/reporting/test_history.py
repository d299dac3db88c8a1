"""Diagnostics a reader can follow: eval-loss histories as tables with the kept epoch marked,
and intermediate rows (MB-Defense after stage 1) never presented as a defense's result."""

from mbdefense.reporting.build import history_tables
from mbdefense.reporting.headline import role_of


def test_each_eval_loss_history_is_a_table_with_the_kept_epoch_marked():
    history = [{"epoch": e, "loss": loss, "reg": -1.0} for e, loss in enumerate([2.0, 1.5, 1.7])]
    runs = [{"source": "r.json", "diagnostics": {
        "m|a|b|seed0": {"mb-defense": {"stage2": {"history": history, "best_epoch": 1}},
                        "none": {}}}}]
    [table] = history_tables(runs)
    assert "mb-defense.stage2" in table.title and "per epoch" in table.title
    assert [c.label for c in table.columns] == ["epoch", "eval loss", "eval reg", ""]
    marks = [row[-1].text for row in table.rows]
    assert marks == ["", "kept (lowest eval loss)", ""]
    assert history_tables([{"source": "x", "diagnostics": {"k": {"history": [1, 2]}}}]) == []
    record = runs[0]["diagnostics"]["m|a|b|seed0"]["mb-defense"]["stage2"]
    record.update(kept_epoch=2, kept="last")
    [table] = history_tables(runs)
    assert [row[-1].text for row in table.rows] == ["", "lowest eval loss (not kept)",
                                                    "kept (last epoch)"]
    # a record written before kept_epoch: best_epoch held the kept epoch
    del record["kept_epoch"]
    record.update(best_epoch=2)
    [table] = history_tables(runs)
    assert [row[-1].text for row in table.rows] == ["", "", "kept (last epoch)"]


def test_intermediate_and_ablation_rows_say_what_they_are():
    assert role_of("mb-defense:stage1").startswith("intermediate")
    assert role_of("stage2-only").startswith("ablation")
    assert role_of("mb-defense") == "★ proposed method"
    assert role_of("crow") == "baseline defense"
