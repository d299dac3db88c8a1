"""`mbdefense demo --size smoke` end to end through the command line."""

import json

from mbdefense.cli import main


def test_smoke_demo_writes_results_and_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MBDEFENSE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    code = main(["demo", "--size", "smoke", "--out", str(out), "--quiet", "--seed", "1"])
    stdout = capsys.readouterr().out
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["defense"] for r in results["rows"]] == ["clean", "none", "clean-fft", "mb-defense"]
    assert results["rows"][0]["poison_rate"] == 0.0 and results["rows"][1]["poison_rate"] == 0.2
    for row in results["rows"]:
        assert {"model", "attack", "behavior", "defense", "cacc", "asr", "aacc", "n_clean",
                "n_triggered"} <= set(row)
        assert 0 <= row["cacc"] <= 1 and 0 <= row["asr"] <= 1 and 0 <= row["aacc"] <= 1
    assert results["rows"][1]["asr"] >= 0.9          # the attack took
    assert results["rows"][3]["asr"] <= 0.1          # and MB-Defense broke it (seed 1 too)
    assert results["config"]["attack"] == "badnet" and "torch" in results["versions"]
    report = (out / "report.md").read_text()
    assert report.startswith("# mbdefense demo") and "mb-defense" in report
    assert "mb-defense" in stdout and "results.json" in stdout
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
