"""Churn, propensity and uplift training: labels, splits, MLflow logging, champion/challenger."""

from __future__ import annotations

from datetime import date, datetime, timezone

import mlflow
import numpy as np
import pandas as pd
import pytest

from propel.featurestore import store as fstore
from propel.features.build import build
from propel.lake.ingest import ingest
from propel.lake.tables import Lake
from propel.config import Workspace
from propel.training import churn, labels, pipeline, propensity, registry, uplift
from propel.demo import oracle
from propel.demo.oracle import Oracle
from propel.training.model import PlattCalibrator, model_input
from propel.training.evaluate import gains_table, qini_coefficient, top_share
from propel.training.pipeline import NotEligible
from tests.helpers import FAST_TRAIN as FAST, NOW, write

EVENTS = "event_id,ts,identity_type,identity_value,customer_id,channel,event_type,item_id,quantity,revenue,session_id"


def test_churn_labels_on_hand_made_history(ws, raw):
    write(raw, "events.csv", f"""
        {EVENTS}
        a1,2025-03-01T10:00:00Z,,,A,store,purchase,I1,1,10,
        a2,2025-03-20T10:00:00Z,,,A,store,purchase,I1,1,10,
        b1,2025-03-01T10:00:00Z,,,B,store,purchase,I1,1,10,
        c1,2025-01-01T10:00:00Z,,,C,store,purchase,I1,1,10,
        c2,2025-03-25T10:00:00Z,,,C,store,purchase,I1,1,10,
        d1,2025-03-09T23:59:59Z,,,D,web,page_view,I1,,,s1
        z1,2025-06-30T10:00:00Z,,,Z,store,purchase,I1,1,10,
    """)
    ingest(raw, ws, now=datetime(2025, 7, 1, tzinfo=timezone.utc))
    got = labels.churn(Lake(ws).connect(), [date(2025, 3, 10), date(2025, 6, 1)], lookback_days=30, horizon_days=30)
    # At 03-10: A and B bought in the 30 days before; A buys again within 30 days, B does not.
    # C's last purchase is older than the lookback (not active); D never bought. 06-01 + 30 days
    # passes the end of the data (06-30 + 1 day = 07-01 is fine), so it is labelled too: Z is not active.
    assert got.values.tolist() == [["A", pd.Timestamp("2025-03-10"), 0], ["B", pd.Timestamp("2025-03-10"), 1]]
    assert labels.churn(Lake(ws).connect(), [date(2025, 6, 10)], 30, 30).empty, "horizon not yet observed"


def test_response_labels_on_hand_made_history(ws, raw):
    write(raw, "campaigns.csv", "campaign_id,channel,start_at,end_at,cost,offer_type\nK1,email,2025-03-01,2025-03-02,100,discount")
    write(raw, "campaign_touches.csv", """
        campaign_id,customer_id,sent_at,group
        K1,A,2025-03-01T09:00:00Z,treatment
        K1,B,2025-03-01T09:00:00Z,treatment
        K1,C,2025-03-01T09:00:00Z,control
        K1,D,2025-03-01T09:00:00Z,control
    """)
    write(raw, "events.csv", f"""
        {EVENTS}
        a1,2025-03-03T10:00:00Z,,,A,web,purchase,I1,1,10,
        b0,2025-03-01T08:59:59Z,,,B,web,purchase,I1,1,10,
        b1,2025-03-08T09:00:00Z,,,B,web,purchase,I1,1,10,
        c1,2025-03-07T10:00:00Z,,,C,store,purchase,I1,1,10,
        z1,2025-04-01T10:00:00Z,,,Z,web,page_view,,,,
    """)
    ingest(raw, ws, now=NOW)
    got = labels.response(Lake(ws).connect(), window_days=7).set_index("customer_id")
    # B bought just before the send and exactly 7 days after it (outside [sent, sent + 7d)).
    assert got["label"].to_dict() == {"A": 1, "B": 0, "C": 1, "D": 0}
    assert set(got["campaign_channel"]) == {"email"} and got.loc["C", "group"] == "control"


def test_time_split_keeps_label_windows_out_of_the_test():
    days = pd.Series(pd.to_datetime([f"2025-01-{d:02d}" for d in (1, 8, 15, 22, 29)]).repeat(200))
    ids = pd.Series([f"C{i}" for i in range(200)] * 5)
    split = labels.time_split(days, ids, test_periods=1, valid_share=0.25, gap_days=14)
    # Fitting rows must have their 14-day label window closed by the 29th: days 1, 8, 15.
    assert set(split[days.dt.day == 22]) == {"gap"} and set(split[days.dt.day == 29]) == {"test"}
    fit = split[days.dt.day <= 15]
    assert set(fit) == {"train", "valid"} and 0.15 < (fit == "valid").mean() < 0.35
    valid_ids, train_ids = set(ids[split == "valid"]), set(ids[split == "train"])
    assert valid_ids and not valid_ids & train_ids, "validation customers never appear in training"
    with pytest.raises(ValueError, match="label window"):
        labels.time_split(days, ids, test_periods=1, valid_share=0.2, gap_days=40)


def test_one_moment_holds_out_a_stratified_stable_share_of_customers():
    rng = np.random.default_rng(0)
    ids = pd.Series([f"{i:05d}" for i in range(2000)])
    y = pd.Series((rng.random(2000) < 0.06).astype(int))
    split = labels.holdout_split(y, ids, test_share=0.2, seed=7)
    test = split == "test"
    assert abs(test.mean() - 0.2) < 0.01 and abs(y[test].sum() / y.sum() - 0.2) < 0.02, "both classes held out in proportion"
    assert split.equals(labels.holdout_split(y, ids, 0.2, 7)), "the same customers run after run"
    assert not split.equals(labels.holdout_split(y, ids, 0.2, 8))


def test_cv_folds_are_stratified_and_keep_a_customer_together():
    ids = pd.Series(np.repeat([f"C{i}" for i in range(300)], 2))
    y = pd.Series(np.repeat((np.arange(300) % 10 == 0).astype(int), 2))
    folds = labels.cv_folds(y, ids, folds=5, seed=7)
    assert set(folds) == set(range(5)) and (pd.Series(folds).groupby(ids).nunique() == 1).all()
    assert all(y[folds == k].sum() >= 10 for k in range(5)), "every fold holds positives"


def test_single_moment_small_frame_uses_holdout_and_cross_validation():
    rng = np.random.default_rng(1)
    n = 600
    data = pd.DataFrame({"customer_id": [f"{i:04d}" for i in range(n)], "event_timestamp": pd.Timestamp("2024-06-30"),
                         "x": rng.normal(size=n)})
    data["label"] = (data["x"] + rng.normal(size=n) > 1.5).astype(int)
    cfg = Workspace.resolve("/nonexistent").settings().train
    protocol = pipeline.split_protocol(data, cfg, gap_days=0, test_periods=1)
    assert protocol["test"] == "customer_holdout" and protocol["folds"] == 5 and "1 moment" in protocol["reason"]
    assert set(data["split"]) == {"train", "test"} and set(data.loc[data["split"] == "train", "fold"]) == set(range(5))
    cfg.cv_max_rows = 100  # many rows: one validation split instead
    assert pipeline.split_protocol(data, cfg, 0, 1)["validation"] == "split" and set(data["split"]) == {"train", "valid", "test"}


def test_a_fold_without_positives_does_not_stop_training():
    rng = np.random.default_rng(2)
    data = pd.DataFrame({"customer_id": [f"C{i}" for i in range(400)], "x": rng.normal(size=400)})
    data["label"] = (data["x"] > 1.2).astype(int)
    frame = pipeline.Frame(data, ["x"], [], "test_v1", "explicit", len(data))
    folds = [(data.iloc[:300], data.iloc[300:350].assign(label=0)), (data.iloc[100:], data.iloc[:100])]
    cfg = Workspace.resolve("/nonexistent").settings().train
    cv = pipeline.cross_validate(frame, folds, cfg, pipeline.lgb_params(cfg, 0.1, 400), {})
    assert len(cv["aucs"]) == 1 and cv["auc"] == cv["aucs"][0] > 0.8, "the one-class fold is left out of the mean"


def test_metric_functions_against_hand_computed_values():
    y = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 1])
    s = np.arange(10, 0, -1) / 10  # ranks rows in the given order
    assert top_share(y, s, 0.2) == pytest.approx((0.5 / 0.3, 1 / 3))
    table = gains_table(y, s, bins=5)
    assert table["positives"].tolist() == [1, 1, 0, 0, 1] and table["captured_share"].iloc[-1] == 1
    # Perfect uplift ranking: treated responders first, control responders last.
    y2 = np.array([1, 1, 0, 0, 0, 1])
    t2 = np.array([1, 1, 1, 0, 0, 0])
    assert qini_coefficient(y2, t2, np.array([6, 5, 4, 3, 2, 1.0])) > qini_coefficient(y2, t2, np.array([1, 2, 3, 4, 5, 6.0]))


def test_logistic_baseline_learns_from_a_seeded_sample_of_large_frames(monkeypatch):
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"x": rng.normal(size=400), "tier": rng.choice(["a", "b", None], size=400)})
    data["label"] = (data["x"] + rng.normal(size=400) > 0).astype(int)
    frame = pipeline.Frame(data, ["x", "tier"], ["tier"], "test_v1", "derived", len(data))
    full = pipeline.logistic_baseline(frame, data, data, seed=1)
    monkeypatch.setattr(pipeline, "LOGISTIC_MAX_ROWS", 60)
    sampled = [pipeline.logistic_baseline(frame, data, data, seed=1) for _ in range(2)]
    np.testing.assert_array_equal(sampled[0], sampled[1])  # the same sample every time
    assert not np.allclose(sampled[0], full) and np.corrcoef(sampled[0], full)[0, 1] > 0.9


def test_calibration_keeps_the_ranking_and_fixes_the_probabilities():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.01, 0.99, 20_000)
    y = (rng.random(raw.size) < raw / (raw + 3 * (1 - raw))).astype(int)  # raw overstates (e.g. positives upweighted)
    calibrated = PlattCalibrator().fit(raw, y).predict(raw)
    assert (np.diff(calibrated[np.argsort(raw)]) > 0).all(), "strictly increasing: no ties, the booster's ROC AUC"
    assert np.mean((calibrated - y) ** 2) < np.mean((raw - y) ** 2) - 0.02
    assert calibrated.mean() == pytest.approx(y.mean(), abs=0.005)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, generated):
    ws = Workspace.resolve(tmp_path_factory.mktemp("train") / "ws")
    ingest(generated, ws)
    ws.config_file.write_text(FAST)
    build(ws, every_days=7, snapshots=12)
    fstore.apply(ws)
    first = churn.train(ws, oracle=Oracle(generated / "_truth"))
    return ws, first


def test_churn_run_logs_everything_and_becomes_champion(trained):
    ws, first = trained
    assert first.promoted and first.version == "1" and "no champion yet" in first.decision
    client = registry.tracking(ws)
    run = client.get_run(first.run_id)
    m = run.data.metrics
    for key in ("roc_auc", "pr_auc", "log_loss", "brier", "lift_top10", "captured_top20", "logistic_roc_auc",
                "heuristic_days_since_last_purchase_roc_auc", "lightgbm_uncalibrated_brier", "oracle_roc_auc"):
        assert key in m, key
    assert 0.5 < m["roc_auc"] <= 1 and run.data.params["data_hash"]
    assert m["roc_auc"] == pytest.approx(m["lightgbm_uncalibrated_roc_auc"], abs=1e-12), "calibration ties no rows"
    assert run.data.tags["feast.feature_service"] == "churn_v1"  # Feast's tag convention
    artifacts = {f.path for d in ("plots", "tables") for f in client.list_artifacts(first.run_id, d)}
    assert {"plots/roc.png", "plots/pr.png", "plots/gains.png", "plots/calibration.png", "plots/importance.png",
            "tables/gains_table.csv", "tables/feature_importance.csv"} <= artifacts
    model = mlflow.pyfunc.load_model("models:/churn@champion")
    assert model.metadata.signature is not None
    assert registry.history(ws, "churn")[-1]["to_version"] == 1


def test_same_seed_same_metrics(trained):
    ws, first = trained
    again = churn.train(ws)
    assert again.metrics["roc_auc"] == pytest.approx(first.metrics["roc_auc"], abs=1e-12)
    assert not again.promoted and "not better" in again.decision, "an equal model does not replace the champion"
    assert str(registry.champion_version(registry.tracking(ws), "churn").version) == "1"


def test_worse_challenger_stays_challenger_and_failure_changes_nothing(trained, monkeypatch):
    ws, first = trained
    original = pipeline.fit_classifier

    def worse(frame, folds, cfg, task, params=None, **kwargs):  # a deliberately weak model: two trees, shuffled labels
        rng = np.random.default_rng(0)
        shuffled = [(t.assign(label=rng.permutation(t["label"].to_numpy())), h) for t, h in folds]
        cfg.max_rounds = 2
        return original(frame, shuffled, cfg, task, params)

    monkeypatch.setattr(pipeline, "fit_classifier", worse)
    result = churn.train(ws)
    assert not result.promoted and result.decision.startswith("not better")
    assert str(registry.champion_version(registry.tracking(ws), "churn").version) == "1"

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pipeline, "log_classifier_run", broken)
    before = len(registry.history(ws, "churn"))
    with pytest.raises(RuntimeError):
        churn.train(ws)
    assert str(registry.champion_version(registry.tracking(ws), "churn").version) == "1"
    assert len(registry.history(ws, "churn")) == before


def test_promote_and_rollback_are_recorded(trained):
    ws, _ = trained
    versions = sorted(int(r["version"]) for r in registry.list_models(ws) if r["task"] == "churn")
    registry.set_champion(ws, "churn", versions[-1], "manual")
    assert str(registry.champion_version(registry.tracking(ws), "churn").version) == str(versions[-1])
    entry = registry.rollback(ws, "churn")
    assert entry["to_version"] == 1 and entry["action"] == "rollback"
    now = datetime.now(timezone.utc)  # the champion now, by the alias history
    assert [h["to_version"] for h in registry.history(ws, "churn") if datetime.fromisoformat(h["at"]) <= now][-1] == 1


def test_eligibility_gate_names_counts(trained):
    ws, _ = trained
    ws.config_file.write_text(FAST.replace("min_positives = 8", "min_positives = 1000000"))
    try:
        with pytest.raises(NotEligible, match=r"churn: the training window has [\d,]+ positives .* at least 1,000,000"):
            churn.train(ws)
    finally:
        ws.config_file.write_text(FAST)


def test_propensity_and_uplift_train(trained, generated):
    ws, _ = trained
    p = propensity.train(ws, oracle=Oracle(generated / "_truth"))
    assert p.promoted and 0.5 < p.metrics["roc_auc"] <= 1 and "oracle_roc_auc" in p.metrics
    u = uplift.train(ws, oracle=Oracle(generated / "_truth"))
    assert u.promoted and {"qini", "qini_auc", "auuc", "random_qini_auc", "response_model_qini", "uplift_at_10", "oracle_qini"} <= set(u.metrics)
    loaded = mlflow.pyfunc.load_model("models:/uplift@champion")
    rows = fstore.historical_features(fstore.feature_store(ws), "propensity_v1", pd.DataFrame({
        "customer_id": ["C0000001"], "event_timestamp": [pd.Timestamp("2026-10-20")],
        "campaign_channel": ["email"], "offer_type": ["discount_10"]}))
    m = loaded.unwrap_python_model()
    scored = loaded.predict(model_input(rows, m.features, m.treated.categories))
    assert {"score", "p_treated", "p_control"} <= set(scored.columns)


def test_rows_older_than_the_first_snapshot_are_left_out(trained):
    """Touches sent before the snapshots begin have no point-in-time features: they must not train."""
    ws, _ = trained
    entity, _ = propensity.entity_rows(ws)
    first = pd.Timestamp(pipeline.load_catalog(ws)["cutoffs"][0], tz="UTC")
    early = pd.to_datetime(entity["event_timestamp"], utc=True) < first
    assert early.any() and not early.all(), "the fixture has touches on both sides of the first snapshot"
    frame = pipeline.build_frame(ws, entity, propensity.SERVICE, "derived", ws.settings().train, 7, 1)
    assert len(frame.data) == (~early).sum() and frame.labelled_rows == (~early).sum()
    # only people who signed up between the snapshot and the send lack features
    assert frame.data["days_since_last_visit"].notna().mean() > 0.9


def test_oracles_use_the_observable_silence_not_the_hidden_churn_time(generated):
    """A person's oracle scores depend on how long they have been silent, as the true process infers
    it, whether or not they (secretly) churned already."""
    truth = generated / "_truth"
    persons = pd.read_parquet(truth / "persons.parquet").dropna(subset=["customer_id"])
    at = pd.Timestamp("2026-10-01", tz="UTC")
    gone = persons[persons["churn_at"] < at].iloc[:5]["customer_id"].tolist()
    here = persons[persons["churn_at"].isna() & (persons["first_seen_at"] < at - pd.Timedelta(days=200))].iloc[:5]["customer_id"].tolist()
    assert gone and here
    ids = gone + here
    rows = pd.DataFrame({"customer_id": ids * 2, "event_timestamp": at, "days_since_last_visit": [1] * len(ids) + [120] * len(ids),
                         "campaign_channel": "email", "offer_type": "discount_10"})
    churn_p = oracle.churn_scores(truth, rows, horizon_days=60).to_numpy()
    respond = oracle.response_scores(truth, rows, window_days=7).to_numpy()
    recent, silent = slice(0, len(ids)), slice(len(ids), None)
    assert (churn_p[recent] < 1).all(), "seen yesterday: not certainly gone, churned or not"
    assert (churn_p[silent] > churn_p[recent]).all() and (respond[silent] < respond[recent]).all()
    assert (respond > 0).all()


@pytest.mark.slow  # trains models
def test_explicit_labels_with_a_wide_messy_crm_table(ws, raw):
    """A telco-style workspace: explicit churn labels and dozens of arbitrary CRM columns."""
    rng = np.random.default_rng(3)
    n = 800
    crm = pd.DataFrame({"customer_id": [f"T{i:04d}" for i in range(n)], "signup_at": "2024-01-01",
                        "plan": rng.choice(["basic", "plus", "max", None], n), "monthly fee": rng.normal(30, 5, n).round(2)})
    for j in range(30):  # filler attributes of every kind, with holes
        kind = j % 3
        col = rng.choice(["x", "y", "z"], n) if kind == 0 else rng.normal(size=n).round(3) if kind == 1 else rng.random(n) > 0.5
        crm[f"attr_{j}"] = pd.Series(col).where(rng.random(n) > 0.2)
    crm.to_csv(raw / "customers.csv", index=False)
    ev = pd.DataFrame({"event_id": [f"e{i}" for i in range(n)], "ts": "2025-01-05T10:00:00Z", "customer_id": crm["customer_id"],
                       "channel": "store", "event_type": "purchase", "quantity": 1, "revenue": 10})
    ev.to_csv(raw / "events.csv", index=False)
    as_of = pd.to_datetime(["2025-02-02", "2025-02-09", "2025-02-16", "2025-02-23", "2025-03-02", "2025-03-09"])
    rows = [(c, d, int((p == "basic") ^ (rng.random() < 0.1))) for c, p in zip(crm["customer_id"], crm["plan"]) for d in as_of]
    pd.DataFrame(rows, columns=["customer_id", "as_of", "label"]).assign(task="churn").to_csv(raw / "labels.csv", index=False)
    ingest(raw, ws, now=NOW)
    ws.config_file.write_text(FAST)
    build(ws, every_days=7, snapshots=12)
    fstore.apply(ws)
    result = churn.train(ws)
    assert result.metrics["roc_auc"] > 0.85, result.metrics["roc_auc"]
    run = registry.tracking(ws).get_run(result.run_id)
    assert run.data.tags["propel.label_source"] == "explicit"
    model = mlflow.pyfunc.load_model("models:/churn@champion").unwrap_python_model()
    assert "plan" in model.categories and "monthly_fee" in model.features
    basic = next(i for i, p in enumerate(crm["plan"]) if p == "basic")
    frame = fstore.historical_features(fstore.feature_store(ws), "churn_v1", pd.DataFrame(
        {"customer_id": [crm["customer_id"][basic]], "event_timestamp": [as_of[-1]]}))
    assert model.explain(frame)[0][0][0] == "plan", "the planted driver is the top reason"


def test_training_rows_are_sampled_by_whole_customers():
    ids = np.repeat([f"C{i}" for i in range(2000)], 5)
    entity = pd.DataFrame({"customer_id": ids, "event_timestamp": pd.Timestamp("2025-01-01"), "label": 0})
    kept = pipeline.sample_customers(entity, 4000, seed=7)
    assert 3000 < len(kept) < 5000 and (kept.groupby("customer_id").size() == 5).all(), "whole customers kept"
    assert kept.equals(pipeline.sample_customers(entity, 4000, seed=7)), "same customers run after run"
    assert pipeline.sample_customers(entity, 0, seed=7) is entity and pipeline.sample_customers(entity, 10**6, 7) is entity
