"""Attribution: exact credit on hand-built paths, path building from the lake, channel ranking on generated data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from propel.analytics.attribution import MODELS, attribute, markov, rank_correlation, rule_credits, shapley_credits, touches
from propel.lake.ingest import ingest
from propel.lake.tables import Lake
from propel.cli import app
from tests.helpers import NOW, write

DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2025-03-01")


def _paths(*paths) -> pd.DataFrame:
    """Touch rows from (path_id, [(channel, days before the order), ...], converted, revenue) tuples."""
    rows = []
    for path_id, steps, converted, revenue in paths:
        for channel, before in steps:
            kind = "holdout" if channel.startswith("holdout:") else "send"
            rows.append({"path_id": path_id, "customer_id": path_id, "ts": T0 - before * DAY,
                         "channel": channel.removeprefix("holdout:"), "campaign": "K-" + channel.removeprefix("holdout:"),
                         "kind": kind, "converted": converted, "order_ts": T0 if converted else pd.NaT,
                         "revenue": revenue if converted else 0.0, "first_order": converted})
    return pd.DataFrame(rows).sort_values(["path_id", "ts"], kind="stable").reset_index(drop=True)


def _by_channel(t: pd.DataFrame, credit: pd.DataFrame) -> pd.DataFrame:
    return credit.groupby(t["channel"]).sum()


def test_rule_based_models_give_known_credit():
    t = _paths(("p1", [("A", 10), ("B", 6), ("C", 3), ("A", 0)], True, 100.0),
               ("p2", [("B", 2)], True, 40.0),
               ("p3", [("C", 5), ("A", 1)], False, 0.0))
    credit = rule_credits(t, "channel", half_life_days=3)
    by = _by_channel(t, credit)
    assert by.loc["A", "last_touch"] == 1 and by.loc["B", "last_touch"] == 1 and by.loc["C", "last_touch"] == 0
    assert by.loc["A", "first_touch"] == 1 and by.loc["B", "first_touch"] == 1
    assert by.loc["A", "linear"] == pytest.approx(0.5) and by.loc["B", "linear"] == pytest.approx(1.25)
    assert by.loc["A", "position"] == pytest.approx(0.8) and by.loc["C", "position"] == pytest.approx(0.1)
    w = 2.0 ** -(np.array([10, 6, 3, 0]) / 3)
    assert by.loc["A", "time_decay"] == pytest.approx((w[0] + w[3]) / w.sum())
    assert by.loc["C", "time_decay"] == pytest.approx(w[2] / w.sum())
    assert by.loc["A", "linear_distinct"] == pytest.approx(1 / 3) and by.loc["B", "linear_distinct"] == pytest.approx(1 + 1 / 3)
    assert credit[~t["converted"]].to_numpy().sum() == 0, "a path that did not convert gives no credit"
    assert credit.groupby(t["path_id"]).sum().loc[["p1", "p2"]].to_numpy() == pytest.approx(np.ones((2, 6)))


def _game(counts: dict[str, tuple[int, int]]) -> pd.DataFrame:
    """Paths from {channels: (paths, converting)}: e.g. "AB" = touched A then B."""
    paths = []
    for channels, (n, conv) in counts.items():
        paths += [(f"{channels}{i}", [(c, len(channels) - j) for j, c in enumerate(channels)], i < conv, 10.0)
                  for i in range(n)]
    return _paths(*paths)


def test_data_driven_shapley_on_a_known_game():
    # v(A) = 2/10, v(B) = 1/10, v(AB) = 5/10. Shapley on {A, B}: A = (0.2 + (0.5 - 0.1)) / 2 = 0.3,
    # B = (0.1 + (0.5 - 0.2)) / 2 = 0.2: a converting AB path gives A 0.6 and B 0.4.
    t = _game({"A": (10, 2), "B": (10, 1), "AB": (10, 5)})
    credit, error = shapley_credits(t, "channel")
    by = credit.groupby(t["channel"]).sum()
    assert by["A"] == pytest.approx(2 + 5 * 0.6) and by["B"] == pytest.approx(1 + 5 * 0.4) and error == 0
    assert credit.groupby(t["path_id"]).sum()[lambda s: s > 0].to_numpy() == pytest.approx(1.0)
    assert credit[~t["converted"]].sum() == 0
    # the equal split ignores that B converts less on its own
    assert rule_credits(t, "channel", 7)["linear_distinct"].groupby(t["channel"]).sum()["A"] == pytest.approx(4.5)


def test_sampled_shapley_matches_exact_within_its_stated_error(monkeypatch):
    from propel.analytics import attribution

    rng = np.random.default_rng(1)
    players = list("ABCDEFGH")
    v = {frozenset(s for s, keep in zip(players, row) if keep): rng.random()
         for row in (np.arange(256)[:, None] >> np.arange(8)) & 1}
    v[frozenset()] = 0.0  # the empty coalition converts nothing, as in shapley_credits
    exact = attribution._exact_shapley(players, v)
    assert exact.sum() == pytest.approx(v[frozenset(players)]), "efficiency: the values sum to v(all)"
    mean, se = attribution._sampled_shapley(players, v, np.random.default_rng(2))
    assert (np.abs(mean - exact) <= 4 * se).all() and (se > 0).all()
    monkeypatch.setattr(attribution, "EXACT_PLAYERS", 1)
    t = _game({"A": (10, 2), "B": (10, 1), "AB": (10, 5)})
    credit, error = shapley_credits(t, "channel")
    assert 0 < error < 0.05, "sampling states its error"
    assert credit.groupby(t["channel"]).sum()["A"] == pytest.approx(5.0, abs=5 * 5 * error)


def test_two_touch_position_split_is_half_and_half():
    t = _paths(("p", [("A", 4), ("B", 1)], True, 10.0))
    assert _by_channel(t, rule_credits(t, "channel", 7))["position"].tolist() == [0.5, 0.5]


def test_markov_removal_effect_on_a_known_chain():
    # start->A 2/3, start->B 1/3; A->B 1/2, A->null 1/2; B->conversion 1. P(conv) = 2/3; without A 1/3
    # (removal effect 1/2), without B 0 (effect 1): shares 1/3 and 2/3 of the two conversions.
    t = _paths(("p1", [("A", 3), ("B", 1)], True, 30.0), ("p2", [("B", 1)], True, 60.0), ("p3", [("A", 2)], False, 0.0))
    m = markov(t, "channel").set_index(["model", "key"])
    assert m.loc[("markov", "A"), "conversions"] == pytest.approx(2 / 3)
    assert m.loc[("markov", "B"), "conversions"] == pytest.approx(4 / 3)
    assert m.loc[("markov", "B"), "revenue"] == pytest.approx(60.0)  # revenue: the same chain with revenue as reward
    assert np.isnan(m.loc[("markov_incremental", "A"), "conversions"]), "no control group, no incremental estimate"


def test_incremental_markov_uses_the_control_group_as_counterfactual():
    # Treated: 1 of 2 converts; held out: 0 of 2. One incremental conversion, worth its 50.
    t = _paths(("t1", [("A", 1)], True, 50.0), ("t2", [("A", 1)], False, 0.0),
               ("c1", [("holdout:A", 1)], False, 0.0), ("c2", [("holdout:A", 1)], False, 0.0))
    m = markov(t, "channel").set_index(["model", "key"])
    assert m.loc[("markov_incremental", "A"), "conversions"] == pytest.approx(1.0)
    assert m.loc[("markov_incremental", "A"), "revenue"] == pytest.approx(50.0)
    assert m.loc[("markov", "A"), "conversions"] == pytest.approx(1.0), "classic Markov credits every touched conversion"
    same = _paths(("t1", [("A", 1)], True, 50.0), ("t2", [("A", 1)], False, 0.0),
                  ("c1", [("holdout:A", 1)], True, 50.0), ("c2", [("holdout:A", 1)], False, 0.0))
    assert markov(same, "channel").set_index(["model", "key"]).loc[("markov_incremental", "A"), "conversions"] == pytest.approx(0)


EVENTS = """
event_id,ts,customer_id,channel,event_type,campaign_id,revenue,quantity,session_id
e1,2025-03-02T10:00:00Z,C1,email,email_click,K1,,,
e2,2025-03-05T10:00:00Z,C1,web,purchase,,20,1,s1
e3,2025-03-05T10:01:00Z,C1,web,purchase,,30,1,s1
e4,2025-03-10T10:00:00Z,C1,email,email_open,K1,,,
e5,2025-04-29T10:00:00Z,C1,store,purchase,,15,1,s2
e6,2025-03-04T10:00:00Z,C2,app,purchase,,25,1,s3
e7,2025-04-10T10:00:00Z,C2,search,ad_click,,,,
e8,2025-03-02T10:00:00Z,C3,email,email_open,K1,,,
e9,2025-03-20T10:00:00Z,C3,sms,sms_click,K2,,,
"""


@pytest.fixture
def tiny(ws, raw):
    write(raw, "customers.csv", "customer_id,signup_at\nC1,2025-01-01\nC2,2025-01-01\nC3,2025-01-01")
    write(raw, "campaigns.csv", "campaign_id,channel,start_at,end_at,cost,offer_type\n"
          "K1,email,2025-03-01,2025-03-08,100,bundle\nK2,sms,2025-03-03,2025-03-10,50,bundle")
    write(raw, "campaign_touches.csv", "campaign_id,customer_id,sent_at,group\n"
          "K1,C1,2025-03-01T09:00:00Z,treatment\nK2,C1,2025-03-03T09:00:00Z,treatment\nK1,C2,2025-03-01T09:00:00Z,control")
    write(raw, "events.csv", EVENTS)
    ingest(raw, ws, now=NOW)
    return ws


def test_paths_from_the_lake(tiny):
    t = touches(Lake(tiny).connect(), lookback_days=30)
    paths = {p: g for p, g in t.groupby("path_id")}
    c1 = paths["C1/s1"]  # two purchase lines of one session are one order
    assert c1[["channel", "kind"]].values.tolist() == [["email", "send"], ["email", "email_click"], ["sms", "send"]]
    assert c1["converted"].all() and c1["revenue"].eq(50).all() and c1["first_order"].all()
    assert paths["C1/open/s2/0"][["kind", "converted"]].values.tolist() == [["email_open", False]], \
        "a touch whose next order is more than the lookback away opens a non-converting path"
    assert paths["C3/open/end/0"]["channel"].tolist() == ["email", "sms"]
    split = touches(Lake(tiny).connect(), lookback_days=10).groupby("path_id")["channel"].agg(list).to_dict()
    assert split["C3/open/end/0"] == ["email"] and split["C3/open/end/1"] == ["sms"], \
        "a non-converting path spans at most the lookback, like a converting one"
    assert paths["C2/s3"]["kind"].tolist() == ["holdout"], "control members carry a holdout pseudo-touch"
    assert "search" not in set(t["channel"]), "a touch younger than the lookback at the end of the data is left out"


def test_attribution_table_and_costs(tiny):
    result = attribute(tiny, lookback_days=30, half_life_days=7)
    assert (result.paths, result.converting_paths, result.organic_orders) == (3, 1, 2)
    side = result.side_by_side()
    assert list(side.columns) == [*MODELS, "cost", "sends"]
    assert side.loc["sms", "last_touch"] == 1 and side.loc["email", "first_touch"] == 1
    assert side.loc["email", "linear"] == pytest.approx(2 / 3)
    assert side.loc["email", "cost"] == 100 and side.loc["sms", "sends"] == 1
    row = result.table.set_index(["model", "level", "key"]).loc[("linear", "channel", "email")]
    assert row["revenue"] == pytest.approx(100 / 3)
    assert row["roi"] == pytest.approx((100 / 3 - 100) / 100)
    assert row["cac"] == pytest.approx(150.0), "cost per attributed first order"
    campaign = result.side_by_side("campaign")
    assert campaign.loc["K2", "last_touch"] == 1 and campaign.loc["K1", "cost"] == 100


def test_cli_prints_and_saves_the_table(tiny):
    out = CliRunner().invoke(app, ["--workspace", str(tiny.root), "attribution", "--lookback-days", "30"])
    assert out.exit_code == 0, out.output
    assert "markov_incremental" in out.output and "email" in out.output
    saved = pd.read_csv(tiny.reports / "attribution.csv")
    assert {"model", "level", "key", "conversions", "revenue", "cost", "roi", "cac"} <= set(saved.columns)


# The generator's default channel effects are too close to rank at test size: the true mean lift per
# message (_truth/treatment_effects) is about sms 2.3-2.8, email 1.9, push 1.1, social 0.6 points, and
# even the randomised treated-vs-control difference per channel, the best any estimator can do, has a
# standard error of 0.5-0.8 points at 4,000 customers x 2 years; it put the four channels in the wrong
# order on 3 of 3 seeds (8, 9, 10), as did every attribution model. At demo size (20,000 x 1 year, seeds
# 7-9, 7-day lookback) both Markov models rank them right, but that takes minutes to generate. A
# scenario with the same order and wider gaps is ranked right by both Markov models (and the rule-based
# ones) on seeds 8 and 9 tried.
SCENARIO = {"sms": 6.0, "email": 3.0, "push": 1.5, "social": 0.0}


@pytest.mark.slow  # generates and ingests its own year of data
def test_markov_models_rank_channels_by_true_effect(tmp_path, monkeypatch):
    from propel.demo import generate as gen
    from propel.demo.oracle import Oracle
    from propel.config import Workspace

    monkeypatch.setattr(gen, "CHANNEL_EFFECT", SCENARIO)
    raw = tmp_path / "raw"
    gen.generate(raw, customers=4000, days=730, seed=8)
    ws = Workspace.resolve(tmp_path / "ws")
    ingest(raw, ws)
    truth = json.loads((raw / "_truth" / "channel_effects.json").read_text())
    result = attribute(ws, lookback_days=7)
    side = result.side_by_side()
    ranked = sorted(truth, key=truth.get, reverse=True)
    for model in ("markov", "markov_incremental"):
        per_message = side[model] / side["sends"]
        assert per_message.sort_values(ascending=False).index.tolist() == ranked, model
    channel_of = Lake(ws).connect().execute("SELECT campaign_id, channel FROM campaigns").df().set_index("campaign_id")["channel"]
    rho = rank_correlation(result, Oracle(raw / "_truth").lift_per_send(channel_of))
    assert rho.loc[["shapley", "linear_distinct", "markov", "markov_incremental"]].tolist() == pytest.approx([1.0] * 4), rho
    by_campaign = rank_correlation(result, Oracle(raw / "_truth").lift_per_send(), "campaign")
    assert by_campaign["shapley"] > 0.7, "campaigns ranked by their planted lift (0.90 on this seed)"
    out = CliRunner().invoke(app, ["--workspace", str(ws.root), "attribution", "--truth", str(raw / "_truth")])
    assert out.exit_code == 0 and "Spearman" in out.output and "shapley 1.00" in out.output, out.output
