"""Tombstones: the SHA-256 of each forgotten identifier (`type:value`), kept in the lake so ingestion
drops a forgotten person's rows when old files are loaded again, without keeping anything that
identifies them. `propel.forget` writes them; ingestion reads them."""

from __future__ import annotations

from propel.lake.tables import Lake

def tombstone_sql(lake: Lake) -> str:
    """SQL relation of tombstoned identifier hashes (empty when nobody was forgotten)."""
    path = lake.ws.tombstones
    return f"(SELECT key FROM read_parquet('{path}'))" if path.exists() else "(SELECT NULL::VARCHAR AS key WHERE false)"
