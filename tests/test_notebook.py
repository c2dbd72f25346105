"""notebooks/compare_runs.ipynb runs top to bottom in a real kernel against a dataset from a simulator run."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from report_data import build_dataset

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "compare_runs.ipynb"


def test_committed_notebook_has_no_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "the notebook has code"
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert sum(cell.cell_type == "markdown" for cell in notebook.cells) >= len(code), "every step is explained"


@pytest.mark.slow
def test_notebook_runs_against_a_collected_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    build_dataset(data, seed=5, jobs=3, tasks_per_job=3, speed=2000, scripted=False)
    # The kernel inherits this process's environment.
    monkeypatch.setenv("FTLOG_DATA", str(data))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    stderr = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr")
    assert "Glyph" not in stderr and "Warning" not in stderr, stderr
    printed = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    assert f"9 tasks in 3 jobs from {data}" in printed
    tables = [o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    comparison = next(table for table in tables if "final_loss_mean" in table)
    for scale in ("FullFineTuning", "LoRA", "PromptTuning"):
        assert scale in comparison
    assert any("incrementCheckpointStep" in table for table in tables), "the best checkpoints were picked"
    assert any("image/png" in o.get("data", {}) for o in outputs), "the curves were drawn"
