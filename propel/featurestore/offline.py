"""Feast's DuckDB offline store with a point-in-time join that stays linear: DuckDB's ASOF LEFT JOIN.

Feature tables hold change-only rows and their views have no TTL, so Feast's stock join (ibis: pair every entity
row with every earlier row of its entity, rank them, keep the first) grows with each entity's history: 6 GB for
400k entity rows at 200k customers. `ASOF LEFT JOIN` finds each entity row's newest feature row (key equal,
feature time <= entity row time) from sorted inputs instead. Same answers as the stock store
(tests/featurestore/test_offline.py): a TTL honoured (a newest row older than the TTL gives null, as every
earlier row would), a created_timestamp breaks ties, unknown entities get nulls. Feast still applies the
on-demand views (the returned job is Feast's own ibis job) and `full_feature_names`. Everything else
(materialization's pull_latest, writes) is the stock DuckDB store's; sources other than local Parquet files
(S3, Delta, Iceberg, ...), an entity SQL query and `filter_by_created_timestamp` over a created column take the
stock join.

Selected in propel/featurestore/repo/feature_store.yaml:
`offline_store: {type: propel.featurestore.offline.AsofDuckDBOfflineStore}`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import List, Union

import ibis
import numpy as np
import pandas as pd
from ibis.expr import datatypes as dt
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
        table = _asof_join(entity_df, ts, feature_views, feature_refs, full_feature_names)
        odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        for odfv in (v for v in odfvs if v.mode == "substrait"):
            table = odfv.transform_ibis(table, full_feature_names)
        return IbisRetrievalJob(
            table, [v for v in odfvs if v.mode != "substrait"], full_feature_names,
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


def _asof_join(entity_df: pd.DataFrame, ts: str, views: List[FeatureView], feature_refs: List[str],
               full_feature_names: bool) -> ibis.Table:
    """The entity rows with each view's requested features as of their time, in the entity rows' order; columns
    as Feast's: the entity rows' own, then each view's features in order.

    Per view, ibis's `asof_join` (DuckDB's ASOF LEFT JOIN) finds each entity row's newest feature row over the
    narrow columns only (key, time, the row's file and number in it), and an equi-join on that row's identity
    brings its features: sorting the wide rows for the ASOF join took 3x as long."""
    utc = dt.Timestamp(timezone="UTC")
    entity = ibis.memtable(entity_df.assign(**{ROW_POS: np.arange(len(entity_df))}))
    acc = entity.mutate(**{ROW_TS: entity[ts].cast(utc)})
    names: list[str] = []
    for i, view in enumerate(views):
        source = view.batch_source
        keys = view.projection.join_key_map or {e.name: e.name for e in view.entity_columns}
        prefix = view.projection.name_to_use()
        features = [r.split(":", 1)[1] for r in feature_refs if r.startswith(f"{prefix}:")]
        base = view.projection.name_alias or view.name
        out = {f: f"{base}__{f}" if full_feature_names else f for f in features}
        row_ts, file, number = f"__propel_ts{i}", f"__propel_file{i}", f"__propel_row{i}"
        key_cols = {k: f"__propel_key{i}_{j}" for j, k in enumerate(keys)}
        rows = ibis.read_parquet(source.path, filename=file, file_row_number=True)
        rows = rows.rename({new: old for old, new in source.field_mapping.items() if old in rows.columns})
        rows = rows.rename({number: "file_row_number"})
        stamps = rows
        if source.created_timestamp_column:  # of rows of one entity and time, Feast keeps the latest created
            order = ibis.desc(rows[source.created_timestamp_column])
            stamps = rows.filter(ibis.row_number().over(group_by=[*keys, source.timestamp_field], order_by=order) == 0)
        stamps = stamps.select(file, number, **{key_cols[k]: stamps[k] for k in keys},
                               **{row_ts: stamps[source.timestamp_field].cast(utc)})
        acc = acc.asof_join(stamps, acc[ROW_TS] >= stamps[row_ts],
                            predicates=[acc[v] == stamps[key_cols[k]] for k, v in keys.items()])
        acc = acc.select(*entity_df.columns, ROW_POS, ROW_TS, *names, row_ts, file, number)
        values = rows.select(file, number, **{out[f]: rows[f] for f in features})
        # only the matched rows' values: a semi join hashes the (few) matched identities and streams the wide
        # table past them; a plain join may hash the whole wide table (~20 GB at 1M customers' change rows)
        values = values.semi_join(acc.select(file, number).distinct(), [file, number])
        acc = acc.left_join(values, [acc[file] == values[file], acc[number] == values[number]])
        acc = acc.select(*entity_df.columns, ROW_POS, ROW_TS, *names, row_ts, *out.values())
        if view.ttl:  # the newest row older than the TTL: expired, as every earlier one (Feast: null)
            fresh = acc[row_ts] + ibis.interval(microseconds=int(view.ttl / timedelta(microseconds=1))) >= acc[ROW_TS]
            acc = acc.mutate(**{n: fresh.ifelse(acc[n], ibis.null(acc[n].type())) for n in out.values()})
        names += out.values()
        acc = acc.select(*entity_df.columns, ROW_POS, ROW_TS, *names)
    return acc.order_by(ROW_POS).select(*entity_df.columns, *names)
