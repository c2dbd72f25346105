"""The ``ftlog`` command line: parse, call one library function, print. Data on stdout, chatter on stderr.

Exit codes: 0 success; 1 error (one ``Error: ...`` line); 2 usage error; 3 ``collect`` described some tasks but
not all (every failure is recorded in ``polls``).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

import click

# Only light modules here: each command imports what it uses, so `ftlog --help` loads no pandas, pyarrow, duckdb,
# requests or matplotlib.
from .config import (
    ATTEMPT_SECONDS,
    CALL_SECONDS,
    DEFAULT_CONCURRENCY,
    DEFAULT_RPS,
    EVENT_KINDS,
    MAX_BYTES,
    NOTIFY_FORMATS,
    SQL_ENGINES,
    base_url_from_env,
    load_credentials,
    settings,
)
from .errors import FtlogError
from .redact import CONTROL, RedactingFilter, printable, redact

if TYPE_CHECKING:
    import pandas as pd

    from .client import QianfanClient
    from .collect import RoundResult
    from .rules import Rule

F = TypeVar("F", bound=Callable[..., Any])
EXIT_PARTIAL = 3
FORMATS = ("table", "csv", "json")
# Upper bounds of the float options: beyond them a value is a typo, and some would overflow a timer or a time.
MAX_RPS = 1000.0  # requests per second
MAX_INTERVAL = 86400.0  # seconds between watch rounds: a day (longer is cron's job)
MAX_STALL_MINUTES = 525600.0  # a year
MAX_SPEED = 1e6  # simulated time this many times faster than real time
MAX_LATENCY = 3600.0  # seconds added to every simulated answer


class Finite(click.FloatRange):
    """A float within bounds, and finite: click.FloatRange lets NaN through every bound (each comparison with NaN
    is false), so ``--rps nan`` would silently lift the rate cap. Every float option uses this type, so its help
    shows the bounds."""

    name = "float"  # the metavar in --help, beside the bounds

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number ({self._describe_range()}).", param, ctx)
        return number


def handle_errors(func: F) -> F:
    """Turn every ftlog error into one ``Error: ...`` line and exit status 1, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FtlogError as exc:
            raise click.ClickException(error_line(str(exc))) from None
        except Exception as exc:
            # A DuckDB error can only come from a command that loaded duckdb: look it up instead of importing it.
            duckdb = sys.modules.get("duckdb")
            if duckdb is None or not isinstance(exc, duckdb.Error):
                raise
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise click.ClickException(error_line(f"query failed: {message}")) from None

    return wrapper  # type: ignore[return-value]


def error_line(text: str) -> str:
    """An error message as shown: no credentials of a URL it quotes, and one line whatever the API answered."""
    return printable(redact(text))


def data_option(func: F, *, create: bool = False, quick: Callable[..., bool] | None = None) -> F:
    """``--data``. The command runs only where there is a dataset (with ``create``, for ``collect``: a missing or
    empty folder too), so a mistyped path exits 1 instead of reading as an empty dataset. Checked once every
    option is parsed, so usage errors still come first. ``quick``, given the command's arguments, may answer
    first, from files that only a dataset holds; when it does not (False), the command runs."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if quick is not None and quick(**kwargs):
            return None
        from .store import require_dataset

        try:
            require_dataset(kwargs["data"], create=create)
        except FtlogError as exc:
            raise click.ClickException(error_line(str(exc))) from None
        return func(*args, **kwargs)

    return click.option(  # type: ignore[return-value]
        "--data",
        envvar="FTLOG_DATA",
        default="data",
        show_default=True,
        help="Dataset folder or s3:// URI (env FTLOG_DATA).",
    )(wrapper)


def new_data_option(func: F) -> F:
    """``--data`` for ``collect``, whose first round creates the dataset in a missing or empty folder."""
    return data_option(func, create=True)


def echo_frame(frame: pd.DataFrame, fmt: str) -> None:
    """Write a DataFrame to stdout as an aligned table, CSV, JSON (a list of objects) or markdown.

    Values and column names come from the API and from SQL, and may hold terminal control sequences. Table, CSV
    and markdown show each control character as its escape (ESC as the text ``\x1b``; CSV keeps line breaks and
    tabs, which it quotes); JSON escapes them as ``\u001b``, so it still holds the exact text."""
    import pandas as pd

    if fmt == "json":
        text = frame.to_json(orient="records", date_format="iso", date_unit="us", force_ascii=False)
        # pandas escapes C0 controls itself; DEL, C1 and the bidi marks it writes as they are.
        click.echo(CONTROL.sub(lambda m: f"\\u{ord(m[0]):04x}", text))
        return
    frame = printable_frame(frame, keep="\n\t" if fmt == "csv" else "")
    if fmt == "csv":
        click.echo(frame.to_csv(index=False), nl=False)
    elif fmt == "markdown":
        click.echo(_markdown(frame))
    elif frame.empty:
        click.echo("(no rows)", err=True)
    else:
        with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 250):
            click.echo(frame.to_string(index=False))


def printable_frame(frame: pd.DataFrame, keep: str = "") -> pd.DataFrame:
    """A copy of ``frame`` whose column names and text, also inside lists and structs, are ``printable``."""
    import numpy as np
    import pandas as pd

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return printable(value, keep)
        if isinstance(value, np.ndarray):  # lists from DuckDB (pandas would print their strings raw)
            value = value.tolist()
        if isinstance(value, (list, tuple)):
            return [clean(item) for item in value]
        if isinstance(value, dict):
            return {clean(key): clean(item) for key, item in value.items()}
        return value

    out: pd.DataFrame = frame.copy()
    out.columns = [printable(str(column)) for column in frame.columns]
    for i, dtype in enumerate(out.dtypes):
        if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype) or dtype == "category":
            out.isetitem(i, out.iloc[:, i].map(clean, na_action="ignore").to_numpy())  # by position: names may repeat
    return out


def parse_group_columns(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    from .analysis import GROUP_COLUMNS

    columns = [column.strip() for column in value.split(",") if column.strip()]
    unknown = [column for column in columns if column not in GROUP_COLUMNS]
    if unknown or not columns:
        raise click.BadParameter(f"{', '.join(unknown) or 'nothing'}: choose from {', '.join(GROUP_COLUMNS)}")
    return columns


def _markdown(frame: pd.DataFrame) -> str:
    import pandas as pd

    def cell(value: Any) -> str:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return ""
        return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ftlog", prog_name="ftlog")  # looked up only when asked
@click.option("-v", "--verbose", is_flag=True, help="Log retries and other details to stderr.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Track Baidu Qianfan fine-tuning runs: collect snapshots, query and compare them, write reports."""
    ctx.default_map = dotenv_defaults()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())  # log lines quote URLs and API messages too
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
        handlers=[handler],
    )


def dotenv_defaults() -> dict[str, dict[str, str]]:
    """Option values from ``.env`` for options that have an environment variable (``FTLOG_DATA``, ``FTLOG_RPS``):
    click ranks these defaults below the command line and the real environment, as for every other setting."""
    values = settings()
    defaults: dict[str, dict[str, str]] = {}
    for name, command in cli.commands.items():
        for param in command.params:
            if isinstance(param.envvar, str) and values.get(param.envvar) and param.name:
                defaults.setdefault(name, {})[param.name] = values[param.envvar]
    return defaults


@contextmanager
def stop_on_interrupt() -> Iterator[threading.Event]:
    """Ctrl-C (or SIGTERM) sets an event instead of killing the process, so the current write completes."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()  # before the message: a second Ctrl-C answering the message must find it set
        click.echo("stopping after the current round's write (Ctrl-C again to abort)", err=True)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    index, _, count = value.partition("/")
    if not (index.isdigit() and count.isdigit()) or int(count) < 1 or int(index) > int(count):
        raise click.BadParameter(f"{value!r}: expected I/N with 1 <= I <= N, e.g. 2/4")
    return int(index), int(count)


def parse_rules(values: tuple[str, ...]) -> tuple[Rule, ...]:
    from .rules import RuleError, parse  # the standard library only

    try:
        return tuple(dict.fromkeys(parse(value) for value in values))
    except RuleError as exc:
        raise click.BadParameter(str(exc)) from None


def make_client(
    endpoint: str | None, rps: float, timeout: float = CALL_SECONDS, max_answer_mb: float = MAX_BYTES / 2**20
) -> QianfanClient:
    from .client import QianfanClient, RetryPolicy

    return QianfanClient(load_credentials(), base_url=endpoint or base_url_from_env(), rps=rps,
                         timeout=min(ATTEMPT_SECONDS, timeout), retry=RetryPolicy(total=timeout),
                         max_bytes=int(max_answer_mb * 2**20))  # fmt: skip


@cli.command()
@click.argument("task_ids", nargs=-1)
@click.option("--job", "job_ids", multiple=True, metavar="JOB_ID", help="Collect every task of this job.")
@click.option("--all", "all_jobs", is_flag=True, help="Collect every task of every job.")
@click.option("--watch", "watching", is_flag=True, help="Repeat every --interval seconds.")
@click.option("--interval", default=60.0, show_default=True, type=Finite(0.1, MAX_INTERVAL), help="Seconds.")
@click.option("--until-done", is_flag=True, help="With --watch: stop once every task is Done, Failed or Stopped.")
@click.option("--endpoint", metavar="URL", help="API base URL (env QIANFAN_CONSOLE_API_BASE_URL).")
@click.option("--rps", envvar="FTLOG_RPS", type=Finite(0.01, MAX_RPS), default=DEFAULT_RPS,
              show_default=True, help="Requests-per-second cap (env FTLOG_RPS).")  # fmt: skip
@click.option("--concurrency", type=click.IntRange(min=1, max=64), default=DEFAULT_CONCURRENCY, show_default=True)
@click.option("--timeout", type=Finite(1, 3600), default=CALL_SECONDS, show_default=True,
              help="Seconds one API call may take in all, retries included (each try at most 30).")  # fmt: skip
@click.option("--max-answer-mb", type=Finite(0.01, 4096), default=MAX_BYTES / 2**20, show_default=True,
              help="Largest API answer read, decompressed; a larger one is an error poll.")  # fmt: skip
@click.option("--shard", metavar="I/N", callback=lambda ctx, param, value: parse_shard(value),
              help="Collect only the jobs whose stable hash falls in shard I of N (1 <= I <= N).")  # fmt: skip
@click.option("--notify", "notify_urls", multiple=True, metavar="URL",
              help="POST each event to this webhook (repeatable; env FTLOG_NOTIFY, space-separated).")  # fmt: skip
@click.option("--notify-command", "notify_commands", multiple=True, metavar="CMD",
              help="Run CMD (no shell) with each event as JSON on stdin (env FTLOG_NOTIFY_COMMAND).")  # fmt: skip
@click.option("--notify-format", type=click.Choice(NOTIFY_FORMATS),
              help="Webhook body; auto: chat robot format by host, else JSON (env FTLOG_NOTIFY_FORMAT).")  # fmt: skip
@click.option("--stall-minutes", default=30.0, show_default=True, type=Finite(0, MAX_STALL_MINUTES),
              help="Report a stall when a Running task's progress has not moved for this long (0: never).")  # fmt: skip
@click.option(
    "--stop-when",
    "stop_when",
    multiple=True,
    metavar="RULE",
    callback=lambda ctx, param, value: parse_rules(value),
    help="Judge running tasks by RULE each round (repeatable): nan, diverged[:RATIO[:K]] (1.5, 3), "
    "plateau[:PCT[:K]] (1, 5). Advice, recorded as stop events and actions, unless --stop-tasks.",
)
@click.option("--stop-tasks", is_flag=True, help="With --stop-when: stop the tasks a rule trips on (once each).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary line.")
@new_data_option
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
    timeout: float,
    max_answer_mb: float,
    shard: tuple[int, int] | None,
    notify_urls: tuple[str, ...],
    notify_commands: tuple[str, ...],
    notify_format: str | None,
    stall_minutes: float,
    stop_when: tuple[Rule, ...],
    stop_tasks: bool,
    quiet: bool,
    data: str,
) -> None:
    """Describe tasks and append what changed to the dataset (one round, or --watch)."""
    from .collect import Selection, after_round, run_round, watch
    from .notify import Notifier, targets_from
    from .store import Dataset

    if until_done and not watching:
        raise click.UsageError("--until-done needs --watch")
    if not (task_ids or job_ids or all_jobs):
        raise click.UsageError("nothing to collect: name task ids, use --job JOB_ID, or --all")
    if shard and not (job_ids or all_jobs):
        raise click.UsageError("--shard splits jobs: use it with --all or --job")
    if stop_tasks and not stop_when:
        raise click.UsageError("--stop-tasks acts on --stop-when rules: name at least one, e.g. --stop-when nan")
    selection = Selection(task_ids, job_ids, all_jobs, shard)
    dataset = Dataset(data)
    client = make_client(endpoint, rps, timeout, max_answer_mb)
    targets = targets_from(notify_urls, notify_commands, notify_format)
    notifier = Notifier(targets) if targets else None
    stall_after = timedelta(minutes=stall_minutes) if stall_minutes else None
    show = not quiet and sys.stderr.isatty()
    stop_rules = None
    if stop_when:
        from .stopping import StopRules

        stop_rules = StopRules(stop_when, client if stop_tasks else None)
    after: dict[str, Any] = {"notifier": notifier, "stop_rules": stop_rules}

    with stop_on_interrupt() as stop:

        def one_round() -> RoundResult:
            # The round (fetch, diff, save), then compaction and notifications; exit 1 if nothing was described.
            options: dict[str, Any] = {"concurrency": concurrency, "stop": stop, "stall_after": stall_after}
            if not show:
                return after_round(dataset, run_round(client, dataset, selection, **options), **after)
            with click.progressbar(length=0, label="describing", file=sys.stderr, show_pos=True) as bar:

                def step(done: int, total: int) -> None:
                    bar.length = total  # known only once discovery has listed the tasks
                    bar.update(done - bar.pos)

                result = run_round(client, dataset, selection, progress=step, **options)
            return after_round(dataset, result, **after)

        def report(result: RoundResult) -> None:
            if not quiet:
                click.echo(result.summary(), err=True)

        if watching:
            last = watch(one_round, interval=interval, until_done=until_done, stop=stop, on_round=report,
                         on_error=lambda e: click.echo(f"Warning: {error_line(str(e))}", err=True))  # fmt: skip
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
    """Run a read-only SQL query against the views (snapshots, tasks, checkpoints, curves, metrics, metric_values,
    status_changes, polls, events, deliveries, actions). It reads the dataset and nothing else: for other SQL use
    ftlog.connect() in Python."""
    import pandas as pd

    from .views import connect, require_select, retry_vanished

    require_select(sql)  # before any file is read: nothing but queries, which the confined connection limits
    with connect(data, confined=True) as con:

        def run() -> pd.DataFrame:
            relation = con.sql(sql)
            result: pd.DataFrame = relation.df() if relation is not None else pd.DataFrame()
            return result

        frame = retry_vanished(run)  # again if a compaction removed a file mid-query
    echo_frame(nested_as_json(frame) if fmt == "csv" else frame, fmt)


@cli.command("sql")
@click.option("--engine", type=click.Choice(SQL_ENGINES), required=True, help="The engine the statements are for.")
@data_option
@handle_errors
def sql_command(engine: str, data: str) -> None:
    """Print the statements that register every ftlog view (snapshots, tasks, checkpoints, curves, metrics,
    metric_values, status_changes, polls, events, deliveries, actions) over the dataset in another session of ENGINE,
    generated from ftlog's own view definitions, for a session with no ftlog: for duckdb, a script for any DuckDB
    session; for spark, Spark SQL statements, each ending in ';' at the end of a line, to run one by one."""
    from .views import sql_script

    click.echo(sql_script(data, engine), nl=False)


def nested_as_json(frame: pd.DataFrame) -> pd.DataFrame:
    """Lists and structs (e.g. ``snapshots.metrics``) as JSON text: a CSV cell would otherwise hold a numpy repr."""
    import numpy as np
    import pandas as pd

    def plain(value: Any) -> Any:  # numpy arrays and scalars as Python values, anything else (times) as text
        return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else str(value)

    def cell(value: Any) -> Any:
        if isinstance(value, (list, dict, np.ndarray)):
            return json.dumps(value, ensure_ascii=False, default=plain)
        return value

    out: pd.DataFrame = frame.copy()
    for i, dtype in enumerate(out.dtypes):
        if pd.api.types.is_object_dtype(dtype):  # by position: a query may repeat a column name
            out.iloc[:, i] = out.iloc[:, i].map(cell)
    return out


@cli.command()
@data_option
@handle_errors
def compact(data: str) -> None:
    """Merge the small files of closed date partitions into one file each, and rewrite files written by an older
    ftlog so that they gain the columns added since."""
    from .refresh import refresh_summaries
    from .store import Dataset

    dataset = Dataset(data)
    moment = datetime.now(timezone.utc)
    removed = dataset.compact(moment, upgrade=True)
    refresh_summaries(dataset, moment)
    click.echo(f"compacted: {removed} files merged", err=True)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--seed", default=0, show_default=True, help="Same seed, same population.")
@click.option("--speed", default=1.0, show_default=True, type=Finite(0.001, MAX_SPEED),
              help="Run time this many times faster than real time.")  # fmt: skip
@click.option("--jobs", default=6, show_default=True, type=click.IntRange(min=0))
@click.option("--tasks-per-job", type=click.IntRange(min=0), help="Default: 3 to 6 at random.")
@click.option("--rate-429", default=0.0, type=Finite(0, 1), help="Share of answers that are 429.")
@click.option("--rate-500", default=0.0, type=Finite(0, 1), help="Share of answers that are 500.")
@click.option("--rate-slow", default=0.0, type=Finite(0, 1), help="Share of answers delayed.")
@click.option("--rate-reset", default=0.0, type=Finite(0, 1), help="Share of connections reset.")
@click.option("--rate-html", default=0.0, type=Finite(0, 1), help="Share of answers that are HTML 502s.")
@click.option("--rate-truncate", default=0.0, type=Finite(0, 1), help="Share of answers cut off.")
@click.option("--latency", default=0.0, type=Finite(0, MAX_LATENCY), help="Seconds added to every answer.")
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
    rate_html: float,
    rate_truncate: float,
    latency: float,
    time_field: str,
) -> None:
    """Serve a Qianfan-compatible fine-tuning API on HOST:PORT until interrupted."""
    from .simulator import Faults, Simulator

    env = settings()
    credentials = None
    if env.get("QIANFAN_ACCESS_KEY") and env.get("QIANFAN_SECRET_KEY"):
        credentials = {env["QIANFAN_ACCESS_KEY"]: env["QIANFAN_SECRET_KEY"]}
    faults = Faults(
        rate_429=rate_429,
        rate_500=rate_500,
        rate_slow=rate_slow,
        rate_reset=rate_reset,
        rate_html=rate_html,
        rate_truncate=rate_truncate,
        latency=latency,
    )
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


def quick_status(fmt: str, stall_minutes: float, data: str) -> bool:
    """``ftlog status`` from a local dataset's present files, without pandas (ftlog/quick.py); False when they
    cannot answer alone."""
    from .quick import print_status

    return print_status(data, fmt, timedelta(minutes=stall_minutes))


@cli.command()
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--stall-minutes", default=30.0, show_default=True, type=Finite(0, MAX_STALL_MINUTES),
              help="Flag Running tasks whose progress has not moved for this long.")  # fmt: skip
@functools.partial(data_option, quick=quick_status)
@handle_errors
def status(fmt: str, stall_minutes: float, data: str) -> None:
    """One row per task: latest status, progress, ETA, best loss, last change."""
    from .analysis import status as task_status

    echo_frame(task_status(data, stall_after=timedelta(minutes=stall_minutes)), fmt)


@cli.command()
@click.option(
    "--by",
    default="model,train_mode,parameter_scale",
    show_default=True,
    callback=parse_group_columns,
    help="Comma-separated group columns: model, train_mode, parameter_scale, job_id, job_name, run_status.",
)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "markdown"]), default="table", show_default=True)
@data_option
@handle_errors
def compare(by: str, fmt: str, data: str) -> None:
    """Compare BLEU/ROUGE and final/best loss and perplexity across groups of tasks."""
    from .analysis import compare as compare_groups

    echo_frame(compare_groups(data, by=by), fmt)


FORCE_HELP = (
    "Write the report even if DIR holds files ftlog did not write: files of the report's names are replaced, "
    "none is removed."
)


@cli.command("report")
@click.option("--out", default="reports", show_default=True, metavar="DIR", help="Folder for index.html and PNGs.")
@click.option("--job", "job_ids", multiple=True, metavar="JOB_ID", help="Only the tasks of this job (repeatable).")
@click.option("--task", "task_ids", multiple=True, metavar="TASK_ID", help="Only this task (repeatable).")
@click.option("--by", default="model,train_mode,parameter_scale", show_default=True, callback=parse_group_columns,
              metavar="COLS", help="Comma-separated group columns for the comparison and the charts.")  # fmt: skip
@click.option("--ema", type=Finite(0, 1, min_open=True), metavar="ALPHA",
              help="Draw curves smoothed by an exponential moving average (e.g. 0.3) over the raw ones.")  # fmt: skip
@click.option("--force", is_flag=True, help=FORCE_HELP)
@click.option("--static", is_flag=True, help="The PNG figures and tables only: no interactive charts, no script.")
@data_option
@handle_errors
def report_command(
    out: str,
    job_ids: tuple[str, ...],
    task_ids: tuple[str, ...],
    by: list[str],
    ema: float | None,
    force: bool,
    static: bool,
    data: str,
) -> None:
    """Write a self-contained HTML report (DIR/index.html, interactive) and its PNG figures; print the index.html
    path. It opens offline: every script, style and datum is inside the file."""
    from .report import write_report

    index = write_report(data, out, jobs=job_ids or None, tasks=task_ids or None, by=by, ema=ema, force=force,
                         interactive=not static)  # fmt: skip
    click.echo(str(index))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
@data_option
@handle_errors
def serve(host: str, port: int, data: str) -> None:
    """Serve the interactive report, live, over HTTP until interrupted. Read-only: GET /api/tasks,
    /api/curves?task_id=ID, /api/compare?by=COLS (JSON) and the page at /."""
    from .serve import is_loopback, make_server_for
    from .store import Dataset

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on stderr
    dataset = Dataset(data)
    if not is_loopback(host):
        click.echo(f"warning: serving on {host}, not loopback: anyone who can reach this machine can read the "
                   "dataset's task names, metrics and errors through it", err=True)  # fmt: skip
    try:
        server = make_server_for(dataset, host, port)
    except OSError as exc:
        raise FtlogError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port") from None
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"ftlog serve: http://{shown}:{server.server_address[1]}/ over {dataset.display} (read-only; Ctrl-C "
               "stops)", err=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("ftlog serve stopped", err=True)
    finally:
        server.server_close()
        server.app.live.close()


@cli.command("demo")
@click.option("--out", default="reports/demo", show_default=True, metavar="DIR", help="Folder for the report.")
@click.option("--data", default="data/demo", show_default=True, metavar="PATH",
              help="The demo's own dataset folder, emptied first (never FTLOG_DATA).")  # fmt: skip
@click.option("--seed", default=1, show_default=True, help="Same seed, same population.")
@click.option("--speed", default=50.0, show_default=True, type=Finite(0.001, MAX_SPEED),
              help="Simulated time runs this many times faster than real time.")  # fmt: skip
@click.option("--interval", default=2.0, show_default=True, type=Finite(0.05, MAX_INTERVAL), help="Seconds.")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@handle_errors
def demo_command(out: str, data: str, seed: int, speed: float, interval: float, force: bool) -> None:
    """Simulate fine-tuning jobs, collect them until they finish, write the report; print the index.html path."""
    from .demo import run_demo

    with stop_on_interrupt() as stop:
        index = run_demo(data=data, out=out, seed=seed, speed=speed, interval=interval, stop=stop, force=force,
                         progress=lambda line: click.echo(line, err=True))  # fmt: skip
    click.echo(str(index))


def parse_time(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from .normalise import as_time

    if value is None:
        return None
    moment = as_time(value)
    if moment is None:
        raise click.BadParameter(f"{value!r}: expected an ISO time such as 2024-05-06T08:00Z (naive means UTC)")
    return moment


@cli.command("events")
@click.option("--since", metavar="ISO-TIME", callback=parse_time, help="Only events at or after this time (UTC).")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(EVENT_KINDS), help="Only this kind (repeatable).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@data_option
@handle_errors
def events_command(since: Any, kinds: tuple[str, ...], fmt: str, data: str) -> None:
    """List events: tasks entering Done, Failed or Stopped, stalls, and new best checkpoints, oldest first."""
    from .analysis import events

    frame = events(data, since=since, kinds=kinds)
    if fmt == "json":  # details as objects, not JSON text inside JSON
        frame["details"] = frame["details"].map(json.loads)
    echo_frame(frame, fmt)


@cli.command("check")
@click.option(
    "--repair",
    is_flag=True,
    help="Move unreadable and foreign-schema files to DATA/_quarantine/; delete stale temporary files.",
)
@data_option
@handle_errors
def check_command(repair: bool, data: str) -> None:
    """Report unreadable files, schema mismatches and duplicate keys; exit 1 if there are any."""
    from .check import check

    report = check(data, repair=repair)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        sys.exit(1)


def api_options(func: F) -> F:
    """``--endpoint``, ``--rps`` and ``--timeout`` of a command that calls the API, as ``collect`` has them."""
    for option in reversed([
        click.option("--endpoint", metavar="URL", help="API base URL (env QIANFAN_CONSOLE_API_BASE_URL)."),
        click.option("--rps", envvar="FTLOG_RPS", type=Finite(0.01, MAX_RPS), default=DEFAULT_RPS,
                     show_default=True, help="Requests-per-second cap (env FTLOG_RPS)."),
        click.option("--timeout", type=Finite(1, 3600), default=CALL_SECONDS, show_default=True,
                     help="Seconds one API call may take in all, retries included (each try at most 30)."),
    ]):  # fmt: skip
        func = option(func)
    return func


@cli.command("stop")
@click.argument("task_ids", nargs=-1, required=True, metavar="TASK_ID...")
@click.option("--yes", is_flag=True, help="Send the stops; without it, only say what would be done.")
@api_options
@new_data_option
@handle_errors
def stop_command(task_ids: tuple[str, ...], yes: bool, endpoint: str | None, rps: float, timeout: float,
                 data: str) -> None:  # fmt: skip
    """Stop queued or running tasks (StopFineTuningTask). Without --yes, print what would be done: nothing is sent
    and no credentials are needed. With --yes, stop each task, print its outcome and record it in the actions
    table; exit 1 if any task was not stopped (the others are still tried)."""
    from . import act
    from .store import Dataset

    dataset = Dataset(data)
    if not yes:
        known = act.known_tasks(dataset, task_ids)
        for task_id in dict.fromkeys(task_ids):
            click.echo(printable(act.intent(task_id, known.get(task_id))))
        click.echo("dry run: nothing sent; add --yes to stop", err=True)
        return
    with make_client(endpoint, rps, timeout) as client:
        rows = []
        for row in act.stop_tasks(client, dataset, task_ids):
            click.echo(printable(act.outcome_line(row)))
            rows.append(row)
    failed = [act.problem(row) for row in rows if row["outcome"] != "sent"]
    if failed:
        raise click.ClickException(error_line(f"could not stop {'; '.join(failed)}"))


def parse_settings(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    from .act import parse_setting

    try:
        return dict(parse_setting(value) for value in values)
    except FtlogError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command("continue")
@click.argument("task_id")
@click.option("--step", type=click.IntRange(min=0), help="Continue from this checkpoint step (one stored).")
@click.option("--best", type=click.Choice(["loss", "perplexity"]),
              help="Continue from the checkpoint of lowest training loss (the default) or perplexity.")  # fmt: skip
@click.option("--dataset", "version_id", required=True, metavar="VERSION_ID",
              help="The dataset version to train on (datasetConfig.versions).")  # fmt: skip
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", callback=parse_settings,
              help="A hyperParameterConfig value (repeatable): a number or true/false as such, else text.")  # fmt: skip
@click.option("--body", "body_file", metavar="FILE",
              help="A JSON object of further CreateFineTuningTask fields; the fields ftlog sets win.")  # fmt: skip
@click.option("--yes", is_flag=True, help="Create the task; without it, print the request body and send nothing.")
@api_options
@data_option
@handle_errors
def continue_command(task_id: str, step: int | None, best: str | None, version_id: str, settings: dict[str, Any],
                     body_file: str | None, yes: bool, endpoint: str | None, rps: float, timeout: float,
                     data: str) -> None:  # fmt: skip
    """Create a task in TASK_ID's job that continues from one of its stored checkpoints (CreateFineTuningTask with
    incrementTaskId and incrementCheckpointStep), with the task's parameter scale. Without --yes, print the exact
    request body: nothing is sent and no credentials are needed. With --yes, send it once (never retried), print
    the new task id and record the action in the actions table."""
    from . import act
    from .store import Dataset

    if step is not None and best is not None:
        raise click.UsageError("--step and --best exclude each other: give one")
    base = act.load_body(body_file) if body_file else None
    dataset = Dataset(data)
    plan = act.plan_continue(dataset, task_id, version_id=version_id, step=step, best=best or "loss",
                             settings=settings, base=base)  # fmt: skip
    if not yes:
        text = json.dumps(plan.body, indent=2, ensure_ascii=False)
        # Control characters in strings as JSON escapes, as `--format json` prints them; JSON's own line breaks kept.
        click.echo(CONTROL.sub(lambda m: m[0] if m[0] == "\n" else f"\\u{ord(m[0]):04x}", text))
        click.echo(f"dry run: nothing sent; continues {task_id} from {plan.reason}; add --yes to create the task",
                   err=True)  # fmt: skip
        return
    with make_client(endpoint, rps, timeout) as client:
        row = act.continue_task(client, plan)
    if row["outcome"] == "sent":
        click.echo(f"created {row['new_task_id']} in {plan.job_id}, from {task_id} {plan.reason}", err=True)
        click.echo(row["new_task_id"])
    act.record(dataset, [row])
    if row["outcome"] != "sent":
        raise click.ClickException(error_line(f"could not continue {act.problem(row)}"))


def main() -> None:  # pragma: no cover - console entry point
    cli()
