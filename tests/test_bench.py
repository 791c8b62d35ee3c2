"""`flashevolve bench` over several seeds: mean rows, per-seed rows, and a bad --seeds."""

import json
import subprocess
import sys


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flashevolve", *args], capture_output=True, text=True, timeout=300
    )


def test_seeds_give_mean_rows_with_the_per_seed_rows_inside(tmp_path):
    out = tmp_path / "rows.json"
    proc = cli(
        "bench", "--configs", "sync,async", "--minutes", "3", "--seeds", "0,1", "--json", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    assert "accepted/min by seed" in proc.stdout and "SIMULATED" in proc.stderr
    doc = json.loads(out.read_text())
    assert doc["seeds"] == [0, 1] and doc["simulated"] is True
    for row in doc["rows"]:
        assert row["seed"] == "mean" and [r["seed"] for r in row["per_seed"]] == [0, 1]
        for key in ("proposals_per_min", "accepted_per_min", "validations_per_min"):
            per_seed = [r[key] for r in row["per_seed"]]
            assert abs(row[key] - sum(per_seed) / 2) < 1e-9
    sync, async_ = doc["rows"]
    assert abs(async_["speedup"] - async_["proposals_per_min"] / sync["proposals_per_min"]) < 1e-9
    # Different seeds are different runs (otherwise the mean would hide nothing).
    assert async_["per_seed"][0]["tokens"] != async_["per_seed"][1]["tokens"]


def test_bad_seeds_is_one_clear_line():
    proc = cli("bench", "--configs", "sync", "--minutes", "1", "--seeds", "0,x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--seeds" in proc.stderr


def test_bench_json_keeps_short_lists_on_one_line_and_loses_nothing():
    import json

    from flashevolve.commands.common import dumps_readable

    data = {"rows": [{"best_over_time": [[1.5, "a1", 0.2, True], [9.0, "b2", 0.4, False]]}]}
    data["rows"][0]["note"] = "a [bracketed] text"
    text = dumps_readable(data)
    assert json.loads(text) == data
    assert '[1.5, "a1", 0.2, true]' in text.splitlines()[4]
