"""Data sources: the Parquet feature tables written by `propel features build`, and the stream's push source."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from feast import FileSource, PushSource

from propel.config import Workspace
from propel.features.definitions import view_features

ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "string": pa.string(), "list": pa.list_(pa.string())}


def customer_features(ws: Workspace) -> FileSource:
    return FileSource(name="customer_features", path=str(ws.customer_snapshots / "*.parquet"),
                      timestamp_field="event_timestamp", description="Customer feature rows, when values change")


def item_features(ws: Workspace) -> FileSource:
    return FileSource(name="item_features", path=str(ws.item_snapshots / "*.parquet"),
                      timestamp_field="event_timestamp", description="Item feature rows, when values change")


def customer_profile(ws: Workspace) -> FileSource:
    return FileSource(name="customer_profile", path=str(ws.profile),
                      timestamp_field="event_timestamp", description="CRM attributes, valid from signup")


def customer_segments(ws: Workspace) -> FileSource:
    return FileSource(name="customer_segments", path=str(ws.segments / "*.parquet"),
                      timestamp_field="event_timestamp", description="Segments per snapshot (`propel segments`)")


def customer_realtime(ws: Workspace) -> PushSource:
    """The stream consumer pushes rows to the online store only (propel/featurestore/realtime.py); Feast wants a
    batch source beside a push source, so it is an empty Parquet file with the view's schema."""
    path = ws.realtime_source
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.schema([("customer_id", pa.string()), ("event_timestamp", pa.timestamp("us", "UTC")),
                                  *((f.name, ARROW_TYPES[f.dtype]) for f in view_features("customer_realtime"))])
                       .empty_table(), path)
    batch = FileSource(name="customer_realtime_batch", path=str(path), timestamp_field="event_timestamp",
                       description="Empty: the real-time view is fed by pushes")
    return PushSource(name="customer_realtime_push", batch_source=batch,
                      description="Per-profile features folded from the event log")
