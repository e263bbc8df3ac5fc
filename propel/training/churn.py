"""`propel train churn`: who is about to stop buying. Derived labels, or the workspace's explicit ones."""

from __future__ import annotations

from datetime import date
from functools import partial

from propel.features.build import load_catalog
from propel.lake.tables import Lake
from propel.config import Workspace
from propel.training import labels
from propel.training.tasks import SERVICES
from propel.training.pipeline import NotEligible, TrainResult, build_frame, train_classifier

SERVICE = SERVICES["churn"]


def entity_rows(ws: Workspace) -> tuple:
    """(rows, label source, label window in days): explicit `churn` labels win over derived ones."""
    cfg = ws.settings().train
    con = Lake(ws).connect()
    explicit = labels.explicit(con, "churn")
    if explicit is not None:
        return explicit, "explicit", 0.0
    cutoffs = [date.fromisoformat(c) for c in load_catalog(ws)["cutoffs"]]
    rows = labels.churn(con, cutoffs, cfg.churn_lookback_days, cfg.churn_horizon_days)
    if rows.empty:
        raise NotEligible(
            "churn: no labels. Churn is derived from purchases (events with event_type = purchase): customers who "
            f"bought within train.churn_lookback_days ({cfg.churn_lookback_days}) before a feature snapshot whose next "
            f"train.churn_horizon_days ({cfg.churn_horizon_days}) are observed; that needs purchase events over at "
            "least lookback + horizon days. Ingest them, or give explicit labels (a labels file with task = churn, "
            "docs/data-contract.md)")
    return rows, "derived", cfg.churn_horizon_days


def train(ws: Workspace, tune_seconds: float = 0, oracle=None) -> TrainResult:
    """`oracle`: the generator's ground truth (propel.demo.oracle.Oracle), for oracle metrics on demo data."""
    cfg = ws.settings().train
    entity, source, gap = entity_rows(ws)
    frame = build_frame(ws, entity, SERVICE, source, cfg, gap, cfg.churn_test_periods)
    oracle_fn = partial(oracle.churn_metrics, horizon_days=cfg.churn_horizon_days) if oracle else None
    # Baseline heuristic: the longer since the last purchase, the likelier the churn (RFM recency rank).
    return train_classifier(ws, "churn", frame, cfg, tune_seconds, "days_since_last_purchase", oracle_fn)
