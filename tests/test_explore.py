"""The document the interactive report and `ftlog serve` draw: the dataset's own values, compact, and inert in HTML."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from report_data import XSS_NAME, XSS_TASK, Population, build_dataset

import ftlog
from ftlog import explore
from ftlog.report import write_report


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Population]:
    data = tmp_path_factory.mktemp("explore") / "data"
    return data, build_dataset(data)


def embedded(html: str) -> dict:
    match = re.search(r'<script type="application/json" id="ftlog-data">(.*?)</script>', html, re.S)
    assert match, "the report embeds its data"
    return json.loads(match.group(1))


def test_document_holds_every_task_and_checkpoint(population: tuple[Path, Population]) -> None:
    data, expected = population
    with ftlog.connect(data) as con:
        document = explore.payload(con)
        tasks = con.sql("SELECT task_id, run_status, job_name FROM tasks ORDER BY task_id").fetchall()
        points = con.sql(
            "SELECT task_id, step, training_loss, perplexity FROM checkpoints ORDER BY task_id, step"
        ).fetchall()
    runs = document["runs"]
    assert runs["task_id"] == [t for t, _, _ in tasks] and set(runs["task_id"]) == expected.tasks
    assert runs["run_status"] == [s for _, s, _ in tasks]
    assert runs["job_name"] == [n for _, _, n in tasks]
    curves = document["curves"]
    offsets = curves["offsets"]
    assert len(offsets) == len(tasks) + 1 and offsets[0] == 0 and offsets[-1] == len(points)
    for i, (task_id, _, _) in enumerate(tasks):
        mine = [p for p in points if p[0] == task_id]
        chunk = slice(offsets[i], offsets[i + 1])
        assert curves["step"][chunk] == [p[1] for p in mine]
        pairs = zip(curves["loss"][chunk], curves["perplexity"][chunk], strict=True)
        for got, (_, _, loss, perplexity) in zip(pairs, mine, strict=True):
            for value, exact in zip(got, (loss, perplexity), strict=True):
                if exact is None or not math.isfinite(exact):
                    assert value is None
                else:
                    assert value == pytest.approx(exact, rel=1e-5)


def test_document_comparison_and_timeline_match_the_helpers(population: tuple[Path, Population]) -> None:
    data, _ = population
    with ftlog.connect(data) as con:
        document = explore.payload(con, by=["model"])
        groups = con.sql("SELECT model, count(*) FROM tasks GROUP BY ALL ORDER BY ALL").fetchall()
        changes = con.execute("SELECT count(*) FROM status_changes").fetchone()
    assert document["by"] == ["model"]
    assert list(zip(document["compare"]["model"], document["compare"]["tasks"], strict=True)) == groups
    assert changes is not None and len(document["timeline"]["task"]) == changes[0]
    assert all(0 <= t < len(document["runs"]["task_id"]) for t in document["timeline"]["task"])


def test_report_embeds_the_document_inert(population: tuple[Path, Population], tmp_path: Path) -> None:
    data, _ = population
    html = write_report(data, tmp_path / "report").read_text(encoding="utf-8")
    document = embedded(html)
    assert XSS_NAME in document["runs"]["job_name"]  # the name as it is, shown as text by the page
    assert XSS_TASK in document["runs"]["task_id"]
    data_element = html.split('id="ftlog-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data_element and ">" not in data_element and "&" not in data_element
    assert data_element.isascii()


@given(st.text())
def test_any_text_stays_inside_its_script_element(value: str) -> None:
    text = explore.to_script_json({"name": value})
    assert "<" not in text and ">" not in text and "&" not in text and text.isascii()
    assert json.loads(text) == {"name": value}


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64)))
def test_numbers_are_cut_to_six_significant_digits_or_null(values: list[float]) -> None:
    import pyarrow as pa

    got = explore._values(pa.array(values, pa.float64()))
    for value, cut in zip(values, got, strict=True):
        if not math.isfinite(value):
            assert cut is None
        else:
            assert cut == pytest.approx(value, rel=1e-5, abs=0) or abs(value) < 1e-290  # beyond 10**300: coarser
            assert len(repr(cut).replace("-", "").replace(".", "").lstrip("0").split("e")[0]) <= 17


def test_rounding_gives_short_numbers() -> None:
    values = np.array([0.123456789, 1234567.891, 2.5e-7 + 1e-15, 123.0, -0.000987654321])
    assert explore._rounded(values).tolist() == [0.123457, 1234570.0, 2.5e-07, 123.0, -0.000987654]


def test_inlined_files_are_checked(tmp_path: Path) -> None:
    for name in explore.ASSETS:
        assert "</script" not in explore.asset(name).lower()
    with pytest.raises(ValueError):
        explore.asset("../templates/report.html")
