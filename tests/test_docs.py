"""The README documents every command, and every command explains itself in --help."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ftlog.cli import cli

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
COMMANDS = sorted(cli.commands)


def test_readme_opens_with_the_two_commands() -> None:
    head = README[: README.index("## Usage")]
    assert "make demo" in head and "make test" in head


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_documented_and_has_help(name: str) -> None:
    assert f"`ftlog {name}" in README, f"README does not document `ftlog {name}`"
    command = cli.commands[name]
    assert command.help, f"ftlog {name} has no help text"
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.opts[0] in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_readme_option_exists(name: str) -> None:
    """Options the README shows for a command are real options of that command."""
    documented = [line for line in README.splitlines() if line.startswith(f"| `ftlog {name}")]
    options = {opt for param in cli.commands[name].params for opt in getattr(param, "opts", [])}
    for line in documented:
        for word in line.replace("[", " ").replace("]", " ").replace("`", " ").split():
            if word.startswith("--"):
                assert word in options, f"README shows {word} for ftlog {name}, which has no such option"


def test_reliability_table_names_real_tests() -> None:
    """Every `tests/file.py::test_name` the reliability document cites exists."""
    root = Path(__file__).parent.parent
    text = (root / "docs" / "reliability.md").read_text(encoding="utf-8")
    cited = set(re.findall(r"`(tests/\w+\.py)::(\w+)(?:\[[^\]]*\])?`", text))
    assert len(cited) > 20
    for path, name in cited:
        assert re.search(rf"^def {name}\(", (root / path).read_text(encoding="utf-8"), re.MULTILINE), (path, name)
