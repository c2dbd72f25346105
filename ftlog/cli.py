"""The ``ftlog`` command line: parse, call one library function, print. Data on stdout, chatter on stderr.

Exit codes: 0 success; 1 error (one ``Error: ...`` line); 2 usage error; 3 ``collect`` described some tasks but
not all (every failure is recorded in ``polls``).
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
import duckdb
import pandas as pd

from . import __version__
from .client import DEFAULT_RPS, QianfanClient, base_url_from_env, load_credentials, settings
from .collect import DEFAULT_CONCURRENCY, RoundResult, Selection, collect_round, watch
from .errors import FtlogError
from .store import Dataset

F = TypeVar("F", bound=Callable[..., Any])
EXIT_PARTIAL = 3
FORMATS = ("table", "csv", "json")


def handle_errors(func: F) -> F:
    """Turn every ftlog error into one ``Error: ...`` line and exit status 1, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FtlogError as exc:
            raise click.ClickException(str(exc)) from None
        except duckdb.Error as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise click.ClickException(f"query failed: {message}") from None

    return wrapper  # type: ignore[return-value]


def data_option(func: F) -> F:
    return click.option(
        "--data",
        envvar="FTLOG_DATA",
        default="data",
        show_default=True,
        help="Dataset folder or s3:// URI (env FTLOG_DATA).",
    )(func)


def echo_frame(frame: pd.DataFrame, fmt: str) -> None:
    """Write a DataFrame to stdout as an aligned table, CSV, JSON (a list of objects) or markdown."""
    if fmt == "csv":
        click.echo(frame.to_csv(index=False), nl=False)
    elif fmt == "json":
        click.echo(frame.to_json(orient="records", date_format="iso", force_ascii=False))
    elif fmt == "markdown":
        click.echo(_markdown(frame))
    elif frame.empty:
        click.echo("(no rows)", err=True)
    else:
        with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 250):
            click.echo(frame.to_string(index=False))


def _markdown(frame: pd.DataFrame) -> str:
    cells = frame.astype(object).where(frame.notna(), "").astype(str)
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ftlog")
@click.option("-v", "--verbose", is_flag=True, help="Log retries and other details to stderr.")
def cli(verbose: bool) -> None:
    """Track Baidu Qianfan fine-tuning runs: collect snapshots, query and compare them, write reports."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )


@contextmanager
def stop_on_interrupt() -> Iterator[threading.Event]:
    """Ctrl-C (or SIGTERM) sets an event instead of killing the process, so the current write completes."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        click.echo("stopping after the current round's write (Ctrl-C again to abort)", err=True)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def make_client(endpoint: str | None, rps: float) -> QianfanClient:
    return QianfanClient(load_credentials(), base_url=endpoint or base_url_from_env(), rps=rps)


@cli.command()
@click.argument("task_ids", nargs=-1)
@click.option("--job", "job_ids", multiple=True, metavar="JOB_ID", help="Collect every task of this job.")
@click.option("--all", "all_jobs", is_flag=True, help="Collect every task of every job.")
@click.option("--watch", "watching", is_flag=True, help="Repeat every --interval seconds.")
@click.option("--interval", default=60.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds.")
@click.option("--until-done", is_flag=True, help="With --watch: stop once every task is Done, Failed or Stopped.")
@click.option("--endpoint", metavar="URL", help="API base URL (env QIANFAN_CONSOLE_API_BASE_URL).")
@click.option("--rps", envvar="FTLOG_RPS", type=click.FloatRange(min=0.01), default=DEFAULT_RPS,
              show_default=True, help="Requests-per-second cap (env FTLOG_RPS).")  # fmt: skip
@click.option("--concurrency", type=click.IntRange(min=1, max=64), default=DEFAULT_CONCURRENCY, show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary line.")
@data_option
@handle_errors
def collect(
    task_ids: tuple[str, ...],
    job_ids: tuple[str, ...],
    all_jobs: bool,
    watching: bool,
    interval: float,
    until_done: bool,
    endpoint: str | None,
    rps: float,
    concurrency: int,
    quiet: bool,
    data: str,
) -> None:
    """Describe tasks and append what changed to the dataset (one round, or --watch)."""
    if until_done and not watching:
        raise click.UsageError("--until-done needs --watch")
    selection = Selection(task_ids, job_ids, all_jobs)
    dataset = Dataset(data)
    client = make_client(endpoint, rps)
    show = not quiet and sys.stderr.isatty()

    with stop_on_interrupt() as stop:

        def one_round() -> RoundResult:
            if not show:
                return collect_round(client, dataset, selection, concurrency=concurrency, stop=stop)
            with click.progressbar(length=0, label="describing", file=sys.stderr) as bar:
                return collect_round(
                    client, dataset, selection, concurrency=concurrency, stop=stop, progress=bar.update
                )

        def report(result: RoundResult) -> None:
            if not quiet:
                click.echo(result.summary(), err=True)

        if watching:
            last = watch(one_round, interval=interval, until_done=until_done, stop=stop, on_round=report,
                         on_error=lambda e: click.echo(f"Warning: {e}", err=True))  # fmt: skip
        else:
            last = one_round()
            report(last)
    if last is not None and (last.errors or last.discovery_errors):
        sys.exit(EXIT_PARTIAL)


@cli.command()
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@data_option
@handle_errors
def query(sql: str, fmt: str, data: str) -> None:
    """Run SQL against the views (snapshots, tasks, checkpoints, metrics, metric_values, status_changes, polls)."""
    from .views import connect

    with connect(data) as con:
        relation = con.sql(sql)
        echo_frame(relation.df() if relation is not None else pd.DataFrame(), fmt)


@cli.command()
@data_option
@handle_errors
def compact(data: str) -> None:
    """Merge the small files of closed date partitions into one file each."""
    removed = Dataset(data).compact()
    click.echo(f"compacted: {removed} files merged", err=True)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--seed", default=0, show_default=True, help="Same seed, same population.")
@click.option("--speed", default=1.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Run time this many times faster than real time.")  # fmt: skip
@click.option("--jobs", default=6, show_default=True, type=click.IntRange(min=0))
@click.option("--tasks-per-job", type=click.IntRange(min=0), help="Default: 3 to 6 at random.")
@click.option("--rate-429", default=0.0, type=click.FloatRange(0, 1), help="Share of answers that are 429.")
@click.option("--rate-500", default=0.0, type=click.FloatRange(0, 1), help="Share of answers that are 500.")
@click.option("--rate-slow", default=0.0, type=click.FloatRange(0, 1), help="Share of answers delayed.")
@click.option("--rate-reset", default=0.0, type=click.FloatRange(0, 1), help="Share of connections reset.")
@click.option("--latency", default=0.0, type=click.FloatRange(min=0), help="Seconds added to every answer.")
@click.option("--time-field", type=click.Choice(["Time", "Date"]), default="Time", show_default=True,
              help="Answer createTime/finishTime or createDate/finishDate.")  # fmt: skip
@handle_errors
def simulate(
    host: str,
    port: int,
    seed: int,
    speed: float,
    jobs: int,
    tasks_per_job: int | None,
    rate_429: float,
    rate_500: float,
    rate_slow: float,
    rate_reset: float,
    latency: float,
    time_field: str,
) -> None:
    """Serve a Qianfan-compatible fine-tuning API on HOST:PORT until interrupted."""
    from .simulator import Faults, Simulator

    env = settings()
    credentials = None
    if env.get("QIANFAN_ACCESS_KEY") and env.get("QIANFAN_SECRET_KEY"):
        credentials = {env["QIANFAN_ACCESS_KEY"]: env["QIANFAN_SECRET_KEY"]}
    faults = Faults(rate_429=rate_429, rate_500=rate_500, rate_slow=rate_slow, rate_reset=rate_reset, latency=latency)
    try:
        sim = Simulator(host=host, port=port, seed=seed, speed=speed, jobs=jobs, tasks_per_job=tasks_per_job,
                        faults=faults, credentials=credentials, time_field=time_field)  # fmt: skip
    except OSError as exc:
        raise FtlogError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from None
    click.echo(f"ftlog simulator: {sim.url} ({len(sim.tasks)} tasks in {len(sim.jobs)} jobs)", err=True)
    if credentials:
        click.echo("accepting the credentials in QIANFAN_ACCESS_KEY / QIANFAN_SECRET_KEY", err=True)
    else:
        click.echo(f"demo credentials:\n  export QIANFAN_ACCESS_KEY={sim.access_key}\n"
                   f"  export QIANFAN_SECRET_KEY={sim.secret_key}\n"
                   f"  export QIANFAN_CONSOLE_API_BASE_URL={sim.url}", err=True)  # fmt: skip
    try:
        sim.serve_forever()
    except KeyboardInterrupt:
        click.echo("simulator stopped", err=True)


def main() -> None:  # pragma: no cover - console entry point
    cli()
