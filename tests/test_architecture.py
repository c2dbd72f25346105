"""The shape of the package: no import cycle between ftlog's modules, and typed rows that match the tables."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import get_args

import pytest

import ftlog
from ftlog import rows
from ftlog.events import KINDS
from ftlog.schema import TABLES
from ftlog.state import STATE

PACKAGE = Path(ftlog.__file__).parent


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The ftlog modules ``path`` imports, at module level or inside functions (a deferred import is still a
    dependency), leaving out ``if TYPE_CHECKING:`` blocks, which never run. ``"__init__"`` is the package."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1 or base == "ftlog" or base.startswith("ftlog."):
                name = base.removeprefix("ftlog").lstrip(".") if node.level == 0 else base
                if name:
                    found.add(name.split(".")[0])
                else:  # `from . import x`: a module if x is one, else a name the package defines
                    found.update(a.name if a.name in modules else "__init__" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("ftlog."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found & (modules | {"__init__"})


def import_graph() -> dict[str, set[str]]:
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    return {module: imports_of(PACKAGE / f"{module}.py", modules) - {module} for module in modules}


def test_no_import_cycle_in_the_package() -> None:
    graph = import_graph()
    state: dict[str, str] = {}  # module -> "open" while on the path, "done" once every dependency is
    cycles: list[list[str]] = []

    def walk(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dependency in sorted(graph[module]):
            if state.get(dependency) == "open":
                cycles.append([*path[path.index(dependency) :], dependency])
            elif dependency not in state:
                walk(dependency, [*path, dependency])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_store_knows_nothing_of_the_views_or_the_collector_state() -> None:
    graph = import_graph()
    assert not graph["store"] & {"views", "state", "collect"}
    assert "store" in graph["state"] and "views" in graph["state"]  # the cache is rebuilt through the views


@pytest.mark.parametrize(
    ("row", "columns"),
    [
        (rows.SnapshotRow, TABLES["snapshots"].schema.names),
        (rows.CheckpointRow, TABLES["checkpoints"].schema.names),
        (rows.PollRow, TABLES["polls"].schema.names),
        (rows.EventRow, TABLES["events"].schema.names),
        (rows.ActionRow, TABLES["actions"].schema.names),
        (rows.StateRow, STATE.names),
    ],
    ids=["snapshots", "checkpoints", "polls", "events", "actions", "state"],
)
def test_typed_rows_have_the_columns_of_their_table(row: type, columns: list[str]) -> None:
    keys = row.__required_keys__ | row.__optional_keys__  # type: ignore[attr-defined]
    assert sorted(keys) == sorted(columns)


def test_event_kinds_are_named_alike() -> None:
    assert get_args(rows.EventKind) == tuple(KINDS)


def test_the_rules_of_the_tables_are_written_once() -> None:
    """Natural keys and the row that stands for each key are declared in ``schema.TABLES``, which generates their
    SQL: no other module spells a de-duplication of its own, which could drift from it. (An engine's dialect, such
    as ``spark.py``, spells how an aggregate is written, through the methods of ``schema.Dialect``, not which.)"""
    rules = (r"DISTINCT ON", r"(?<!def )arg_min\(", r"PARTITION BY task_id, step", r"PARTITION BY event_id")
    spelled = {path.name: [rule for rule in rules if re.search(rule, path.read_text(encoding="utf-8"))]
               for path in PACKAGE.glob("*.py") if path.name != "schema.py"}  # fmt: skip
    assert not {name: found for name, found in spelled.items() if found}
