"""`propel train propensity`: who responds when contacted. Rows = treated campaign touches; label =
a purchase within the response window; features as of the send time, plus what was sent."""

from __future__ import annotations

from functools import partial

from propel.lake.tables import Lake
from propel.config import Workspace
from propel.training import labels
from propel.training.tasks import SERVICES
from propel.training.pipeline import NotEligible, TrainResult, build_frame, train_classifier

SERVICE = SERVICES["propensity"]


def entity_rows(ws: Workspace) -> tuple:
    """Treated touches with derived labels, or the explicit `response` labels when the workspace has them."""
    con = Lake(ws).connect()
    explicit = labels.explicit(con, "response")
    if explicit is not None:
        return explicit, "explicit"
    rows = labels.response(con, ws.settings().train.response_window_days)
    rows = rows[rows["group"] == "treatment"].reset_index(drop=True)
    if rows.empty:
        raise NotEligible(
            "propensity: no labels. Responses are derived from campaign touches (who was sent a campaign, "
            "campaign_touches with group = treatment, and whether they bought within train.response_window_days), "
            "and this lake has none whose window has closed. Ingest campaign_touches (and campaigns), or give "
            "explicit labels (a labels file with task = response, docs/data-contract.md)")
    return rows, "derived"


def train(ws: Workspace, tune_seconds: float = 0, oracle=None) -> TrainResult:
    """`oracle`: the generator's ground truth (propel.demo.oracle.Oracle), for oracle metrics on demo data."""
    cfg = ws.settings().train
    entity, source = entity_rows(ws)
    frame = build_frame(ws, entity, SERVICE, source, cfg, cfg.response_window_days, cfg.response_test_periods)
    oracle_fn = partial(oracle.response_metrics, window_days=cfg.response_window_days) if oracle else None
    # Baseline heuristic: past response rate.
    return train_classifier(ws, "propensity", frame, cfg, tune_seconds, "response_rate_365d", oracle_fn)
