"""`propel forget CUSTOMER_ID...`: the right to be forgotten, one orchestrator above every stage it cleans.

The steps run in this order, so that a run stopped half-way (a crash, Redis down) is finished by running
it again:
1. tombstones (propel.lake.tombstones): the SHA-256 of each of the person's identifiers. From then on
   ingestion drops their rows, and a running server treats them as unknown: its runtime re-reads the
   tombstones when they change, so `/recommend` answers the popular fallback at once, without a restart;
2. every online store in use (SQLite, and Redis when it has a Feast registry), with Feast's key encoding;
3. the feature snapshots, profile and segments;
4. the served-recommendations log, and the events logged by POST /events (propel.lake.events_log);
5. the recommender's registered packages, every version: their rows and histories removed in place and
   input examples synthetic (propel.training.recommender_model.scrub_packages; a new version would
   leave the data in the old ones);
6. the lake, the quarantine and the identity map, last and in one lake commit (`Lake.delete_rows`): until
   then the person still resolves through the identity map, so a second run redoes every step; after it,
   an asked id whose hash is tombstoned is "already forgotten" and steps 2-5 run again for it.
Models are not retrained: what they learnt in aggregate (item factors, popularity) stays until the next
training, which cannot see the person.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from propel.config import Workspace
from propel.lake import events_log, tombstones
from propel.lake.tables import Busy, Lake, exclusive
from propel.serving import served_log
from propel.training.recommender_model import scrub_packages


@dataclass
class ForgetReport:
    customers: list[str]
    not_found: list[str]
    already: list[str] = field(default_factory=list)  # asked ids tombstoned by an earlier run: finished again
    identifiers: int = 0
    lake_rows: dict[str, int] = field(default_factory=dict)
    feature_rows: int = 0
    online_rows: dict[str, int] = field(default_factory=dict)  # per online store in use
    served: int = 0
    logged_events: int = 0  # events of the POST /events log
    package_rows: dict[str, int] = field(default_factory=dict)  # customers removed per recommender version

    def summary(self) -> str:
        lake = ", ".join(f"{k} {v:,}" for k, v in self.lake_rows.items() if v) or "nothing"
        online = ", ".join(f"{k} {v:,}" for k, v in self.online_rows.items()) or "none in use"
        packages = ", ".join(f"v{k} {v:,}" for k, v in self.package_rows.items()) or "none"
        already = f"; already forgotten, finished again: {', '.join(self.already)}" if self.already else ""
        missing = f"; not found: {', '.join(self.not_found)}" if self.not_found else ""
        return (f"forgot {len(self.customers)} customer(s), {self.identifiers} identifiers: lake rows removed: {lake}; "
                f"feature rows {self.feature_rows:,}; online entries: {online}; served recommendations "
                f"{self.served:,}; logged events {self.logged_events:,}; recommender packages: {packages}{already}{missing}")


def _rewrite(con, path: Path, keep_sql: str) -> int:
    """Rewrite one Parquet file keeping the rows `keep_sql` selects; returns how many were removed."""
    before = con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0]
    kept = con.execute(f"SELECT count(*) FROM read_parquet('{path}') WHERE {keep_sql}").fetchone()[0]
    if kept == before:
        return 0
    tmp = path.with_suffix(".forget.tmp")
    con.execute(f"COPY (SELECT * FROM read_parquet('{path}') WHERE {keep_sql}) TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)")  # as the build writes them
    os.replace(tmp, path)
    return before - kept


def forget(ws: Workspace, customer_ids: list[str]) -> ForgetReport:
    """Under the feature-build lock: a build that had read the lake before the tombstones would otherwise swap
    the person's rows back in after the feature tables were rewritten."""
    def refuse(holder: str) -> Busy:
        return Busy(f"{ws.features}: a feature build is running ({holder}), and forgetting rewrites the feature "
                    "tables. Fix: wait for it to finish, then re-run this command.")
    with exclusive(ws.features_lock, "forget", refuse):
        return _forget(ws, customer_ids)


def _forget(ws: Workspace, customer_ids: list[str]) -> ForgetReport:
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
    stones = tombstones.keys(ws.tombstones)
    already = [c for c in customer_ids if c not in found and tombstones.customer_key(c) in stones]
    report = ForgetReport(sorted(people), [c for c in customer_ids if c not in found and c not in already], already)
    if not people and not already:
        return report
    con.execute("CREATE TEMP TABLE gone AS SELECT identity_type, identity_value FROM identity_map "
                "WHERE customer_id IN (SELECT unnest(?::VARCHAR[]))", [people])
    report.identifiers = con.execute("SELECT count(*) FROM gone").fetchone()[0]
    # every id a store keyed by customer id may hold them under: the survivors, their merged-away ids, ids asked again
    ids = sorted({*people, *already, *(r[0] for r in con.execute(
        "SELECT identity_value FROM gone WHERE identity_type = 'customer_id'").fetchall())})
    keys = [r[0] for r in con.execute("SELECT sha256(identity_type || ':' || identity_value) FROM gone").fetchall()]
    tombstones.add(ws.tombstones, [*keys, *map(tombstones.customer_key, ids)])

    report.online_rows = _forget_online(ws, ids)
    con.execute("CREATE TEMP TABLE forgotten AS SELECT unnest(?::VARCHAR[]) AS id", [ids])
    people_sql = "customer_id NOT IN (SELECT id FROM forgotten)"
    feature_files = (sorted(ws.customer_snapshots.glob("*.parquet")) + [ws.profile]
                     + sorted(ws.segments.glob("*.parquet")))
    report.feature_rows = sum(_rewrite(con, p, people_sql) for p in feature_files if p.exists())
    report.served = served_log.forget(ws, set(ids))
    report.logged_events = events_log.forget(ws, set(ids), set(con.execute("SELECT identity_type, identity_value FROM gone").fetchall()))
    report.package_rows = scrub_packages(ws, tombstones.keys(ws.tombstones))
    if people:
        report.lake_rows = _forget_lake(con, lake)
    return report


def _forget_lake(con, lake: Lake) -> dict[str, int]:
    """Every lake row naming one of the identifiers in `gone` (the quarantine included), and the people in
    `forgotten` from the identity map and merges (temp tables of `con`), deleted from all tables in one
    commit; rows removed per table."""
    node = "({t}, {v}) IN (SELECT (identity_type, identity_value) FROM gone)"
    cid = "{col} IN (SELECT identity_value FROM gone WHERE identity_type = 'customer_id')"
    raw = "json_extract_string(raw, '$.{}')"
    ids = "SELECT identity_value FROM gone WHERE identity_type = 'customer_id' UNION SELECT id FROM forgotten"
    nodes = node.format(t="identity_type", v="identity_value")
    return lake.delete_rows(con, {
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


def _forget_online(ws: Workspace, ids: list[str]) -> dict[str, int]:
    """Delete the ids' entries from every online store in use (one with a Feast registry), with Feast's own
    key encoding; entries removed per store."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from propel.featurestore.store import ONLINE_STORES, feature_store

    keys = [EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val=i)]) for i in ids]
    removed = {}
    for online in (s for s in ONLINE_STORES if ws.feast_registry(s).exists()):
        store = feature_store(ws, online)
        cfg = store.config
        if online == "redis":
            import redis

            client = store._get_provider().online_store._get_client(cfg.online_store)
            try:
                removed[online] = int(client.delete(*[_redis_key(cfg.project, k, cfg.entity_key_serialization_version)
                                                      for k in keys]))
            except redis.RedisError as exc:
                raise ValueError(f"the Redis online store ([feast] redis_url) cannot be reached: {type(exc).__name__}. "
                                 "The person is tombstoned (ingestion and the server already leave them out); run "
                                 "`propel forget` again with the same ids once Redis is back to finish") from None
            continue
        path = Path(cfg.online_store.path)
        blobs = [serialize_entity_key(k, entity_key_serialization_version=cfg.entity_key_serialization_version)
                 for k in keys]
        removed[online] = 0
        if path.exists():
            with sqlite3.connect(path) as db:
                for view in (v for v in store.list_feature_views() if "customer" in v.entities):
                    table = f"{cfg.project}_{view.name}"
                    if db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
                        removed[online] += sum(db.execute(f'DELETE FROM "{table}" WHERE entity_key = ?', (b,)).rowcount
                                               for b in blobs)
    return removed
