"""Data sources: the Parquet feature tables written by `propel features build`."""

from __future__ import annotations

from feast import FileSource

from propel.config import Workspace


def customer_features(ws: Workspace) -> FileSource:
    return FileSource(name="customer_features", path=str(ws.customer_snapshots / "*.parquet"),
                      timestamp_field="event_timestamp", description="Weekly customer snapshots")


def item_features(ws: Workspace) -> FileSource:
    return FileSource(name="item_features", path=str(ws.item_snapshots / "*.parquet"),
                      timestamp_field="event_timestamp", description="Weekly item snapshots")


def customer_profile(ws: Workspace) -> FileSource:
    return FileSource(name="customer_profile", path=str(ws.profile),
                      timestamp_field="event_timestamp", description="CRM attributes, valid from signup")


def customer_segments(ws: Workspace) -> FileSource:
    return FileSource(name="customer_segments", path=str(ws.segments / "*.parquet"),
                      timestamp_field="event_timestamp", description="Segments per snapshot (`propel segments`)")
