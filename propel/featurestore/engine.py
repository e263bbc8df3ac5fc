"""Propel's batch engine for Feast: Feast's local engine with the bulk online writer (`online_write`).

Named in every workspace's feature_store.yaml (`batch_engine: {type: propel.featurestore.engine.PropelComputeEngine}`),
so `feast materialize-incremental`, `feast materialize` and `FeatureStore.materialize*` all write through it
and Feast itself records the intervals and refreshes the affected services, as for any engine. Views the
writer does not handle go to Feast's stock local engine, over the same interval.

Two intervals differ from Feast's default, the same for every caller: a view with ttl 0 is always loaded
whole: customer_profile (valid forever, rows stamped at signup, often before the last run) and the feature
tables (a row only when values change: each entity's newest row, however old, after a rebuild that may have
changed old rows too), and a view never
materialized is loaded from the start of its data (Feast would start at now - ttl, skipping every snapshot
of a workspace whose data ends earlier). Both only write rows the online store should hold anyway.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Literal

from feast.infra.common.materialization_job import MaterializationJobStatus, MaterializationTask
from feast.infra.compute_engines.local.compute import LocalComputeEngine, LocalComputeEngineConfig
from feast.infra.compute_engines.local.job import LocalMaterializationJob
from feast.infra.registry.base_registry import BaseRegistry

from propel.featurestore import online_write

TYPE = "propel.featurestore.engine.PropelComputeEngine"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class PropelComputeEngineConfig(LocalComputeEngineConfig):
    type: Literal["propel.featurestore.engine.PropelComputeEngine"] = TYPE  # type: ignore[assignment]


class PropelComputeEngine(LocalComputeEngine):
    def _materialize_one(self, registry: BaseRegistry, task: MaterializationTask, **kwargs) -> LocalMaterializationJob:
        view = task.feature_view
        if not view.ttl or not view.materialization_intervals:
            task = dataclasses.replace(task, start_time=EPOCH)
        job_id = f"{view.name}-{task.start_time}-{task.end_time}"
        try:
            if online_write.write_view(self.repo_config, self.online_store, view, task.start_time, task.end_time):
                return LocalMaterializationJob(job_id=job_id, status=MaterializationJobStatus.SUCCEEDED)
        except Exception as exc:  # noqa: BLE001 - reported through the job, as Feast's engines do
            return LocalMaterializationJob(job_id=job_id, status=MaterializationJobStatus.ERROR, error=exc)
        return super()._materialize_one(registry, task, **kwargs)
