"""KPIs, CLTV, campaign A/B tests and recommendation impact: exact on hand-made data, checked on generated data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from propel.analytics import cltv, experiments, kpis, recommendations
from propel.lake.ingest import ingest
from propel.lake.tables import Lake
from tests.helpers import NOW, write

EVENTS = """
event_id,ts,customer_id,channel,event_type,revenue,quantity,session_id,recommendation_id
e1,2025-03-03T10:00:00Z,C1,web,page_view,,,s1,
e2,2025-03-03T10:01:00Z,C1,web,purchase,20,1,s1,r1
e3,2025-03-03T10:02:00Z,C1,web,purchase,30,1,s1,
e4,2025-03-04T10:00:00Z,C2,app,page_view,,,s2,r2
e5,2025-03-05T10:00:00Z,C3,web,purchase,10,1,s3,
e6,2025-03-11T10:00:00Z,C1,web,purchase,40,1,s4,
e7,2025-03-12T10:00:00Z,C2,app,purchase,5,1,s5,
e8,2025-03-03T09:59:00Z,C1,web,recommendation_click,,,s1,r1
e9,2025-03-04T10:01:00Z,C2,app,recommendation_click,,,s2,r2
e10,2025-03-04T10:02:00Z,C2,app,product_view,,,s2,r3
"""


@pytest.fixture
def shop(ws, raw):
    write(raw, "customers.csv", "customer_id,signup_at\nC1,2025-01-01\nC2,2025-01-01\nC3,2025-01-01")
    write(raw, "campaigns.csv", "campaign_id,channel,start_at,end_at,cost\nK1,email,2025-03-10,2025-03-17,100")
    write(raw, "events.csv", EVENTS)
    ingest(raw, ws, now=NOW)
    return Lake(ws).connect()


def test_kpis_over_time(shop):
    weeks = kpis.over_time(shop, "week").set_index("period")
    w1, w2 = weeks.loc[pd.Timestamp("2025-03-03")], weeks.loc[pd.Timestamp("2025-03-10")]
    assert (w1["sessions"], w1["orders"], w1["revenue"], w1["aov"]) == (3, 2, 60, 30), "two purchase lines of s1 = one order"
    assert w1["conversion_rate"] == pytest.approx(2 / 3) and w1["active_customers"] == 2 and w1["repeat_rate"] == 0
    assert w1["new_customers"] == 2 and np.isnan(w1["cac"]) and w1["visitors"] == 3
    assert (w2["orders"], w2["revenue"], w2["aov"], w2["conversion_rate"]) == (2, 45, 22.5, 1.0)
    assert w2["repeat_rate"] == 0.5 and w2["new_customers"] == 1 and w2["cac"] == 100, "campaign cost / new customers"


def test_kpis_by_channel_and_retention(shop):
    channels = kpis.by_channel(shop).set_index("channel")
    assert channels.loc["web", "conversion_rate"] == 1.0 and channels.loc["app", "conversion_rate"] == 0.5
    assert channels.loc["web", "revenue"] == 100 and channels.loc["app", "aov"] == 5
    assert (channels.loc["web", "active_customers"], channels.loc["web", "new_customers"]) == (2, 2)
    assert channels.loc["web", "repeat_rate"] == 0.5 and channels.loc["app", "repeat_rate"] == 0, "C1 bought again on web"
    cohorts = kpis.retention(shop, "week")
    assert cohorts.loc[pd.Timestamp("2025-03-03"), "customers"] == 2
    assert cohorts.loc[pd.Timestamp("2025-03-03"), 1] == 0.5, "C1 of the first cohort (C1, C3) bought again a week later"
    assert np.isnan(cohorts.loc[pd.Timestamp("2025-03-10"), 1]), "a week not yet observed is unknown, not zero"


def test_recommendation_impact_matched_by_id(shop):
    seen = recommendations.impact(shop).iloc[0]
    assert (seen["served"], seen["clicked"], seen["converted"], seen["revenue"]) == (3, 2, 1, 20)
    assert seen["ctr"] == pytest.approx(2 / 3) and seen["conversion_per_click"] == 0.5
    served = pd.DataFrame({"recommendation_id": ["r1", "r2", "r3", "r4", "r5"], "model": ["als", "als", "als", "popular", "popular"]})
    by_model = recommendations.impact(shop, served).set_index("model")
    assert by_model.loc["als", "ctr"] == pytest.approx(2 / 3) and by_model.loc["als", "revenue_per_served"] == pytest.approx(20 / 3)
    assert by_model.loc["popular", "served"] == 2 and by_model.loc["popular", "clicked"] == 0, "a served id never seen back"


HOLDOUT_WEEKS = 13


def _simulate_bgnbd(n: int, rng) -> tuple[pd.DataFrame, dict]:
    """Customers drawn from BG/NBD + Gamma-Gamma with known parameters (time in weeks), with their repeat
    purchases in the HOLDOUT_WEEKS after the calibration period (column `holdout`)."""
    truth = {"r": 0.6, "alpha": 4.0, "a": 1.4, "b": 3.0, "p": 4.0, "q": 3.0, "v": 20.0}
    lam, drop = rng.gamma(truth["r"], 1 / truth["alpha"], n), rng.beta(truth["a"], truth["b"], n)
    nu, horizon = rng.gamma(truth["q"], 1 / truth["v"], n), rng.uniform(20, 52, n)
    rows = []
    for i in range(n):
        t, x, tx, spend, later = 0.0, 0, 0.0, [], 0
        while (t := t + rng.exponential(1 / lam[i])) <= horizon[i] + HOLDOUT_WEEKS:
            if t > horizon[i]:
                later += 1
            else:
                x, tx = x + 1, t
                spend.append(rng.gamma(truth["p"], 1 / nu[i]))
            if rng.random() < drop[i]:
                break
        rows.append((x, tx, horizon[i], np.mean(spend) if spend else 0.0, later))
    return pd.DataFrame(rows, columns=["x", "t_x", "T", "m", "holdout"]), truth


def test_bgnbd_and_gamma_gamma_recover_simulated_parameters():
    summary, truth = _simulate_bgnbd(4000, np.random.default_rng(0))
    model = cltv.CLTVModel.fit(summary)
    r, alpha, a, b = model.bgnbd
    assert r == pytest.approx(truth["r"], rel=0.1) and alpha == pytest.approx(truth["alpha"], rel=0.15)
    assert a / (a + b) == pytest.approx(truth["a"] / (truth["a"] + truth["b"]), rel=0.2), "mean dropout probability"
    p, q, v = model.gamma_gamma
    assert p * v / (q - 1) == pytest.approx(truth["p"] * truth["v"] / (truth["q"] - 1), rel=0.1), "mean spend per purchase"
    predicted = model.expected_purchases(summary, HOLDOUT_WEEKS)
    assert predicted.sum() == pytest.approx(summary["holdout"].sum(), rel=0.05), \
        "on data that follows the model, the holdout purchases are predicted without bias"
    with pytest.raises(ValueError, match="at least 20 buyers"):
        cltv.CLTVModel.fit(summary.head(5))


def test_ab_statistics_match_textbook_formulas():
    treated = pd.DataFrame({"converted": [True] * 200 + [False] * 800, "revenue": [10.0] * 200 + [0.0] * 800})
    control = pd.DataFrame({"converted": [True] * 25 + [False] * 225, "revenue": [10.0] * 25 + [0.0] * 225})
    r = experiments.compare(treated, control, control_share=0.2, confidence=0.95)
    assert r["lift"] == pytest.approx(0.1) and r["relative_lift"] == pytest.approx(1.0)
    wald = 1.959964 * np.sqrt(0.2 * 0.8 / 1000 + 0.1 * 0.9 / 250)
    assert r["lift_low"] < 0.1 < r["lift_high"] and r["lift_high"] - r["lift_low"] != pytest.approx(2 * wald, rel=1e-3), \
        "Newcombe's interval, not Wald's"
    chi2 = stats.chi2_contingency([[200, 800], [25, 225]], correction=False)
    assert r["lift_p"] == pytest.approx(chi2.pvalue, rel=1e-6), "pooled z-test = 2x2 chi-square without correction"
    assert r["rpc_lift"] == pytest.approx(1.0) and r["incremental_revenue"] == pytest.approx(1000.0)
    assert r["incremental_conversions"] == pytest.approx(100.0) and r["srm_p"] == pytest.approx(1.0)
    assert experiments.compare(treated, control.head(150), 0.2, 0.95)["srm_p"] < 0.001, "1000 vs 150 is not a 80/20 split"


@pytest.fixture(scope="module")
def two_years(tmp_path_factory):
    """Two years of generated history, with one campaign's control group half lost (a sample-ratio mismatch)."""
    from propel.demo.generate import generate
    from propel.config import Workspace

    root = tmp_path_factory.mktemp("two_years")
    generate(root / "raw", customers=2000, days=730, seed=5)
    path = root / "raw" / "campaign_touches.csv"
    touches = pd.read_csv(path)
    lost = touches[(touches["campaign_id"] == "CMP0003") & (touches["group"] == "control")].iloc[::2].index
    touches.drop(index=lost).to_csv(path, index=False)
    ws = Workspace.resolve(root / "ws")
    ingest(root / "raw", ws)
    return ws, root / "raw" / "_truth"


def test_cltv_predicts_a_holdout_period(two_years):
    ws, _ = two_years
    check = cltv.check(Lake(ws).connect(), holdout_days=90)
    assert check.holdout_days == 90 and check.customers > 1000
    # The generator's customers buy less as they age (engagement halves in ~240 days, down to a quarter)
    # and their churn hazard grows with age; BG/NBD assumes a constant rate while alive, so it over-predicts
    # (4,000 generated customers x 2 years, seed 8: x1.06 over 30 days, x1.17 over 90, x1.21 over 180;
    # x1.48 for customers signed up before the data began, x1.08 for newer ones). With the decay switched off
    # in the generator the 90-day ratio is 1.06 (1.01 for newer customers); on data drawn from the model
    # itself it is unbiased (test above). A unit or likelihood bug is off by multiples.
    assert 0.75 < check.ratio < 1.35, f"predicted {check.predicted_purchases:.0f} vs actual {check.actual_purchases} purchases"
    assert 0.75 < check.predicted_revenue / check.actual_revenue < 1.45
    assert check.correlation > 0.5
    freq = check.by_frequency.set_index("x")
    assert freq["predicted"].is_monotonic_increasing and freq.loc[5, "actual"] > 3 * freq.loc[0, "actual"], \
        "frequent buyers are predicted and seen to buy more"
    _, values = cltv.estimate(Lake(ws).connect(), days=365)
    assert (values["cltv"] >= 0).all() and values["p_alive"].between(0, 1).all()
    channels = cltv.by_acquisition_channel(Lake(ws).connect(), values)
    assert set(channels.index) <= {"web", "app", "store"} and channels["customers"].sum() == len(values)
    assert channels["total_cltv"].sum() == pytest.approx(values["cltv"].sum())


def test_ab_tests_cover_the_true_lift_and_flag_the_broken_split(two_years):
    ws, truth_dir = two_years
    table = experiments.ab_tests(ws)
    campaigns = table[table["level"] == "campaign"].set_index("key")
    assert campaigns.loc["CMP0003", "srm"], "half the control group lost is a sample-ratio mismatch"
    assert not campaigns.drop(index="CMP0003")["srm"].any()
    effects = pd.read_parquet(truth_dir / "treatment_effects.parquet")
    true_lift = effects[effects["group"] == "treatment"].assign(d=lambda e: e.p_treated - e.p_control).groupby("campaign_id")["d"].mean()
    covered = (campaigns["lift_low"] <= true_lift) & (true_lift <= campaigns["lift_high"])
    assert covered.mean() >= 0.85, f"95% intervals cover the planted lift for only {covered.mean():.0%} of campaigns"
    cuped = (campaigns["lift_cuped_low"] <= true_lift) & (true_lift <= campaigns["lift_cuped_high"])
    assert cuped.mean() >= 0.85, f"CUPED intervals cover the planted lift for only {cuped.mean():.0%} of campaigns"
    assert campaigns["lift_variance_reduction"].between(0, 1).all() and campaigns["lift_variance_reduction"].median() > 0.01
    assert (campaigns["lift_p_adjusted"] >= campaigns["lift_cuped_p"] - 1e-12).all(), "BH never lowers a p-value"
    undecided = campaigns[campaigns["verdict"].str.startswith("no verdict")]
    assert len(undecided) and (campaigns["verdict"].isin(["lift", "loss"]) | campaigns.index.isin(undecided.index)).all()
    assert (undecided["mde"] > 0).all() and undecided["verdict"].str.contains("detects only lifts of").all()
    channels = table[table["level"] == "channel"].set_index("key")
    assert set(channels.index) == set(campaigns["channel"]) and (channels["treated"] > 1000).all()
    assert (campaigns["net"] == campaigns["incremental_revenue"] - campaigns["cost"]).all()
