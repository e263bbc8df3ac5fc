"""Tombstones: the SHA-256 of each forgotten identifier (`type:value`), kept in the lake so ingestion
drops a forgotten person's rows when old files are loaded again, without keeping anything that
identifies them. `propel.forget` writes them first; ingestion reads them, and so do the serving runtime
and the recommender (a forgotten customer is unknown to it from the next request on)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from propel.lake.tables import Lake


def identifier_hash(identity_type: str, identity_value: str) -> str:
    """A tombstone's key: what DuckDB's `sha256(identity_type || ':' || identity_value)` gives."""
    return hashlib.sha256(f"{identity_type}:{identity_value}".encode()).hexdigest()


def customer_key(customer_id: str) -> str:
    return identifier_hash("customer_id", customer_id)


def keys(path: Path) -> frozenset[str]:
    """Every tombstoned key (empty when nobody was forgotten)."""
    return frozenset(pq.read_table(path, columns=["key"])["key"].to_pylist()) if path.exists() else frozenset()


def add(path: Path, new: Iterable[str]) -> int:
    """Record tombstones (idempotent); the file is replaced whole, so a reader never sees half of it.
    Returns how many keys were new."""
    old = pq.read_table(path) if path.exists() else None
    known = set(old["key"].to_pylist()) if old is not None else set()
    fresh = sorted(set(new) - known)
    if not fresh:
        return 0
    table = pa.table({"key": pa.array(fresh, pa.string()),
                      "forgotten_at": pa.array([datetime.now(timezone.utc).replace(tzinfo=None)] * len(fresh),
                                               pa.timestamp("us"))})
    if old is not None:
        table = pa.concat_tables([old.select(["key", "forgotten_at"]).cast(table.schema), table])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return len(fresh)


def tombstone_sql(lake: Lake) -> str:
    """SQL relation of tombstoned identifier hashes (empty when nobody was forgotten)."""
    path = lake.ws.tombstones
    return f"(SELECT key FROM read_parquet('{path}'))" if path.exists() else "(SELECT NULL::VARCHAR AS key WHERE false)"
