"""The one place that knows which DuckDB version ftlog runs on (``duckdb>=1.1``): everything else writes the same
SQL and calls the same functions whatever the version."""

from __future__ import annotations

from typing import Any

import pyarrow as pa


def arrow(relation: Any) -> pa.Table:
    """A relation's rows as one Arrow table, read to the end: ``fetch_arrow_table()`` warns as deprecated from 1.4
    on, where ``to_arrow_table()`` replaces it (``.arrow()`` returns a streaming reader from 2.0 on)."""
    fetch = getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table
    table: pa.Table = fetch()
    return table
