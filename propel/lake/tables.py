"""The unified lake: Parquet tables written by ingestion, read through DuckDB views.

Layout under `<workspace>/data/lake/`:
  events/event_date=YYYY-MM-DD/<load>_<uuid>.parquet   behaviour, partitioned by UTC event date
  <table>/<load>.parquet                               every other contract table, one file per load
  quarantine/<load>_<table>.parquet                   rejected rows with a reason code
  identity_map.parquet                                 identifier -> resolved customer_id
  identity_merges.parquet                              every merge of two known ids (audit trail)
  manifests/<load>.json                                what each load read, accepted, rejected, when

Downstream code reads only the views of `Lake.connect()`: `events` and `campaign_touches` carry the
resolved `customer_id`; `customers`, `items`, `campaigns`, `labels` hold the latest row per key.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from propel.lake.schema import TABLES, Table
from propel.config import Workspace

LAKE_TYPES = {"id": "VARCHAR", "string": "VARCHAR", "category": "VARCHAR", "timestamp": "TIMESTAMP",
              "float": "DOUBLE", "int": "BIGINT", "bool": "BOOLEAN"}


class Lake:
    def __init__(self, workspace: Workspace):
        self.ws = workspace
        self.root = workspace.lake

    def table_dir(self, table: str) -> Path:
        return self.root / table

    @property
    def identity_map_path(self) -> Path:
        return self.root / "identity_map.parquet"

    @property
    def merges_path(self) -> Path:
        return self.root / "identity_merges.parquet"

    @property
    def manifests_dir(self) -> Path:
        return self.root / "manifests"

    def manifests(self) -> list[dict]:
        if not self.manifests_dir.exists():
            return []
        return [json.loads(p.read_text()) for p in sorted(self.manifests_dir.glob("*.json"))]

    def files(self, table: str) -> list[Path]:
        return sorted(self.table_dir(table).rglob("*.parquet"))

    def scan(self, table: str) -> str:
        """SQL for every stored row of a table (all loads), or an empty typed relation."""
        if self.files(table):
            glob = self.table_dir(table) / "**" / "*.parquet"
            return f"read_parquet('{glob}', union_by_name=true, hive_partitioning=false)"
        return f"({empty_relation(TABLES[table])})"

    def connect(self, threads: int | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with a view per lake table (see module docstring)."""
        con = connect_duckdb(self.ws, threads)
        for name, table in TABLES.items():
            con.execute(f"CREATE OR REPLACE VIEW {name}_all AS SELECT * FROM {self.scan(name)}")
            if table.key:
                latest = ", ".join(table.key)
                con.execute(
                    f"CREATE OR REPLACE VIEW {name}_latest AS SELECT * EXCLUDE (_rn) FROM ("
                    f"SELECT *, row_number() OVER (PARTITION BY {latest} ORDER BY _load DESC) AS _rn "
                    f"FROM {name}_all) WHERE _rn = 1"
                )
        if self.identity_map_path.exists():
            con.execute(f"CREATE OR REPLACE VIEW identity_map AS SELECT * FROM read_parquet('{self.identity_map_path}')")
        else:
            con.execute("CREATE OR REPLACE VIEW identity_map AS SELECT NULL::VARCHAR AS identity_type, "
                        "NULL::VARCHAR AS identity_value, NULL::VARCHAR AS customer_id WHERE false")
        for name in ("events", "campaign_touches"):
            con.execute(
                f"CREATE OR REPLACE VIEW {name} AS SELECT m.customer_id, e.* FROM {name}_all e "
                "JOIN identity_map m USING (identity_type, identity_value)"
            )
        # A customer's attributes: the record of the surviving id wins over records merged into it.
        con.execute(
            "CREATE OR REPLACE VIEW customers AS SELECT * EXCLUDE (_rn, customer_id) RENAME (_resolved AS customer_id) FROM ("
            "SELECT c.*, m.customer_id AS _resolved, row_number() OVER (PARTITION BY m.customer_id "
            "ORDER BY (c.customer_id = m.customer_id) DESC, c._load DESC) AS _rn FROM customers_latest c "
            "JOIN identity_map m ON m.identity_type = 'customer_id' AND m.identity_value = c.customer_id"
            ") WHERE _rn = 1"
        )
        # The one consent rule every export uses: only an explicit yes on the customer's record counts;
        # customers without a CRM record (anonymous profiles) or without a value are not contactable.
        con.execute("CREATE OR REPLACE VIEW contactable AS SELECT customer_id FROM customers WHERE marketing_consent")
        for name in ("items", "campaigns", "labels"):
            con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {name}_latest")
        return con


def empty_relation(table: Table) -> str:
    cols = [f"NULL::{LAKE_TYPES[c.kind]} AS \"{c.name}\"" for c in table.columns]
    if table.identified:
        cols = [c for c in cols if not c.endswith('"customer_id"')] + ["NULL::VARCHAR AS source_customer_id"]
    return f"SELECT {', '.join(cols)}, NULL::VARCHAR AS _load WHERE false"


def connect_duckdb(ws: Workspace, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """DuckDB in memory, UTC, spilling to the workspace when a query outgrows memory."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    spill = ws.data / ".duckdb_tmp"
    spill.mkdir(parents=True, exist_ok=True)
    con.execute(f"SET temp_directory = '{spill}'")
    con.execute(f"SET memory_limit = '{ws.settings().duckdb_memory_limit}'")
    con.execute("SET preserve_insertion_order = false")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con
