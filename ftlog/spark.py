"""Spark SQL's dialect of ftlog's views: what ``ftlog sql --engine spark`` prints. The views are ftlog's own
(``views.view_definitions``); this module only spells them as Spark SQL, and reads each table's files with Spark's
Parquet source (temporary views ``_<table>_files``, partition ``date`` typed as a date)."""

from __future__ import annotations

import re

import pyarrow as pa

from .schema import DATA_FILES, TS, Dialect, Files

SPARK_TYPES = {pa.string(): "STRING", pa.float64(): "DOUBLE", pa.int32(): "INT", pa.int64(): "BIGINT",
               pa.bool_(): "BOOLEAN", pa.date32(): "DATE", TS: "TIMESTAMP"}  # fmt: skip
GLOB_CHARACTERS = re.compile(r"([\\{}\[\]*?,])")  # what Hadoop's path globs give a meaning


class SparkDialect(Dialect):
    """Spark SQL (3.4 and later), session time zone UTC, ANSI mode on or off."""

    name = "spark"
    semi_join = "LEFT SEMI JOIN"
    anti_join = "LEFT ANTI JOIN"
    inline = ""  # Spark inlines a CTE unless told otherwise

    def quote(self, identifier: str) -> str:
        return "`" + identifier.replace("`", "``") + "`"

    def string(self, text: str) -> str:
        # Spark's literals take backslash escapes; a line break is escaped too, so a statement is one line per line.
        escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
        return f"'{escaped}'"

    def type(self, kind: pa.DataType) -> str:
        if pa.types.is_list(kind):
            return f"ARRAY<{self.type(kind.value_type)}>"
        if pa.types.is_struct(kind):
            return f"STRUCT<{', '.join(f'{self.quote(field.name)}: {self.type(field.type)}' for field in kind)}>"
        return SPARK_TYPES[kind]

    def struct(self, fields: dict[str, str]) -> str:
        return f"named_struct({', '.join(f'{self.string(name)}, {value}' for name, value in fields.items())})"

    def row(self, alias: str) -> str:
        return f"struct({alias}.*)"

    def length(self, values: str) -> str:
        return f"size({values})"

    def distinct_on(self, keys: tuple[str, ...], columns: list[str], source: str) -> str:
        rank = f"row_number() OVER (PARTITION BY {', '.join(keys)} ORDER BY {', '.join(keys)})"
        return self.qualify(", ".join(map(self.quote, columns)), source, rank)

    def arg_min(self, value: str, order: list[tuple[str, pa.DataType, bool]]) -> str:
        # min_by over a struct of the terms, each after a flag that sorts its NULL last: how Spark orders a NULL
        # field within a struct is not what the rule says.
        terms = {}
        for i, (column, kind, descending) in enumerate(order):
            if descending and kind != TS:
                raise ValueError(f"cannot rank by {column} DESC with min_by")  # pragma: no cover - a declaration
            terms[f"n{i}"] = f"{column} IS NULL"
            terms[f"k{i}"] = f"-unix_micros({column})" if descending else column
        return f"min_by({value}, {self.struct(terms)})"

    def qualify(self, columns: str, source: str, rank: str) -> str:
        return f"SELECT {columns} FROM (SELECT *, {rank} AS _rank FROM {source}) WHERE _rank = 1"

    def spread(self, items: list[tuple[str, str | None]], source: str) -> str:
        inner, outer = [], []
        for i, (sql, name) in enumerate(items):
            alias = name or f"_spread{i}"
            inner.append(sql if sql == alias else f"{sql} AS {alias}")
            outer.append(f"{alias}.*" if name is None else alias)
        return f"SELECT {', '.join(outer)} FROM (SELECT {', '.join(inner)} FROM {source})"

    def explode(self, values: str) -> str:
        return f"explode({values})"

    def literal(self, path: str) -> str:
        return GLOB_CHARACTERS.sub(r"\\\1", path)

    def create_source(self, name: str, schema: pa.Schema, files: Files | None, *, filename: bool = False) -> list[str]:
        """Spark's Parquet source over the files, with the declared columns and the ``date`` partition (a column
        a file lacks reads as NULL), as view ``<name>_files``; then view ``name`` of the declared columns, plus the
        file of each row as Spark names it, when asked."""
        columns = [(field.name, field.type) for field in schema]
        if not files:
            return [self.create_view(name, self.empty(columns + [("filename", pa.string())] * filename))]
        typed = ", ".join(
            f"{self.quote(column)} {self.type(kind)}" for column, kind in [*columns, ("date", pa.date32())]
        )
        base = spark_uri(files.folder)
        options = f"basePath {self.string(base)}"  # makes Spark find the partitions under a glob
        selected = ", ".join(
            [self.quote(column) for column, _ in columns] + ["input_file_name() AS filename"] * filename
        )
        statements, queries = [], []
        for k, pattern in enumerate(self._patterns(files)):
            source = f"{name}_files" + f"_{k + 1}" * (k > 0)
            path = self.string(f"{self.literal(base)}/{pattern}")
            statements.append(
                f"CREATE OR REPLACE TEMPORARY VIEW {source} ({typed}) USING parquet OPTIONS (path {path}, {options})"
            )
            queries.append(f"SELECT {selected} FROM {source}")
        return [*statements, self.create_view(name, " UNION ALL ".join(queries))]

    def _patterns(self, files: Files) -> list[str]:
        """Hadoop globs of ``files`` within their folder: every day's data files, or else one glob of the days
        read whole, and one of each other day's files. (Hadoop's {a,b} loses escapes where an alternative holds a
        slash, so each glob keeps its alternatives within one folder name.)"""
        if files.parts is None:
            return [f"date=*/{DATA_FILES}"]
        days: dict[str, list[str]] = {}
        for day, file in files.parts:
            days.setdefault(day, []).append(self.literal(file) if file else DATA_FILES)
        whole = [f"date={self.literal(day)}" for day, names in days.items() if names == [DATA_FILES]]
        patterns = [f"{_alternatives(whole)}/{DATA_FILES}"] if whole else []
        return patterns + [
            f"date={self.literal(day)}/{_alternatives(names)}" for day, names in days.items() if names != [DATA_FILES]
        ]

    def create_view(self, name: str, query: str) -> str:
        return f"CREATE OR REPLACE TEMPORARY VIEW {name} AS {query}"

    def session(self) -> list[str]:
        return ["SET TIME ZONE 'UTC'"]

    def storage_notes(self, location: str, scheme: str) -> list[str]:
        if scheme != "s3":
            return [
                f"{location} is object storage: Spark reads it through the Hadoop connector of its scheme (for gs://",
                "the GCS connector; Azure Blob Storage as abfss://), configured with the store's credentials.",
            ]
        return [
            f"{location} is object storage: the paths below are s3a://, which Spark reads with the hadoop-aws",
            "module of the Hadoop version Spark was built with (e.g. spark-submit --packages",
            "org.apache.hadoop:hadoop-aws:3.4.1) and these settings (spark.hadoop.* in spark-defaults.conf or --conf):",
            "  spark.hadoop.fs.s3a.endpoint=https://s3.bj.bcebos.com   (BOS, MinIO, Ceph: the store's endpoint)",
            "  spark.hadoop.fs.s3a.path.style.access=true              (MinIO and most S3-compatible stores)",
            "  spark.hadoop.fs.s3a.access.key=... and spark.hadoop.fs.s3a.secret.key=..., or",
            "  spark.hadoop.fs.s3a.aws.credentials.provider=com.amazonaws.auth.EnvironmentVariableCredentialsProvider",
            "  (hadoop-aws 3.4: software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider)",
        ]  # fmt: skip


def _alternatives(globs: list[str]) -> str:
    return globs[0] if len(globs) == 1 else "{" + ",".join(globs) + "}"


def spark_uri(location: str) -> str:
    """A location as Spark names it: a local path as a file: URI (not read from a cluster's default filesystem),
    s3:// as s3a://."""
    if location.startswith("/"):
        return f"file://{location}"
    if location.startswith("s3://"):
        return f"s3a://{location[len('s3://') :]}"
    return location


SPARK = SparkDialect()
