"""Feast's DuckDB offline store with a point-in-time join that stays linear: DuckDB's ASOF LEFT JOIN.

Feature tables hold change-only rows and their views have no TTL, so Feast's stock join (ibis: pair every entity
row with every earlier row of its entity, rank them, keep the first) grows with each entity's history: 6 GB for
400k entity rows at 200k customers. `ASOF LEFT JOIN` finds each entity row's newest feature row (key equal,
feature time <= entity row time) from sorted inputs instead. Same answers as the stock store
(tests/featurestore/test_offline.py): a TTL honoured (a newest row older than the TTL gives null, as every
earlier row would), a created_timestamp breaks ties, unknown entities get nulls. Feast still applies the
on-demand views (the returned job is Feast's own ibis job) and `full_feature_names`, except `customer_clock`,
which the query computes with the same values (`asof.clock_sql`; Feast's pandas path copies the whole training
set to pandas and back). Everything else (materialization's pull_latest, writes) is the stock DuckDB store's;
sources other than local Parquet files (S3, Delta, Iceberg, ...), an entity SQL query and
`filter_by_created_timestamp` over a created column take the stock join.

Selected in propel/featurestore/repo/feature_store.yaml:
`offline_store: {type: propel.featurestore.offline.AsofDuckDBOfflineStore}`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import List, Union
import uuid

import ibis
import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import field_validator

from feast.data_format import ParquetFormat
from feast.feature_view import FeatureView
from feast.infra.offline_stores import offline_utils
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, DuckDBOfflineStoreConfig, _write_data_source
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.ibis import IbisRetrievalJob
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig

from propel.features import asof
from propel.features.definitions import CUSTOMER_FEATURES, clock_features

ROW_POS = "__propel_entity_row"  # an entity row's position: the rows come back in the entity frame's order
ROW_TS = "__propel_row_ts"  # an entity row's time in UTC, as Feast casts the feature rows' (both sides compare alike)


class AsofDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    """Feast picks the store by this class; its `type` then reads "duckdb", as the stock store's: it is a DuckDB
    store over the same files, which is what readers of the type ask (Propel's bulk online writer takes its
    fast path only over DuckDB's sources)."""

    @field_validator("type")
    @classmethod
    def _duckdb(cls, _: str) -> str:
        return "duckdb"


class AsofDuckDBOfflineStore(DuckDBOfflineStore):
    @staticmethod
    def get_historical_features(config: RepoConfig, feature_views: List[FeatureView], feature_refs: List[str],
                                entity_df: Union[pd.DataFrame, str], registry: BaseRegistry, project: str,
                                full_feature_names: bool = False,
                                filter_by_created_timestamp: bool = False) -> RetrievalJob:
        if not _asof_applies(feature_views, entity_df, filter_by_created_timestamp):
            return DuckDBOfflineStore.get_historical_features(
                config, feature_views, feature_refs, entity_df, registry, project, full_feature_names,
                filter_by_created_timestamp)
        ts = offline_utils.infer_event_timestamp_from_entity_df(dict(zip(entity_df.columns, entity_df.dtypes)))
        entity_df = entity_df.assign(**{ts: pd.to_datetime(entity_df[ts], utc=True)})
        odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        in_sql = _clock_in_sql(odfvs, feature_refs, entity_df, full_feature_names)
        table = _asof_join(entity_df, ts, feature_views, feature_refs, full_feature_names, in_sql)
        for odfv in (v for v in odfvs if v.mode == "substrait"):
            table = odfv.transform_ibis(table, full_feature_names)
        return IbisRetrievalJob(
            table, [v for v in odfvs if v.mode != "substrait" and v.name not in in_sql], full_feature_names,
            metadata=RetrievalMetadata(features=feature_refs, keys=[c for c in entity_df.columns if c != ts],
                                       min_event_timestamp=entity_df[ts].min().to_pydatetime(),
                                       max_event_timestamp=entity_df[ts].max().to_pydatetime()),
            data_source_writer=_write_data_source, staging_location=config.offline_store.staging_location,
            staging_location_endpoint_override=config.offline_store.staging_location_endpoint_override,
            repo_path=str(config.repo_path))


def _asof_applies(views: List[FeatureView], entity_df, filter_by_created_timestamp: bool) -> bool:
    """Local Parquet files under every view and an entity DataFrame: what the ASOF join reads."""
    def plain_parquet(view: FeatureView) -> bool:
        source = view.batch_source
        return (isinstance(source, FileSource) and "://" not in source.path
                and (isinstance(source.file_format, ParquetFormat)
                     or (source.file_format is None and source.path.endswith(".parquet")))
                and not (filter_by_created_timestamp and source.created_timestamp_column))
    return isinstance(entity_df, pd.DataFrame) and all(plain_parquet(v) for v in views)


def _clock_in_sql(odfvs: List[OnDemandFeatureView], feature_refs: List[str], entity_df: pd.DataFrame,
                  full_feature_names: bool) -> dict[str, list[str]]:
    """The on-demand views the query computes itself (by name: their requested features), in SQL with the same
    values (`asof.clock_sql`, the SQL of the formulas of `asof.clock`): Feast's pandas path would copy the
    whole training set to pandas and back (~5 s at 1M rows). Only views running `asof.clock` that Feast would
    apply first (its columns come first), with short names and a request time on every row; others stay Feast's."""
    out: dict[str, list[str]] = {}
    requested = {r.split(":", 1)[1] for r in feature_refs}
    if full_feature_names or any(v.mode == "substrait" for v in odfvs) or "request_ts" not in entity_df \
            or not pd.api.types.is_datetime64_any_dtype(entity_df["request_ts"]) \
            or not entity_df["request_ts"].notna().all() or not set(asof.clock_inputs()) <= requested:
        return out
    for odfv in odfvs:
        if not asof.runs_clock(odfv):
            break
        prefix = odfv.projection.name_to_use()
        wanted = {r.split(":", 1)[1] for r in feature_refs if r.startswith(f"{prefix}:")}
        out[odfv.name] = [f.name for f in clock_features(CUSTOMER_FEATURES) if f.name in wanted]  # Feast's order
    return out


def _asof_join(entity_df: pd.DataFrame, ts: str, views: List[FeatureView], feature_refs: List[str],
               full_feature_names: bool, clock: dict[str, list[str]] | None = None) -> ibis.Table:
    """The entity rows with each view's requested features as of their time, in the entity rows' order; columns
    as Feast's: the entity rows' own, then each view's features in order.

    One DuckDB query whose steps are materialized CTEs, each computed once (ibis inlines a subquery at each use:
    its plan ran the first view's ASOF join four times and sorted the wide rows again for the second view's):
    per view, `ASOF LEFT JOIN` finds each entity row's newest feature row over the narrow columns only (key,
    time, the row's file and number in it); a semi join then reads only the matched rows' features (it hashes
    the matched identities and streams the wide rows past them; a plain join may hash the whole wide table,
    ~20 GB at 1M customers' change rows); the last step joins them to the entity rows by position."""
    backend = ibis.get_backend()
    entity_name = f"__propel_entity_{uuid.uuid4().hex}"
    entity = pa.Table.from_pandas(entity_df.assign(**{ROW_POS: np.arange(len(entity_df))}), preserve_index=False)
    # DuckDB's timestamps are in microseconds (an ibis memtable's, Feast's): nanoseconds would come back as objects
    entity = entity.cast(pa.schema([pa.field(f.name, pa.timestamp("us", f.type.tz)) if pa.types.is_timestamp(f.type)
                                    else f for f in entity.schema]))
    backend.con.register(entity_name, entity)
    ctes = [f"__e AS MATERIALIZED (SELECT {ROW_POS}, {', '.join(_q(c) for c in entity_df.columns)}, "
            f"CAST({_q(ts)} AS TIMESTAMPTZ) AS {ROW_TS} FROM {_q(entity_name)})"]
    joins, selected, names = [], [], []
    for i, view in enumerate(views):
        source = view.batch_source
        keys = view.projection.join_key_map or {e.name: e.name for e in view.entity_columns}
        prefix = view.projection.name_to_use()
        features = [r.split(":", 1)[1] for r in feature_refs if r.startswith(f"{prefix}:")]
        base = view.projection.name_alias or view.name
        out = {f: f"{base}__{f}" if full_feature_names else f for f in features}
        renames = ", ".join(f"{_q(old)} AS {_q(new)}" for old, new in source.field_mapping.items())
        # a row's identity: its file's number in the scan and its number in the file, in one BIGINT
        rows = (f"(SELECT *{f' RENAME ({renames})' if renames else ''}, (file_index::BIGINT << 32) + file_row_number "
                f"AS __id FROM read_parquet({_lit(source.path)}))")
        stamps = rows
        if source.created_timestamp_column:  # of rows of one entity and time, Feast keeps the latest created
            stamps = (f"(SELECT * FROM {rows} QUALIFY row_number() OVER (PARTITION BY "
                      f"{', '.join(_q(k) for k in [*keys, source.timestamp_field])} "
                      f"ORDER BY {_q(source.created_timestamp_column)} DESC) = 1)")
        on = " AND ".join(f"e.{_q(v)} = s.{_q(k)}" for k, v in keys.items())
        # each entity row's newest feature row at or before its time: positions and identities only
        ctes.append(f"__m{i} AS MATERIALIZED (SELECT e.{ROW_POS}, s.__id, s.__t "
                    f"FROM (SELECT {ROW_POS}, {ROW_TS}, {', '.join(dict.fromkeys(_q(v) for v in keys.values()))} "
                    f"FROM __e) e ASOF LEFT JOIN (SELECT __id, "
                    f"{', '.join(_q(k) for k in keys)}, CAST({_q(source.timestamp_field)} AS TIMESTAMPTZ) AS __t "
                    f"FROM {stamps}) s ON {on} AND e.{ROW_TS} >= s.__t)")
        ctes.append(f"__v{i} AS MATERIALIZED (SELECT r.__id"
                    f"{''.join(f', r.{_q(f)} AS {_q(out[f])}' for f in features)} FROM {rows} r "
                    f"SEMI JOIN (SELECT DISTINCT __id FROM __m{i}) m ON r.__id = m.__id)")
        joins.append(f"LEFT JOIN __m{i} m{i} ON m{i}.{ROW_POS} = e.{ROW_POS} "
                     f"LEFT JOIN __v{i} v{i} ON v{i}.__id = m{i}.__id")
        for name in out.values():
            col = f"v{i}.{_q(name)}"
            if view.ttl:  # the newest row older than the TTL: expired, as every earlier one (Feast: null)
                micros = int(view.ttl / timedelta(microseconds=1))
                col = f"CASE WHEN m{i}.__t + to_microseconds({micros}) >= e.{ROW_TS} THEN {col} END"
            selected.append(f"{col} AS {_q(name)}")
            names.append(name)
    sql = (f"WITH {', '.join(ctes)} SELECT e.{ROW_POS}, {', '.join(f'e.{_q(c)}' for c in entity_df.columns)}"
           f"{''.join(', ' + c for c in selected)} FROM __e e {' '.join(joins)}")
    computed = [n for wanted in (clock or {}).values() for n in wanted]
    if computed:  # customer_clock, counted from each row's request time as `day_number` counts
        base, derived = asof.clock_sql(CUSTOMER_FEATURES, 'CAST(ceil(epoch_us("request_ts") / 86400000000) AS BIGINT)')
        sql = f"SELECT *, {', '.join(base)} FROM ({sql})"
        for col in derived:
            sql = f"SELECT *, {col} FROM ({sql})"
        sql = f"SELECT {ROW_POS}, {', '.join(_q(n) for n in [*entity_df.columns, *names, *computed])} FROM ({sql})"
    backend.con.execute(f"CREATE TEMP VIEW {_q(entity_name + '_features')} AS {sql}")
    table = backend.table(entity_name + "_features")
    return table.order_by(ROW_POS).drop(ROW_POS)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
