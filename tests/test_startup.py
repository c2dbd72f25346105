"""Starting ftlog is cheap: `--help`, `--version` and `import ftlog` load none of the heavy libraries, which each
command and each public name loads only when used."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = {"pandas", "pyarrow", "duckdb", "requests", "numpy", "matplotlib"}
MARKER = "loaded modules:"
# Runs `python -m ftlog ARGS` in this fresh interpreter, then reports every module it loaded, even after click exits.
CLI = f"""
import atexit, runpy, sys
atexit.register(lambda: print({MARKER!r}, *sorted(sys.modules), file=sys.stderr))
sys.argv = ["ftlog", *sys.argv[1:]]
runpy.run_module("ftlog", run_name="__main__", alter_sys=True)
"""


def loaded(code: str, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, check=False)
    line = next(line for line in done.stderr.splitlines() if line.startswith(MARKER))
    return done, {name.split(".")[0] for name in line.removeprefix(MARKER).split()}


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["collect", "--help"], ["query", "--help"]])
def test_the_cli_starts_without_heavy_libraries(args: list[str]) -> None:
    done, modules = loaded(CLI, *args)
    assert done.returncode == 0, done.stderr
    assert "ftlog" in done.stdout and "click" in modules
    assert not modules & HEAVY, sorted(modules & HEAVY)


def test_import_ftlog_is_cheap_and_names_load_on_first_use() -> None:
    done, modules = loaded(f"import ftlog, sys; print({MARKER!r}, *sorted(sys.modules), file=sys.stderr)")
    assert done.returncode == 0, done.stderr
    assert "ftlog" in modules and not modules & HEAVY, sorted(modules & HEAVY)

    import ftlog

    for name in ftlog.__all__:
        assert getattr(ftlog, name) is not None, name
    assert set(ftlog.__all__) <= set(dir(ftlog))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = ftlog.nothing_here  # type: ignore[attr-defined]
