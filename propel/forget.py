"""`propel forget CUSTOMER_ID...`: the right to be forgotten.

Removes every row about the person from the lake (all their identifiers, the quarantine included),
the feature tables and the online store, and records a tombstone: the SHA-256 of each identifier, so
ingestion drops their rows if old files are loaded again without keeping anything that identifies
them. Models are not retrained; the next training run simply cannot see the person.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from propel.lake.tables import Lake
from propel.config import Workspace


@dataclass
class ForgetReport:
    customers: list[str]
    not_found: list[str]
    identifiers: int = 0
    lake_rows: dict[str, int] = field(default_factory=dict)
    feature_rows: int = 0
    online_rows: int = 0

    def summary(self) -> str:
        lake = ", ".join(f"{k} {v:,}" for k, v in self.lake_rows.items() if v) or "nothing"
        missing = f"; not found: {', '.join(self.not_found)}" if self.not_found else ""
        return (f"forgot {len(self.customers)} customer(s), {self.identifiers} identifiers: lake rows removed: {lake}; "
                f"feature rows {self.feature_rows:,}; online entries {self.online_rows:,}{missing}")


def _rewrite(con, path: Path, keep_sql: str) -> int:
    """Rewrite one Parquet file keeping the rows `keep_sql` selects; returns how many were removed."""
    before = con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0]
    kept = con.execute(f"SELECT count(*) FROM read_parquet('{path}') WHERE {keep_sql}").fetchone()[0]
    if kept == before:
        return 0
    tmp = path.with_suffix(".forget.tmp")
    con.execute(f"COPY (SELECT * FROM read_parquet('{path}') WHERE {keep_sql}) TO '{tmp}' (FORMAT parquet)")
    os.replace(tmp, path)
    return before - kept


def forget(ws: Workspace, customer_ids: list[str], online: str | None = None) -> ForgetReport:
    lake = Lake(ws)
    con = lake.connect()
    con.execute("CREATE TEMP TABLE asked (id VARCHAR)")
    con.executemany("INSERT INTO asked VALUES (?)", [[c] for c in customer_ids])
    # A merged-away id resolves to its survivor; forget the whole person.
    people = con.execute("SELECT DISTINCT m.customer_id FROM identity_map m JOIN asked a ON m.identity_value = a.id "
                         "AND m.identity_type = 'customer_id' UNION SELECT DISTINCT customer_id FROM identity_map "
                         "WHERE customer_id IN (SELECT id FROM asked)").df()["customer_id"].tolist()
    found = set(con.execute("SELECT id FROM asked WHERE id IN (SELECT identity_value FROM identity_map WHERE "
                            "identity_type = 'customer_id') OR id IN (SELECT customer_id FROM identity_map)").df()["id"])
    report = ForgetReport(sorted(people), [c for c in customer_ids if c not in found])
    if not people:
        return report
    con.execute("CREATE TEMP TABLE gone AS SELECT identity_type, identity_value FROM identity_map WHERE customer_id IN "
                f"({', '.join('?' * len(people))})", people)
    report.identifiers = con.execute("SELECT count(*) FROM gone").fetchone()[0]

    stones = con.execute("SELECT sha256(identity_type || ':' || identity_value) AS key FROM gone").df()
    stones["forgotten_at"] = datetime.now(timezone.utc).replace(tzinfo=None)
    path = lake.ws.tombstones
    if path.exists():
        stones = pd.concat([pd.read_parquet(path), stones], ignore_index=True).drop_duplicates("key")
    stones.to_parquet(path, index=False)

    con.execute("CREATE TEMP TABLE forgotten AS SELECT unnest(?::VARCHAR[]) AS id", [people])
    people_sql = "customer_id NOT IN (SELECT id FROM forgotten)"
    # The lake part: every row naming one of their identifiers, deleted from all tables in one commit.
    node = "({t}, {v}) IN (SELECT (identity_type, identity_value) FROM gone)"
    cid = "{col} IN (SELECT identity_value FROM gone WHERE identity_type = 'customer_id')"
    raw = "json_extract_string(raw, '$.{}')"
    ids = "SELECT identity_value FROM gone WHERE identity_type = 'customer_id' UNION SELECT id FROM forgotten"
    nodes = node.format(t="identity_type", v="identity_value")
    report.lake_rows = lake.delete_rows(con, {
        "events": f"{nodes} OR {cid.format(col='source_customer_id')}",
        "campaign_touches": f"{nodes} OR {cid.format(col='source_customer_id')}",
        "identities": f"{nodes} OR {node.format(t='linked_type', v='linked_value')}",
        "customers": cid.format(col="customer_id"),
        "labels": cid.format(col="customer_id"),
        "quarantine": " OR ".join([node.format(t=raw.format("identity_type"), v=raw.format("identity_value")),
                                   *(cid.format(col=raw.format(c)) for c in ("customer_id", "identity_value", "linked_value")),
                                   "list_has_any(json_extract_string(raw, '$.fields[*]'), (SELECT list(identity_value) FROM gone))"]),
        "identity_map": "customer_id IN (SELECT id FROM forgotten)",
        "identity_merges": f"merged_id IN ({ids}) OR into_id IN ({ids})",
    })
    feature_files = (sorted(ws.customer_snapshots.glob("*.parquet")) + [ws.profile]
                     + sorted(ws.segments.glob("*.parquet")))
    report.feature_rows = sum(_rewrite(con, p, people_sql) for p in feature_files if p.exists())
    report.online_rows = _forget_online(ws, people, online)
    return report


def _forget_online(ws: Workspace, people: list[str], online: str | None) -> int:
    """Delete the people's entries from the online store, with Feast's own key encoding."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from propel.featurestore.store import feature_store

    store = feature_store(ws, online)
    if not ws.feast_registry(store.config.online_store.type).exists():
        return 0
    cfg = store.config
    keys = [EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val=p)]) for p in people]
    views = [v for v in store.list_feature_views() if "customer" in v.entities]
    if cfg.online_store.type == "redis":
        client = store._get_provider().online_store._get_client(cfg.online_store)
        return int(client.delete(*[_redis_key(cfg.project, k, cfg.entity_key_serialization_version) for k in keys]))
    path = Path(cfg.online_store.path)
    if not path.exists():
        return 0
    blobs = [serialize_entity_key(k, entity_key_serialization_version=cfg.entity_key_serialization_version) for k in keys]
    removed = 0
    with sqlite3.connect(path) as db:
        for view in views:
            table = f"{cfg.project}_{view.name}"
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
                removed += sum(db.execute(f'DELETE FROM "{table}" WHERE entity_key = ?', (b,)).rowcount for b in blobs)
    return removed
