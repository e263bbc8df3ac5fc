"""`propel train propensity`: who responds when contacted. Rows = treated campaign touches; label =
a purchase within the response window; features as of the send time, plus what was sent."""

from __future__ import annotations

from features.lake import Lake
from propel.config import Workspace
from training import labels, oracle
from training.pipeline import (TrainResult, build_frame, check_eligible, decide_and_promote, fit_classifier,
                               log_classifier_run, logistic_baseline, tune)

SERVICE = "propensity_v1"


def entity_rows(ws: Workspace) -> tuple:
    """Treated touches with derived labels, or the explicit `response` labels when the workspace has them."""
    con = Lake(ws).connect()
    explicit = labels.explicit(con, "response")
    if explicit is not None:
        return explicit, "explicit"
    rows = labels.response(con, ws.settings().train.response_window_days)
    return rows[rows["group"] == "treatment"].reset_index(drop=True), "derived"


def train(ws: Workspace, tune_seconds: float = 0, truth_dir=None) -> TrainResult:
    cfg = ws.settings().train
    entity, source = entity_rows(ws)
    frame = build_frame(ws, entity, SERVICE, source, cfg, cfg.response_window_days, cfg.response_test_periods)
    train_df, valid, test = frame.part("train"), frame.part("valid"), frame.part("test")
    check_eligible(train_df, cfg, "propensity")
    params = tune(frame, train_df, valid, cfg, "propensity", tune_seconds) if tune_seconds else None
    fitted = fit_classifier(frame, train_df, valid, cfg, "propensity", params)
    scores = {"lightgbm": fitted.model.score(test), "lightgbm_uncalibrated": fitted.model.raw_score(test),
              "logistic": logistic_baseline(frame, train_df, test, cfg.seed)}
    if "response_rate_365d" in test:
        scores["heuristic_past_response"] = test["response_rate_365d"].rank(pct=True).fillna(0.5).to_numpy()
    extra = oracle.response_metrics(truth_dir, test, scores["lightgbm"]) if truth_dir and "campaign_id" in test else {}
    run_id, version = log_classifier_run(ws, "propensity", frame, fitted, scores, extra, cfg)
    return decide_and_promote(ws, "propensity", version, run_id, fitted.metrics, test, cfg, [])
