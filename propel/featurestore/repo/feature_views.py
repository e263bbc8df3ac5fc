"""Feature views generated from `propel.features.definitions`, plus one on-demand view."""

from __future__ import annotations

from datetime import timedelta
from types import FunctionType

from feast import FeatureView, Field, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Bool, Float64, Int64, String, UnixTimestamp

from propel.featurestore.repo import data_sources
from propel.featurestore.repo.entities import customer, item
from propel.features import asof, request_features
from propel.features.build import load_catalog
from propel.features.definitions import FEATURE_GROUPS, clock_features, stored_features, view_features
from propel.config import Workspace

FEAST_TYPES = {"int": Int64, "float": Float64, "string": String, "list": Array(String)}
DUCKDB_TO_FEAST = {"BIGINT": Int64, "INTEGER": Int64, "DOUBLE": Float64, "FLOAT": Float64, "BOOLEAN": Bool,
                   "VARCHAR": String}


CLOCK_VIEW = "customer_clock"  # the on-demand view of the customer features that move with the clock


def feature_views(ws: Workspace) -> dict:
    """One view per feature table (its description lists the groups in it), and the on-demand view
    `customer_clock`. Feature tables hold a row only when an entity's values change, so their rows do not
    expire (ttl 0): a dormant customer's newest row can be a year old and is still their features. A
    segments file is valid for two build intervals. A customers table without extra columns has no
    profile view: a view needs a feature, and a placeholder one would reach every training set's SQL. The
    real-time view is pushed to, never materialized, and its rows do not expire either."""
    catalog = load_catalog(ws)
    ttl = timedelta(days=2 * catalog["every_days"])
    sources = {"customer_features": (customer, data_sources.customer_features(ws), timedelta(0)),
               "item_stats": (item, data_sources.item_features(ws), timedelta(0))}
    crm = [Field(name=c, dtype=DUCKDB_TO_FEAST.get(t, String), description="CRM attribute")
           for c, t in catalog["profile_columns"].items()]
    if crm:
        sources["customer_profile"] = (customer, data_sources.customer_profile(ws), timedelta(0))
    if any(ws.segments.glob("*.parquet")):  # registered once `propel segments` has written them
        sources["customer_segments"] = (customer, data_sources.customer_segments(ws), ttl)
    sources["customer_realtime"] = (customer, data_sources.customer_realtime(ws), timedelta(0))
    views = {}
    for name, (entity, source, view_ttl) in sources.items():
        description = "; ".join(d for v, d in FEATURE_GROUPS.values() if v == name)
        schema = crm if name == "customer_profile" else [
            Field(name=f.name, dtype=FEAST_TYPES[f.dtype], description=f.description)
            for f in stored_features(view_features(name))]
        views[name] = FeatureView(name=name, entities=[entity], ttl=view_ttl, description=description, online=True,
                                  source=source, schema=schema)
    views[CLOCK_VIEW] = customer_clock(views["customer_features"])
    return views


def customer_clock(stored: FeatureView):
    """The customer features that move with the clock (days since the last purchase, tenure, ...), computed
    from the stored days they count from and the request time, as `propel.features.asof` computes them
    from T: a training set's rows at cutoffs get exactly the snapshot values, an online read today's."""
    clock = clock_features(view_features("customer_features"))
    return on_demand_feature_view(
        name=CLOCK_VIEW, sources=[stored[asof.clock_inputs()], request_time],
        schema=[Field(name=f.name, dtype=FEAST_TYPES[f.dtype]) for f in clock],  # no descriptions: Feast's check of
        # the schema against the function's output compares whole fields
        description="Customer features that move with the clock, counted from the request time",
    )(FunctionType(asof.clock.__code__, asof.clock.__globals__, asof.clock.__name__))  # a copy: Feast's decorator
    # renames its function's module to __main__, after which Feast could not find asof.clock's source again


request_time = RequestSource(name="request_time", schema=[Field(name="request_ts", dtype=UnixTimestamp)],
                             description="When the features are asked for (serving time, or send time in training)")


# the function is Feast-free (propel.features.request_features) so batch scoring can call it without importing Feast
request_context = on_demand_feature_view(
    sources=[request_time],
    schema=[Field(name="request_hour", dtype=Int64), Field(name="request_dow", dtype=Int64),
            Field(name="request_is_weekend", dtype=Int64)],
    description="Calendar context of the request, computed at request time",
)(request_features.request_context)
