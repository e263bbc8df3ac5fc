"""The feature store: Feast's Python API over the workspace (apply, materialize, read).

Everything goes through `feature_store(ws)`, which reads `propel/featurestore/repo/feature_store.yaml` and
points the registry, offline and online stores into the workspace. The online store is SQLite by
default; `online="redis"` (or `[feast] online = "redis"` in propel.toml) uses Redis.
"""

from __future__ import annotations

import functools
import logging
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import yaml

from feast import FeatureStore
from feast.repo_config import RepoConfig

from propel.featurestore import online_write
from propel.featurestore.online_read import OnlineReader
from propel.features.build import load_catalog
from propel.config import Workspace

REPO_DIR = Path(__file__).resolve().parent / "repo"
ONLINE_STORES = ("sqlite", "redis")


def repo_config(ws: Workspace, online: str | None = None) -> RepoConfig:
    settings = ws.settings().feast
    online = online or settings.online
    if online not in ONLINE_STORES:
        raise ValueError(f"unknown online store '{online}'; use one of {', '.join(ONLINE_STORES)}")
    raw = yaml.safe_load((REPO_DIR / "feature_store.yaml").read_text())
    _move_old_state(ws)
    ws.feast_data.mkdir(parents=True, exist_ok=True)
    raw["project"] = settings.project
    # One registry per online store: Feast records materialization progress in the registry, so a
    # shared one would make a fresh Redis look already loaded after SQLite was.
    raw["registry"] = {"path": str(ws.feast_registry(online)), "cache_ttl_seconds": 0}
    raw["online_store"] = ({"type": "sqlite", "path": str(ws.online_store_db)} if online == "sqlite"
                           else {"type": "redis", "connection_string": settings.redis_url})
    return RepoConfig(repo_path=ws.root, **raw)


def _move_old_state(ws: Workspace) -> None:
    """Workspaces made before Feast state moved under data/ kept it in <workspace>/feature_repo/data: moved once."""
    old = ws.root / "feature_repo" / "data"
    if old.is_dir() and not ws.feast_data.exists():
        ws.feast_data.parent.mkdir(parents=True, exist_ok=True)
        old.rename(ws.feast_data)
        logging.getLogger(__name__).warning("moved Feast state from %s to %s (its new home)", old, ws.feast_data)


def feature_store(ws: Workspace, online: str | None = None) -> FeatureStore:
    return FeatureStore(config=repo_config(ws, online))


def apply(ws: Workspace, online: str | None = None) -> list[str]:
    """Register every entity, view and service; returns their names."""
    from propel.featurestore.repo import definitions

    store = feature_store(ws, online)
    objects = definitions(ws)
    names = {o.name for o in objects}
    # views no longer defined (e.g. renamed) are deleted with their online tables, or materialize would keep them
    stale = [v for v in store.list_feature_views() if v.name not in names]
    store.apply(objects, objects_to_delete=stale, partial=not stale)
    if store.config.online_store.type == "sqlite":
        online_write.cluster_sqlite_tables(store)
    return [o.name for o in objects]


def materialize(ws: Workspace, online: str | None = None) -> dict:
    """Load the newest snapshot of every view into the online store.

    Incremental: each snapshot view continues from where its last materialization ended (Feast
    records the intervals). The profile view is small and its rows are stamped with signup dates
    that may predate the last run, so it is always loaded whole. Rows are written in bulk by
    `propel.featurestore.online_write` (stock Feast for anything it does not handle).
    """
    started = time.perf_counter()
    store = feature_store(ws, online)
    end = datetime.fromisoformat(load_catalog(ws)["cutoffs"][-1]).replace(tzinfo=timezone.utc) + timedelta(seconds=1)
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    loaded = {}
    for view in store.list_feature_views():
        done = [i[1] for i in view.materialization_intervals] if view.name != "customer_profile" else []
        start = max(done, default=epoch)
        if start < end:
            online_write.materialize_view(store, view, start, end)
            loaded[view.name] = start.isoformat()
    return {"up_to": end.isoformat(), "views": loaded, "seconds": round(time.perf_counter() - started, 2)}


def service_features(store: FeatureStore, service: str) -> list[str]:
    fs = store.get_feature_service(service)
    return [f"{p.name}:{f.name}" for p in fs.feature_view_projections for f in p.features]


def online_features(store: FeatureStore, service: str, ids: list[str], key: str = "customer_id",
                    request_ts: datetime | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Features of `ids` from the online store, and the ids it does not know (never invented)."""
    return online_reader(store, service, key).read(ids, request_ts)


@functools.lru_cache(maxsize=64)
def online_reader(store: FeatureStore, service: str, key: str = "customer_id") -> OnlineReader:
    """The service resolved once per store object (a new store object after `features apply`)."""
    return OnlineReader(store, service, key)


# Entity rows per Feast retrieval: Feast's DuckDB join peaks at ~5 GiB per 1M rows x 82 features, so larger
# training sets are fetched in parts (each part re-reads the snapshots: time traded for bounded memory)
HISTORICAL_CHUNK_ROWS = 1_000_000


def historical_features(store: FeatureStore, service: str, entity_df: pd.DataFrame,
                        chunk_rows: int = HISTORICAL_CHUNK_ROWS) -> pd.DataFrame:
    """Point-in-time training features: exactly one row per entity row, in the entity rows' order."""
    if "event_timestamp" not in entity_df:
        raise ValueError("entity_df needs an 'event_timestamp' column (the moment each row is about)")
    df = entity_df.reset_index(drop=True).assign(_entity_row=lambda d: range(len(d)))
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    fs = store.get_feature_service(service)
    if any(p.name == "request_context" for p in fs.feature_view_projections) and "request_ts" not in df:
        df["request_ts"] = df["event_timestamp"]
    try:
        parts = [store.get_historical_features(entity_df=df.iloc[i:i + chunk_rows], features=fs).to_df()
                 for i in range(0, max(len(df), 1), chunk_rows)]
    finally:
        _release_offline_connection()
    out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    out = out.sort_values("_entity_row").reset_index(drop=True)
    if len(out) != len(df) or not (out["_entity_row"].to_numpy() == df["_entity_row"].to_numpy()).all():
        raise RuntimeError(f"feature retrieval returned {len(out)} rows for {len(df)} entity rows")
    return out.drop(columns="_entity_row")


def _release_offline_connection() -> None:
    """Feast's DuckDB offline store runs on ibis's process-wide default backend, which keeps the entity
    frames registered on it. Closing it after a retrieval frees them, and without it DuckDB prints a wall of
    "nanobind: leaked ..." lines when the process exits (an open connection at interpreter shutdown)."""
    import ibis

    backend = ibis.options.default_backend
    if backend is not None:
        backend.disconnect()
        ibis.options.default_backend = None
