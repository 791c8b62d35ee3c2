"""The scaling bench runs (a short, small version), labels its rows simulated, leads its table
with accepted/min, and rejects bad options with one line."""

from __future__ import annotations

import json

from flashevolve.bench.scaling import ScalingConfig, format_scaling, main, run_scaling


def test_a_short_scaling_run_has_rows_per_endpoint_count() -> None:
    config = ScalingConfig(
        endpoints=(1, 2), minutes=20, seeds=(0,), workers_per_endpoint=8, in_flight_per_endpoint=64
    )
    rows = run_scaling(config)
    assert [r["endpoints"] for r in rows] == [1, 2]
    assert all(r["simulated"] for r in rows)
    assert rows[0]["accepted_per_min"] > 0 and rows[0]["speedup"] == 1.0
    assert rows[1]["efficiency"] == rows[1]["speedup"] / 2
    assert rows[1]["requests"] > rows[0]["requests"]  # two servers served more
    assert 0 < rows[1]["balance"] <= 1
    table = format_scaling(rows)
    assert table.splitlines()[0].startswith("accepted/min")


def test_bad_options_are_one_line_and_exit_2(capsys, tmp_path) -> None:
    assert main(["--endpoints", "1,two"]) == 2
    assert "--endpoints takes a comma list of integers" in capsys.readouterr().err
    assert main(["--minutes", "0"]) == 2
    out = tmp_path / "rows.json"
    assert main(["--endpoints", "1", "--minutes", "2", "--seeds", "0", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["endpoints"] == 1
