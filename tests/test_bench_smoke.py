"""The benchmark suite (``make bench``) at tiny sizes and without MLflow, so that its code cannot rot unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ["1a", "1b", "2a", "2b", "3a", "3b", "4a", "4b", "5", "6", "7", "8a", "8b", "8c", "9", "10a", "10b",
           "11a", "11b", *(f"12{letter}" for letter in "abcdefgh"), "13a", "13b", "14a", "14b", "15a", "15b", "16a",
           "16b", "17a", "17b", "18a", "18b", "18c"]  # fmt: skip
MLFLOW_BASELINES = {"1a", "1b", "3a"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_figure_of_the_benchmark_produces_a_number(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    # A separate interpreter, as `make bench` runs it; MLflow is not installed for the tests, so a smoke run that
    # imported it would fail here.
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=590,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {
        cells[0]: cells
        for line in out.read_text(encoding="utf-8").splitlines()
        if line.startswith("| ") and len(cells := [c.strip() for c in line.strip().strip("|").split("|")]) == 7
        if cells[0] != "#"
    }
    assert sorted(rows) == sorted(FIGURES)
    for key, (_, _, measured, baseline, ratio, _, _) in rows.items():
        assert any(ch.isdigit() for ch in measured), rows[key]
        if key in MLFLOW_BASELINES:
            assert baseline == ratio == "n/a (smoke)", rows[key]
        else:
            assert any(ch.isdigit() for ch in baseline) and any(ch.isdigit() for ch in ratio), rows[key]
