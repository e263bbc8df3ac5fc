"""Hand-written statistics checked against the reference implementations (test-only dependencies in the
`dev` extra) and published worked examples, on small data each test makes itself."""

from __future__ import annotations

import lifetimes
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import ndcg_score
from sklift import metrics as sklift
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from propel.analytics import cltv, experiments
from propel.training.evaluate import auuc, qini_auc
from propel.training.rank_metrics import ranking_metrics


def _uplift_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    treated = rng.random(n) < 0.6
    y = (rng.random(n) < 0.1 + 0.15 * treated).astype(int)
    return y, treated, rng.normal(size=n) + 0.5 * treated * y


@pytest.mark.filterwarnings("ignore::FutureWarning")  # scikit-uplift calls a deprecated scikit-learn helper
@pytest.mark.parametrize("seed", [0, 1])
def test_qini_and_auuc_match_scikit_uplift(seed):
    y, treated, uplift = _uplift_data(800, seed)
    for scores in (uplift, np.round(uplift, 1)):  # also with ties, which enter the curve together
        assert qini_auc(y, treated, scores) == pytest.approx(sklift.qini_auc_score(y, scores, treated), rel=1e-9)
        assert auuc(y, treated, scores) == pytest.approx(sklift.uplift_auc_score(y, scores, treated), rel=1e-9)
    assert qini_auc(y, treated, y * treated - y * ~treated) == pytest.approx(1.0), "the perfect ranking scores 1"
    assert abs(qini_auc(y, treated, np.zeros(len(y)))) < 1e-12, "one tied score is random targeting: 0"


def test_ndcg_matches_scikit_learn():
    rng = np.random.default_rng(3)
    users, items, k = 40, 30, 10
    relevant = sp.csr_matrix((rng.random((users, items)) < 0.1).astype(float))
    relevant[0, 0] = 1  # every user with something relevant
    scores = rng.random((users, items))
    top = np.argsort(-scores, axis=1)[:, :k]
    mine = ranking_metrics(top, relevant, k)[f"ndcg_at_{k}"]
    keep = np.asarray(relevant.sum(axis=1)).ravel() > 0
    assert mine == pytest.approx(ndcg_score(relevant.toarray()[keep], scores[keep], k=k), rel=1e-12)


def _lifetimes_frame(summary: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"frequency": summary["x"], "recency": summary["t_x"], "T": summary["T"], "monetary_value": summary["m"]})


def test_bgnbd_and_gamma_gamma_match_lifetimes():
    from tests.analytics.test_analytics import _simulate_bgnbd

    summary, _ = _simulate_bgnbd(1500, np.random.default_rng(4))
    mine = cltv.CLTVModel.fit(summary)
    data = _lifetimes_frame(summary)
    bg = lifetimes.BetaGeoFitter().fit(data["frequency"], data["recency"], data["T"])
    assert mine.bgnbd == pytest.approx(bg.params_[["r", "alpha", "a", "b"]].to_numpy(), rel=2e-3)
    expected = bg.conditional_expected_number_of_purchases_up_to_time(13, data["frequency"], data["recency"], data["T"])
    assert mine.expected_purchases(summary, 13) == pytest.approx(expected.to_numpy(), rel=5e-3)
    assert mine.p_alive(summary) == pytest.approx(
        np.asarray(bg.conditional_probability_alive(data["frequency"], data["recency"], data["T"])), rel=5e-3)
    repeat = data[(data["frequency"] > 0) & (data["monetary_value"] > 0)]
    gg = lifetimes.GammaGammaFitter().fit(repeat["frequency"], repeat["monetary_value"])
    assert mine.gamma_gamma == pytest.approx(gg.params_[["p", "q", "v"]].to_numpy(), rel=5e-3)
    spend = gg.conditional_expected_average_profit(repeat["frequency"], repeat["monetary_value"])
    assert mine.expected_value(summary.loc[repeat.index]) == pytest.approx(np.asarray(spend), rel=5e-3)


def _rows(converted: int, n: int, revenue: np.ndarray | None = None) -> pd.DataFrame:
    flags = np.r_[np.ones(converted, bool), np.zeros(n - converted, bool)]
    return pd.DataFrame({"converted": flags, "revenue": flags * 10.0 if revenue is None else revenue})


def test_newcombe_interval_matches_the_published_example_and_statsmodels():
    # Newcombe (1998), Stat Med 17:873, Table II example (a): 56/70 vs 48/80, method 10: 0.0524 to 0.3339.
    r = experiments.compare(_rows(56, 70), _rows(48, 80), control_share=0.5, confidence=0.95)
    assert r["lift"] == pytest.approx(0.2)
    assert (round(r["lift_low"], 4), round(r["lift_high"], 4)) == (0.0524, 0.3339)
    # at a campaign's low rates Wald takes 0 of 100 controls converting as certain; Newcombe's interval does not
    low = experiments.compare(_rows(3, 400), _rows(0, 100), control_share=0.2, confidence=0.95)
    wald = 0.0075 - 1.959964 * np.sqrt(0.0075 * 0.9925 / 400)
    assert low["lift_low"] < wald - 0.02 < 0


def test_welch_revenue_interval_matches_statsmodels():
    rng = np.random.default_rng(6)
    a, b = rng.gamma(0.5, 40, 300), rng.gamma(0.5, 30, 90)
    r = experiments.compare(_rows(30, 300, a), _rows(9, 90, b), control_share=0.2, confidence=0.9)
    compare = CompareMeans(DescrStatsW(a), DescrStatsW(b))
    assert (r["rpc_low"], r["rpc_high"]) == pytest.approx(compare.tconfint_diff(alpha=0.1, usevar="unequal"), rel=1e-9)
    assert r["rpc_p"] == pytest.approx(compare.ttest_ind(usevar="unequal")[1], rel=1e-9)


def test_cuped_reduces_variance_by_the_squared_correlation():
    rng = np.random.default_rng(7)
    n = 4000
    pre = rng.gamma(2.0, 20, n)
    treated = rng.random(n) < 0.8
    revenue = 0.8 * pre + rng.normal(0, 15, n) + 3.0 * treated
    frame = pd.DataFrame({"converted": revenue > 40, "revenue": revenue, "pre_revenue": pre, "pre_converted": pre > 40})
    r = experiments.compare(frame[treated], frame[~treated], control_share=0.2, confidence=0.95)
    rho = np.corrcoef(revenue, pre)[0, 1]
    assert r["rpc_variance_reduction"] == pytest.approx(rho ** 2, abs=0.02) and r["rpc_variance_reduction"] > 0.6
    assert r["rpc_cuped"] == pytest.approx(3.0, abs=1.0), "the adjusted difference is unbiased"
    assert (r["rpc_cuped_high"] - r["rpc_cuped_low"]) < 0.7 * (r["rpc_high"] - r["rpc_low"]), "and more precise"
    assert r["lift_variance_reduction"] > 0.1, "pre-period conversion predicts conversion too"


def test_mde_matches_the_textbook_formula_and_shrinks_with_cuped():
    # two-sided 5%, 80% power: (1.96 + 0.84) x sqrt(p(1-p)(1/nt + 1/nc)) for small effects
    approx = (1.959964 + 0.841621) * np.sqrt(0.03 * 0.97 * (1 / 8000 + 1 / 2000))
    assert experiments.mde(0.03, 8000, 2000, 0.95) == pytest.approx(approx, rel=0.1)
    assert experiments.mde(0.03, 8000, 2000, 0.95, variance_reduction=0.5) < 0.75 * experiments.mde(0.03, 8000, 2000, 0.95)


def test_benjamini_hochberg_and_verdicts():
    table = pd.DataFrame({"level": "campaign", "lift_cuped_p": [0.01, 0.04, 0.03, 0.5], "rpc_cuped_p": [0.5] * 4,
                          "lift_cuped": [0.02, -0.01, 0.01, 0.0], "mde": [0.01, 0.01, 0.01, 0.04]})
    out = experiments.verdicts(table, confidence=0.95)
    assert out["lift_p_adjusted"].tolist() == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])
    assert out["verdict"].tolist()[:2] == ["lift", "no verdict: detects only lifts of +1.0% or more"]
    assert out["verdict"].iloc[3] == "no verdict: detects only lifts of +4.0% or more"
