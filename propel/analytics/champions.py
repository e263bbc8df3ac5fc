"""The current champions as analytics uses them: the model, the rows it was fitted on, its scores on Feast features.

Segments (value tier) and monitoring (drift) both need to know what the churn champion saw in training:
its fitting rows are recomputed with the training code's own label and split functions, so "after the
training window" means exactly the out-of-time test period and later, where the model's scores use
nothing it learnt from.
"""

from __future__ import annotations

import mlflow
import pandas as pd

from propel.featurestore import store as fstore
from propel.config import Workspace
from propel.training import churn, registry
from propel.training.labels import time_split


def load(ws: Workspace, task: str):
    """(unwrapped python model, version) of the task's champion, or None when there is none."""
    version = registry.champion_version(registry.tracking(ws), task)
    if version is None:
        return None
    return mlflow.pyfunc.load_model(f"models:/{task}/{version.version}").unwrap_python_model(), str(version.version)


def churn_training_rows(ws: Workspace) -> pd.DataFrame:
    """The churn entity rows (customer_id, event_timestamp, label) with the split training gave them."""
    cfg = ws.settings().train
    rows, _, gap = churn.entity_rows(ws)
    rows = rows.reset_index(drop=True)
    rows["split"] = time_split(rows["event_timestamp"], rows["customer_id"], cfg.churn_test_periods,
                               cfg.valid_share, gap).to_numpy()
    return rows


def out_of_sample_from(rows: pd.DataFrame) -> pd.Timestamp:
    """The first moment the champion never learnt from: the start of its out-of-time test period."""
    return pd.Timestamp(rows.loc[rows["split"] == "test", "event_timestamp"].min())


def score(ws: Workspace, model, entity: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time features of `entity` (customer_id, event_timestamp) from Feast, with the model's `score`."""
    if entity.empty:
        return entity.assign(score=pd.Series(dtype=float))
    data = fstore.historical_features(fstore.feature_store(ws), model.feature_service, entity)
    data["score"] = model.score(data)
    return data
