"""Settings: the process environment over a ``.env`` file, and the defaults the command line shows.

Every setting ftlog reads outside click's own ``envvar`` options (credentials, the API base URL, ``FTLOG_NOTIFY*``)
comes from :func:`settings`. The ``.env`` file is parsed by python-dotenv, as the qianfan SDK's settings parse it:
quotes, escapes, ``export`` prefixes, multi-line values and ``${VAR}`` (which python-dotenv resolves from the lines
above it first, then from the process environment).

This module imports nothing heavy: ``ftlog --help`` reads the option defaults and choices below before any command
loads the client, the store or pandas.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://qianfan.baidubce.com"
DEFAULT_RPS = 10.0
DEFAULT_CONCURRENCY = 8  # describe calls in flight in one round
CALL_SECONDS = 60.0  # the most one call may take, retries and waits included ...
ATTEMPT_SECONDS = 30.0  # ... and one attempt of it
MAX_BYTES = 32 * 1024 * 1024  # the largest answer read (decoded); larger ones are error polls
NOTIFY_FORMATS = ("auto", "json", "markdown", "dingtalk", "feishu")
EVENT_KINDS = ("status", "stall", "best_checkpoint", "stop")
SQL_ENGINES = ("duckdb", "spark")  # `ftlog sql --engine`: the dialects of views.DIALECTS, named here for a light CLI

_FLAGGED_DOTENV: set[Path] = set()


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = field(repr=False)

    def __str__(self) -> str:
        return f"Credentials(access_key={self.access_key!r}, secret_key=***)"


def read_dotenv(path: str | Path = ".env") -> dict[str, str]:
    """The variables a ``.env`` file sets, if it exists (a name without ``=`` sets nothing)."""
    env_path = Path(path)
    if not env_path.is_file():
        return {}
    mode = env_path.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH) and env_path.resolve() not in _FLAGGED_DOTENV:
        _FLAGGED_DOTENV.add(env_path.resolve())  # once per process: every setting lookup reads the file again
        log.warning("%s is readable by other users; restrict it with: chmod 600 %s", env_path, env_path)
    from dotenv import dotenv_values  # only when there is a file to read

    return {key: value for key, value in dotenv_values(env_path, encoding="utf-8").items() if value is not None}


def settings(environ: Mapping[str, str] | None = None, dotenv: str | Path = ".env") -> dict[str, str]:
    """The process environment over the ``.env`` file: where every ftlog setting is read from."""
    merged = read_dotenv(dotenv)
    # An empty variable counts as unset, so `export QIANFAN_SECRET_KEY=` does not hide the .env value.
    merged.update({k: v for k, v in (os.environ if environ is None else environ).items() if v != ""})
    return merged


def load_credentials(environ: Mapping[str, str] | None = None) -> Credentials:
    env = settings(environ)
    access_key = env.get("QIANFAN_ACCESS_KEY", "").strip()
    secret_key = env.get("QIANFAN_SECRET_KEY", "").strip()
    if not access_key or not secret_key:
        raise ConfigError(
            "no Qianfan credentials: set QIANFAN_ACCESS_KEY and QIANFAN_SECRET_KEY in the environment or in .env"
        )
    return Credentials(access_key, secret_key)


def base_url_from_env(environ: Mapping[str, str] | None = None) -> str:
    return settings(environ).get("QIANFAN_CONSOLE_API_BASE_URL") or DEFAULT_BASE_URL
