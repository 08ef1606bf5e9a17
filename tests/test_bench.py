"""`python -m bench --quick` runs end to end on its smallest setting, with no bench extra.

ferry (on pyreqwest and on aiohttp), the bare aiohttp and pyreqwest loops and the textbook
consumer need nothing beyond the test venv:
the harness starts Valkey, the sink and each worker, and writes the report a user reads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_delivery_run_writes_the_report(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "delivery", "--systems", "core",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads((tmp_path / "benchmarks" / "results.json").read_text())["delivery"]["rows"]
    by_system = {row["system"]: row for row in rows}
    assert set(by_system) == {"ceiling (bare aiohttp)", "ceiling (bare pyreqwest)", "ferry", "ferry (aiohttp)",
                              "textbook BLMOVE/POST/LREM"}
    for row in rows:  # every message arrived once, timed by the sink
        assert row["rate"] > 0 and row["duplicates"] == 0 and row["failed"] == 0, row
    assert by_system["ceiling (bare aiohttp)"]["to_ceiling"] == 1.0
    report = (tmp_path / "benchmarks.md").read_text()
    assert "| ferry | 16 |" in report
    assert "python -m bench --quick --only delivery --systems core" in report


def test_quick_cost_run_measures_the_bare_client_beside_the_worker_in_the_same_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "cost", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "FAILED" not in done.stdout, done.stdout[-2000:]
    cost = json.loads((tmp_path / "benchmarks" / "results.json").read_text())["cost"]
    assert [row["rate"] for row in cost["rates"]] == [10.0, 100.0]
    # /proc counts CPU in 10 ms ticks: 20 POSTs at 10/s or a drain of 500 may take less than one;
    # 200 POSTs at 100/s take several.
    for row in cost["rates"]:  # each rate, the worker and the bare client on the same clock
        assert row["cpu_us_per_message"] >= 0 and row["bare_cpu_us_per_message"] >= 0, row
    at_100 = cost["rates"][1]
    assert at_100["cpu_us_per_message"] > 0 and at_100["bare_cpu_us_per_message"] > 0, at_100
    assert set(cost["drain"]) == {"drain", "bare drain"} and min(cost["drain"].values()) >= 0, cost["drain"]
    assert cost["machine"] and cost["backlog"] == 500
    report = (tmp_path / "benchmarks.md").read_text()
    assert "| rate/s | worker CPU µs/msg | bare client µs/msg | foreign load |" in report
    assert "| draining a backlog of 500 (concurrency 16) |" in report


def test_a_figure_beside_its_target_never_reads_as_the_other_side_of_it() -> None:
    from bench.report import fmt_judged

    assert fmt_judged(4.998, 1, lambda x: x >= 5) == "4.998"  # not "5.0 ... not met"
    assert fmt_judged(0.996, 2, lambda x: x >= 1) == "0.996"
    assert fmt_judged(200.4, 0, lambda x: x <= 200) == "200.4"
    assert fmt_judged(7.06, 1, lambda x: x >= 5) == "7.1"  # far from the line: as many places as asked
    assert fmt_judged(None, 1, lambda x: x < 10) == "-"
