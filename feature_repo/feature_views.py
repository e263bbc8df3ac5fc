"""Feature views generated from `features.definitions`, plus one on-demand view."""

from __future__ import annotations

from datetime import timedelta

from feast import FeatureView, Field, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Bool, Float64, Int64, String, UnixTimestamp

from feature_repo import data_sources
from feature_repo.entities import customer, item
from features import request_features
from features.build import load_catalog
from features.definitions import CUSTOMER_FEATURES, FEATURE_VIEWS, ITEM_FEATURES, SEGMENT_FEATURES
from propel.config import Workspace

FEAST_TYPES = {"int": Int64, "float": Float64, "string": String}
DUCKDB_TO_FEAST = {"BIGINT": Int64, "INTEGER": Int64, "DOUBLE": Float64, "FLOAT": Float64, "BOOLEAN": Bool,
                   "VARCHAR": String}


def feature_views(ws: Workspace) -> dict[str, FeatureView]:
    """One view per group of features; a snapshot is valid for two build intervals."""
    catalog = load_catalog(ws)
    ttl = timedelta(days=2 * catalog["every_days"])
    sources = {"customer": data_sources.customer_features(ws), "item": data_sources.item_features(ws)}
    views = {}
    for name, description in FEATURE_VIEWS.items():
        if name in ("customer_profile", "customer_segments"):
            continue
        feats = [f for f in (*CUSTOMER_FEATURES, *ITEM_FEATURES) if f.view == name]
        entity = item if feats[0] in ITEM_FEATURES else customer
        views[name] = FeatureView(
            name=name, entities=[entity], ttl=ttl, description=description, online=True,
            source=sources[entity.name], schema=[Field(name=f.name, dtype=FEAST_TYPES[f.dtype], description=f.description)
                                                 for f in feats])
    crm = catalog["profile_columns"]
    views["customer_profile"] = FeatureView(
        name="customer_profile", entities=[customer], ttl=timedelta(0), online=True,
        description=FEATURE_VIEWS["customer_profile"], source=data_sources.customer_profile(ws),
        schema=[Field(name=c, dtype=DUCKDB_TO_FEAST.get(t, String), description="CRM attribute")
                for c, t in crm.items()] or [Field(name="_no_crm_attributes", dtype=Int64)])
    if any(ws.segments.glob("*.parquet")):  # registered once `propel segments` has written them
        views["customer_segments"] = FeatureView(
            name="customer_segments", entities=[customer], ttl=ttl, online=True,
            description=FEATURE_VIEWS["customer_segments"], source=data_sources.customer_segments(ws),
            schema=[Field(name=f.name, dtype=FEAST_TYPES[f.dtype], description=f.description) for f in SEGMENT_FEATURES])
    return views


request_time = RequestSource(name="request_time", schema=[Field(name="request_ts", dtype=UnixTimestamp)],
                             description="When the features are asked for (serving time, or send time in training)")


# the function is Feast-free (features.request_features) so batch scoring can call it without importing Feast
request_context = on_demand_feature_view(
    sources=[request_time],
    schema=[Field(name="request_hour", dtype=Int64), Field(name="request_dow", dtype=Int64),
            Field(name="request_is_weekend", dtype=Int64)],
    description="Calendar context of the request, computed at request time",
)(request_features.request_context)
