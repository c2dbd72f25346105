"""Settings: the process environment over ``.env``, which python-dotenv parses as the qianfan SDK's settings do."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ftlog.config import DEFAULT_BASE_URL, Credentials, base_url_from_env, load_credentials, read_dotenv, settings
from ftlog.errors import ConfigError
from ftlog.notify import targets_from

DOTENV = r"""# Qianfan IAM keys and ftlog settings
export QIANFAN_ACCESS_KEY="ak-from-file"
QIANFAN_SECRET_KEY = 'sk from file'
ESCAPED="tab\there \"quoted\" back\\slash"
LITERAL='no\tescapes in single quotes'
EXPANDED=${QIANFAN_ACCESS_KEY}/${FROM_ENVIRONMENT}
DEFAULTED=${UNSET_ANYWHERE:-fallback}
MULTILINE="first line
second line"
HASH_QUOTED="keeps # this"
HASH_PLAIN=plain value # a comment
EMPTY=
NAME_ONLY
"""


@pytest.fixture
def dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FROM_ENVIRONMENT", "env-value")
    monkeypatch.delenv("UNSET_ANYWHERE", raising=False)
    path = tmp_path / ".env"
    path.write_text(DOTENV, encoding="utf-8")
    path.chmod(0o600)
    return path


def test_dotenv_is_parsed_like_python_dotenv(dotenv: Path) -> None:
    values = read_dotenv(dotenv)
    assert values["QIANFAN_ACCESS_KEY"] == "ak-from-file"  # export prefix, double quotes
    assert values["QIANFAN_SECRET_KEY"] == "sk from file"  # spaces around =, single quotes
    assert values["ESCAPED"] == 'tab\there "quoted" back\\slash'
    assert values["LITERAL"] == r"no\tescapes in single quotes"
    assert values["EXPANDED"] == "ak-from-file/env-value"  # a line above, then the process environment
    assert values["DEFAULTED"] == "fallback"
    assert values["MULTILINE"] == "first line\nsecond line"
    assert values["HASH_QUOTED"] == "keeps # this"
    assert values["HASH_PLAIN"] == "plain value"
    assert values["EMPTY"] == ""
    assert "NAME_ONLY" not in values  # a name without a value sets nothing


def test_no_dotenv_is_no_settings(tmp_path: Path) -> None:
    assert read_dotenv(tmp_path / ".env") == {}
    assert settings({}, dotenv=tmp_path / ".env") == {}


def test_the_environment_wins_and_an_empty_variable_counts_as_unset(dotenv: Path) -> None:
    env = settings({"QIANFAN_ACCESS_KEY": "ak-env", "QIANFAN_SECRET_KEY": "", "FTLOG_NOTIFY_FORMAT": "json"})
    assert env["QIANFAN_ACCESS_KEY"] == "ak-env"
    assert env["QIANFAN_SECRET_KEY"] == "sk from file"
    assert env["FTLOG_NOTIFY_FORMAT"] == "json"
    assert load_credentials({"QIANFAN_SECRET_KEY": ""}) == Credentials("ak-from-file", "sk from file")


def test_missing_or_blank_credentials_are_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="QIANFAN_ACCESS_KEY and QIANFAN_SECRET_KEY"):
        load_credentials({})
    (tmp_path / ".env").write_text('QIANFAN_ACCESS_KEY="  "\nQIANFAN_SECRET_KEY=sk\n', encoding="utf-8")
    (tmp_path / ".env").chmod(0o600)
    with pytest.raises(ConfigError):
        load_credentials({})


def test_base_url_comes_from_the_environment_or_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert base_url_from_env({}) == DEFAULT_BASE_URL
    (tmp_path / ".env").write_text("QIANFAN_CONSOLE_API_BASE_URL=http://127.0.0.1:9\n", encoding="utf-8")
    (tmp_path / ".env").chmod(0o600)
    assert base_url_from_env({}) == "http://127.0.0.1:9"
    assert base_url_from_env({"QIANFAN_CONSOLE_API_BASE_URL": "http://127.0.0.1:8"}) == "http://127.0.0.1:8"


def test_notification_targets_come_from_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("FTLOG_NOTIFY", "FTLOG_NOTIFY_COMMAND", "FTLOG_NOTIFY_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text(
        'FTLOG_NOTIFY="https://example.com/a https://example.com/b"\nFTLOG_NOTIFY_FORMAT=markdown\n', encoding="utf-8"
    )
    (tmp_path / ".env").chmod(0o600)
    targets = targets_from()
    assert len(targets) == 2 and all(getattr(target, "format", None) == "markdown" for target in targets)


def test_a_loose_dotenv_is_flagged_once_without_its_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    secret = "sk-loose-7f3a"
    (tmp_path / ".env").write_text(f"QIANFAN_ACCESS_KEY=ak\nQIANFAN_SECRET_KEY={secret}\n", encoding="utf-8")
    (tmp_path / ".env").chmod(0o604)
    with caplog.at_level(logging.WARNING):
        assert load_credentials({}).secret_key == secret  # still used
        settings({})
    flagged = [record.getMessage() for record in caplog.records if "readable by other users" in record.getMessage()]
    assert len(flagged) == 1 and "chmod 600" in flagged[0]
    assert secret not in caplog.text


def test_option_variables_come_from_dotenv_below_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FTLOG_DATA and FTLOG_RPS in .env feed --data and --rps; the real environment and the command line win."""
    from click.testing import CliRunner

    from ftlog.cli import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FTLOG_DATA", raising=False)
    monkeypatch.delenv("FTLOG_RPS", raising=False)
    (tmp_path / "from-dotenv" / "polls").mkdir(parents=True)  # a dataset, as far as the check goes
    (tmp_path / ".env").write_text("FTLOG_DATA=from-dotenv\nFTLOG_RPS=nan\n")
    (tmp_path / ".env").chmod(0o600)
    runner = CliRunner()
    missing = runner.invoke(cli, ["status", "--data", "typo"])
    assert missing.exit_code == 1 and "typo" in missing.stderr  # the command line wins
    assert runner.invoke(cli, ["status"]).exit_code == 0, "FTLOG_DATA from .env names the dataset"
    monkeypatch.setenv("FTLOG_DATA", "from-environment")
    assert "from-environment" in runner.invoke(cli, ["status"]).stderr  # the environment wins over .env
    bad_rps = runner.invoke(cli, ["collect", "task-x"])
    assert bad_rps.exit_code == 2 and "--rps" in bad_rps.stderr  # a .env value is checked like the option
