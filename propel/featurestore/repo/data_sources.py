"""Data sources: the Parquet feature tables written by `propel features build`, and the stream's push source."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from feast import FileSource, PushSource
from feast.data_source import DataSource

from propel.config import Workspace
from propel.features.definitions import view_features

ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "string": pa.string(), "list": pa.list_(pa.string())}


def parquet(ws: Workspace, name: str, path: Path, description: str) -> DataSource:
    """A source over Parquet files: a FileSource, or with `[feast] offline = "spark"` a SparkSource over the same
    files (Feast's Spark offline store reads only those)."""
    if ws.settings().feast.offline == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        return SparkSource(name=name, path=str(path), file_format="parquet", timestamp_field="event_timestamp",
                           description=description)
    return FileSource(name=name, path=str(path), timestamp_field="event_timestamp", description=description)


def customer_features(ws: Workspace) -> DataSource:
    return parquet(ws, "customer_features", ws.customer_snapshots / "*.parquet", "Customer feature rows, when values change")


def item_features(ws: Workspace) -> DataSource:
    return parquet(ws, "item_features", ws.item_snapshots / "*.parquet", "Item feature rows, when values change")


def customer_profile(ws: Workspace) -> DataSource:
    return parquet(ws, "customer_profile", ws.profile, "CRM attributes, valid from signup")


def customer_segments(ws: Workspace) -> DataSource:
    return parquet(ws, "customer_segments", ws.segments / "*.parquet", "Segments per snapshot (`propel segments`)")


def customer_realtime(ws: Workspace) -> PushSource:
    """The stream consumer pushes rows to the online store only (propel/featurestore/realtime.py); Feast wants a
    batch source beside a push source, so it is an empty Parquet file with the view's schema."""
    path = ws.realtime_source
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.schema([("customer_id", pa.string()), ("event_timestamp", pa.timestamp("us", "UTC")),
                                  *((f.name, ARROW_TYPES[f.dtype]) for f in view_features("customer_realtime"))])
                       .empty_table(), path)
    batch = parquet(ws, "customer_realtime_batch", path, "Empty: the real-time view is fed by pushes")
    return PushSource(name="customer_realtime_push", batch_source=batch,
                      description="Per-profile features folded from the event log")
