"""`propel train churn`: who is about to stop buying. Derived labels, or the workspace's explicit ones."""

from __future__ import annotations

from datetime import date

from features.build import load_catalog
from features.lake import Lake
from propel.config import Workspace
from training import labels, oracle
from training.pipeline import (Frame, TrainResult, build_frame, check_eligible, decide_and_promote, fit_classifier,
                               log_classifier_run, logistic_baseline, tune)

SERVICE = "churn_v1"


def entity_rows(ws: Workspace, con) -> tuple:
    cfg = ws.settings().train
    explicit = labels.explicit(con, "churn")
    if explicit is not None:
        return explicit, "explicit", 0.0
    cutoffs = [date.fromisoformat(c) for c in load_catalog(ws)["cutoffs"]]
    return labels.churn(con, cutoffs, cfg.churn_lookback_days, cfg.churn_horizon_days), "derived", cfg.churn_horizon_days


def train(ws: Workspace, tune_seconds: float = 0, truth_dir=None) -> TrainResult:
    cfg = ws.settings().train
    con = Lake(ws).connect()
    entity, source, gap = entity_rows(ws, con)
    frame: Frame = build_frame(ws, entity, SERVICE, source, cfg, gap, cfg.churn_test_periods)
    train_df, valid, test = frame.part("train"), frame.part("valid"), frame.part("test")
    check_eligible(train_df, cfg, "churn")
    params = tune(frame, train_df, valid, cfg, "churn", tune_seconds) if tune_seconds else None
    fitted = fit_classifier(frame, train_df, valid, cfg, "churn", params)
    scores = {"lightgbm": fitted.model.score(test), "lightgbm_uncalibrated": fitted.model.raw_score(test),
              "logistic": logistic_baseline(frame, train_df, test, cfg.seed)}
    if "days_since_last_purchase" in test:
        scores["heuristic_recency"] = test["days_since_last_purchase"].rank(pct=True).fillna(0.5).to_numpy()
    extra, notes = {}, []
    if truth_dir:
        extra.update(oracle.churn_metrics(truth_dir, test, scores["lightgbm"], cfg.churn_horizon_days))
    run_id, version = log_classifier_run(ws, "churn", frame, fitted, scores, extra, cfg)
    return decide_and_promote(ws, "churn", version, run_id, fitted.metrics, test, cfg, notes)
