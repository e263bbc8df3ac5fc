"""Recommenders: ranking metrics, the temporal split, serving rules (filters, exclusions, cold start,
exploration, fold-in) and the registered model in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from propel.demo.oracle import Oracle
from propel.lake.ingest import ingest
from propel.lake.tables import Lake
from propel.config import RecommendSettings, Workspace
from tests.helpers import FAST_TRAIN, write
from propel.training import recommender, registry
from propel.training.interactions import (DAY, holdout, latest_items, leave_last_out, load_events, temporal_split,
                                          validation_split)
from propel.training.rank_metrics import all_metrics, ranking_metrics
from propel.training.rec_models import ALS, Popularity
from propel.training.recommender_model import load_recommender
from propel.training.topk import NormOrder, top_k, top_k_rows

EVENTS = "event_id,ts,identity_type,identity_value,customer_id,channel,event_type,item_id,quantity,revenue,session_id"


def test_ranking_metrics_match_hand_computed_values():
    top = np.array([[3, 1, 5, 0], [2, 1, -1, -1], [3, 1, -1, -1]])
    relevant = sp.csr_matrix(np.array([[1, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]]))
    m = ranking_metrics(top, relevant, 4)
    # customer 0: hits at ranks 2 and 4 of 3 relevant; customer 1: a hit at rank 1 of 1; customer 2 has none (skipped)
    ndcg0 = (1 / np.log2(3) + 1 / np.log2(5)) / (1 + 1 / np.log2(3) + 1 / np.log2(4))
    assert m["ndcg_at_4"] == pytest.approx((ndcg0 + 1) / 2)
    assert m["recall_at_4"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["precision_at_4"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert m["map_at_4"] == pytest.approx(((1 / 2 + 2 / 4) / 3 + 1) / 2)
    assert m["hit_rate_at_4"] == 1.0
    assert ranking_metrics(top, relevant, 2)["ndcg_at_2"] == pytest.approx(((1 / np.log2(3)) / (1 + 1 / np.log2(3)) + 1) / 2)
    popularity = np.array([10, 50, 30, 20, 0, 40])  # ranks: item1 1, item5 2, item2 3, item3 4, item0 5, item4 6
    c = all_metrics(top, relevant, popularity, ks=(4,))
    assert c["coverage_at_4"] == pytest.approx(5 / 6)
    assert c["pop_rank_at_4"] == pytest.approx((4 + 1 + 2 + 5 + 3 + 1 + 4 + 1) / 8)


def test_top_k_is_exact_and_skips_blocked_items():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal(50_000).astype(np.float32)
    scores[rng.choice(50_000, 1000, replace=False)] = -np.inf
    assert top_k(scores, 10).tolist() == np.argsort(-scores, kind="stable")[:10].tolist()
    few = np.full(100, -np.inf)
    few[[7, 3]] = [1.0, 2.0]
    assert top_k(few, 5).tolist() == [3, 7]


def test_equal_scores_are_ranked_by_index_everywhere():
    """Ties (popularity counts, item-kNN zeros) rank like a stable sort in every top-k path, so a batch
    export and a single request give the same list."""
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 3, (50, 400)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.2] = -np.inf
    stable = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    assert np.array_equal(top_k_rows(scores, 10), stable)
    assert all(top_k(row, 10).tolist() == stable[r].tolist() for r, row in enumerate(scores))
    factors = np.ones((400, 1), np.float32)  # equal norms and equal scores: norm order is item order
    search = NormOrder(factors, np.arange(400), np.zeros(400, int))
    top, _ = search.top(np.ones((3, 1), np.float32), 10)
    assert top.tolist() == [list(range(10))] * 3 == [search.top_one(np.ones(1, np.float32), 10)[0].tolist()] * 3


def test_norm_ordered_search_equals_a_full_sort():
    rng = np.random.default_rng(1)
    factors = (rng.standard_normal((5000, 16)) * rng.gamma(1, 1, (5000, 1))).astype(np.float32)
    states = rng.standard_normal((300, 16)).astype(np.float32)
    items, groups = np.flatnonzero(rng.random(5000) < 0.95), rng.integers(0, 5, 5000)
    seen = sp.random(300, 5000, density=0.003, format="csr", random_state=2)
    search = NormOrder(factors, items, groups)
    for allowed, group in ((None, None), (rng.random(5000) < 0.5, None), (rng.random(5000) < 0.1, None),
                           ((groups == 3) & (rng.random(5000) < 0.7), 3)):
        scores = states @ factors.T
        mask = np.isin(np.arange(5000), items) & (True if allowed is None else allowed)
        scores[:, ~mask] = -np.inf
        coo = seen.tocoo()
        scores[coo.row, coo.col] = -np.inf
        top, best = search.top(states, 10, seen, allowed)
        full = top_k_rows(scores, 10)  # the same items, in the same order; scores equal up to float32 rounding
        assert np.array_equal(top, full)  # (the search's blocked products round differently from one big one)
        np.testing.assert_allclose(best, np.take_along_axis(scores, full, 1), rtol=1e-5)
        for r in range(0, 300, 7):  # a single request's search gives the batch's answer
            assert search.top_one(states[r], 10, seen[r].indices, allowed, group)[0].tolist() == top[r].tolist()


@pytest.fixture
def hand_made(ws, raw):
    """Events before and after a cutoff: end = 2025-03-30 00:00, test_days = 7 -> cutoff 03-23 00:00."""
    write(raw, "items.csv", """
        item_id,category,brand,price,in_stock
        I1,shoes,b,10,true
        I2,shoes,b,20,true
        I3,books,b,5,true
        I4,books,b,50,false
        I5,toys,b,15,true
        I6,toys,b,25,true
        I7,toys,b,30,true
    """)
    write(raw, "events.csv", f"""
        {EVENTS}
        a1,2025-03-01T10:00:00Z,,,A,web,product_view,I1,,,s1
        a2,2025-03-05T10:00:00Z,,,A,store,purchase,I2,1,20,
        a3,2025-03-26T10:00:00Z,,,A,web,product_view,I2,,,s2
        a4,2025-03-27T10:00:00Z,,,A,web,product_view,I3,,,s2
        b1,2025-03-02T10:00:00Z,,,B,web,product_view,I1,,,s3
        b2,2025-03-28T10:00:00Z,,,B,web,add_to_cart,I4,,,s4
        c1,2025-03-29T10:00:00Z,,,C,web,product_view,I1,,,s5
        d1,2025-03-22T23:59:59Z,,,D,web,product_view,I5,,,s6
        e1,2025-03-10T10:00:00Z,,,E,web,product_view,I5,,,s7
        e2,2025-03-23T00:00:00Z,,,E,web,product_view,I6,,,s7
        e3,2025-03-23T00:00:01Z,,,E,web,page_view,,,,s7
    """)
    ingest(raw, ws, now=datetime(2025, 4, 1, tzinfo=timezone.utc))
    return ws


def test_temporal_split_never_leaks_future_interactions(hand_made):
    cfg = RecommendSettings(test_days=7, cold_start_max_items=1)
    events = load_events(Lake(hand_made).connect(), cfg)
    split = temporal_split(events, cfg)
    cutoff = datetime(2025, 3, 23, tzinfo=timezone.utc).timestamp()
    assert split.cutoff == cutoff and split.end == cutoff + 7 * DAY
    assert (split.train.ts < cutoff).all() and len(split.train.ts) == (events.ts < cutoff).sum()
    cust, item = {c: i for i, c in enumerate(events.customers)}, {c: i for i, c in enumerate(events.items)}
    train = {(events.customers[u], events.items[i]) for u, i in zip(*split.train.matrix.nonzero())}
    assert train == {("A", "I1"), ("A", "I2"), ("B", "I1"), ("D", "I5"), ("E", "I5")}
    assert split.train.matrix[cust["A"], item["I2"]] == 5.0, "a purchase weighs 5"
    got = {events.customers[u]: sorted(events.items[split.relevant[r].indices]) for r, u in enumerate(split.test_users)}
    # A's I2 was seen before the cutoff: not a hit; the event at exactly the cutoff is test; D has nothing new
    assert got == {"A": ["I3"], "B": ["I4"], "C": ["I1"], "E": ["I6"]}
    cold = dict(zip(events.customers[split.test_users], split.cold))
    assert cold == {"A": False, "B": True, "C": True, "E": True}
    seen = dict(zip(events.customers[split.test_users], split.seen))
    assert sorted(events.items[seen["A"].indices]) == ["I1", "I2"]
    repeats = temporal_split(events, RecommendSettings(test_days=7, repeat_relevant=True))
    a = list(events.customers[repeats.test_users]).index("A")
    assert sorted(events.items[repeats.relevant[a].indices]) == ["I2", "I3"] and repeats.seen.nnz == 0


def test_latest_items_are_each_customers_last_share_of_distinct_items():
    # customer 0: first contacts with items 3, 1, then 3 again, then 2; customer 1: items 0, 0, 1
    user, item = np.array([0, 0, 0, 0, 1, 1, 1]), np.array([3, 1, 3, 2, 0, 0, 1])
    assert latest_items(user, item, 3, 4, 0.2).tolist() == [False, False, False, True, False, False, True]
    # half of 3 items rounds up to 2: from the first contact with item 1 on, the repeat of item 3 included
    assert latest_items(user, item, 3, 4, 0.5).tolist() == [False, True, True, True, False, False, True]
    assert not latest_items(user, item, 3, 4, 0.99)[[0, 4, 5]].any(), "never a customer's every item"
    assert not latest_items(np.zeros(3, int), np.array([2, 2, 2]), 1, 3, 0.5).any(), "one item: nothing to hold out"


def test_leave_last_out_tests_each_customers_latest_items_and_trains_on_the_rest(hand_made):
    cfg = RecommendSettings(test_days=7, cold_start_max_items=1)
    events = load_events(Lake(hand_made).connect(), cfg)
    split, why = holdout(events, cfg)
    assert split.protocol == "leave_last_out" and why == "auto: only 4 customers have new items in the last 7 days (fewer than 100)"
    pairs = lambda m: {(events.customers[u], events.items[i]) for u, i in zip(*m.nonzero())}  # noqa: E731
    # A: I1, I2 (bought, viewed again), then I3 - the latest of 3 items is held out; C and D have one item each
    assert pairs(split.train.matrix) == {("A", "I1"), ("A", "I2"), ("B", "I1"), ("C", "I1"), ("D", "I5"), ("E", "I5")}
    got = {events.customers[u]: sorted(events.items[split.relevant[r].indices]) for r, u in enumerate(split.test_users)}
    assert got == {"A": ["I3"], "B": ["I4"], "E": ["I6"]}
    assert dict(zip(events.customers[split.test_users], split.cold)) == {"A": False, "B": True, "E": True}
    assert split.popularity[[events.items.tolist().index(i) for i in ("I1", "I5", "I2")]].tolist() == [3, 2, 1]
    valid = validation_split(events, split, cfg)  # the same cut inside the training part: A's I2, nothing of the test
    assert {events.customers[u]: sorted(events.items[valid.relevant[r].indices]) for r, u in enumerate(valid.test_users)} \
        == {"A": ["I2"]}
    assert pairs(valid.train.matrix) == {("A", "I1"), ("B", "I1"), ("C", "I1"), ("D", "I5"), ("E", "I5")}
    half = leave_last_out(events, RecommendSettings(holdout_share=0.5))  # A's I2 and I3: the purchase is the cut
    assert sorted(events.items[half.relevant[list(events.customers[half.test_users]).index("A")].indices]) == ["I2", "I3"]
    assert holdout(events, RecommendSettings(test_days=7, protocol="temporal"))[0].protocol == "temporal"


def test_exploration_mixes_in_new_items_flagged(hand_made):
    cfg = RecommendSettings(test_days=7, exploration_share=0.2)
    events = load_events(Lake(hand_made).connect(), cfg)
    split = temporal_split(events, cfg)
    rec = recommender.package(Popularity(split.popularity), events, split, cfg)
    got = rec.recommend("B", k=5)
    # the model knows I1, I2, I5 (interactions before the cutoff); I3, I6 (test window only) and I7 (none)
    # are new to it; I4 is out of stock
    assert got.items[:3] == ["I1", "I5", "I2"] and got.explored == [False, False, False, True]
    assert got.items[-1] in {"I3", "I6", "I7"} and got.scores[-1] == 0.0
    assert rec.recommend("B", k=5).items == got.items, "the explored item is stable per customer"
    a = rec.recommend("A", k=4)
    assert a.items == ["I1", "I5"] and not any(a.explored), "A bought I2; 0.2 x 4 slots rounds down to none"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, generated):
    ws = Workspace.resolve(tmp_path_factory.mktemp("rec") / "ws")
    ingest(generated, ws)
    ws.config_file.write_text(FAST_TRAIN)
    result = recommender.train(ws, oracle=Oracle(generated / "_truth"))
    return ws, result


def test_training_logs_every_model_and_registers_a_champion(trained):
    ws, result = trained
    assert result.promoted and result.task == "recommender"
    run = registry.tracking(ws).get_run(result.run_id)
    for model in ("popular", "random", "itemknn_cosine", "itemknn_bm25", "als", "bpr", "sequence"):
        for k in (10, 20):
            for m in ("ndcg", "recall", "precision", "map", "hit_rate", "coverage", "pop_rank"):
                assert f"{model}_{m}_at_{k}" in run.data.metrics
        assert f"{model}_cold_ndcg_at_10" in run.data.metrics
    assert run.data.metrics["ndcg_at_10"] > run.data.metrics["random_ndcg_at_10"]
    assert run.data.params["protocol"] == "temporal", "dense data keeps the temporal holdout"
    assert "oracle_ndcg_at_10" in run.data.metrics
    table = pd.read_csv(registry.tracking(ws).download_artifacts(result.run_id, "tables/model_comparison.csv"))
    assert len(table) == 7 and table.loc[table["ndcg_at_10"].idxmax(), "model"] != "random"


def test_filters_and_exclusions_hold(trained):
    rec, _ = load_recommender(trained[0])
    buyer = rec.customers[np.argmax(np.diff(rec.purchased.indptr))]
    bought = set(rec.items[rec.purchased[rec.customers.tolist().index(buyer)].indices])
    got = rec.recommend(buyer, k=20)
    assert got.fallback is None and len(got.items) == 20 and not bought & set(got.items)
    catalog = pd.DataFrame({"category": rec.categories[rec.category], "price": rec.price, "in_stock": rec.in_stock},
                           index=rec.items)
    assert catalog.loc[got.items, "in_stock"].all()
    category = catalog["category"].value_counts().index[0]
    got = rec.recommend(buyer, k=10, category=category, min_price=10, max_price=60, exclude=[got.items[0]])
    assert got.items and (catalog.loc[got.items, "category"] == category).all()
    assert catalog.loc[got.items, "price"].between(10, 60).all() and not bought & set(got.items)
    allowed = list(catalog.index[:30])
    assert set(rec.recommend(buyer, k=10, allowed_items=allowed).items) <= set(allowed)
    assert rec.recommend(buyer, k=10, category="no-such-category").items == []


def test_unknown_customer_falls_back_to_popular_items(trained):
    rec, _ = load_recommender(trained[0])
    got = rec.recommend("someone-new", k=5)
    assert got.fallback == "unknown_customer" and got.model == "popular"
    order = [rec.items[i] for i in np.argsort(-np.where(rec.rankable, rec.popularity, -np.inf), kind="stable")[:5]]
    assert got.items == order
    category = rec.categories[rec.category[rec.rankable]][0]
    in_category = rec.recommend(None, k=5, category=category)
    assert in_category.fallback == "unknown_customer"
    assert all(rec.categories[rec.category[rec.items.tolist().index(i)]] == category for i in in_category.items)
    assert not rec.knows_customer("someone-new") and rec.knows_customer(rec.customers[0])
    with pytest.raises(KeyError):
        rec.similar_items("no-such-item")
    similar = rec.similar_items(got.items[0], k=5)
    assert len(similar) == 5 and got.items[0] not in [i for i, _ in similar]


def test_fold_in_moves_recommendations_toward_fresh_interactions(trained):
    rec, _ = load_recommender(trained[0])
    categories = pd.Series(rec.categories[rec.category], index=rec.items)
    customer = rec.customers[np.argmin(np.abs(np.diff(rec.histories.weights.indptr) - 8))]  # 8 items so far
    before = rec.recommend(customer, k=10)
    target = min(rec.categories, key=lambda c: (categories[before.items] == c).sum())  # least recommended
    popular_there = [i for i in rec.items[np.argsort(-rec.popularity)] if categories[i] == target][:4]
    after = rec.recommend(customer, k=10, fresh_items=popular_there)
    assert (categories[after.items] == target).sum() > (categories[before.items] == target).sum()
    assert after.fallback is None and after.model == rec.model.name


def test_registered_model_gives_the_same_top_k_in_a_fresh_process(trained):
    ws = trained[0]
    rec, version = load_recommender(ws)
    ids = [*rec.customers[:50].tolist(), "someone-new"]
    here = rec.batch(ids, k=10)
    code = ("import json, sys; from propel.config import Workspace; from propel.training.recommender_model import load_recommender; "
            "rec, v = load_recommender(Workspace.resolve(sys.argv[1])); "
            "print(json.dumps({'v': v, 'rows': rec.batch(json.loads(sys.argv[2]), k=10)[['customer_id', 'item_id']].values.tolist()}))")
    out = subprocess.run([sys.executable, "-c", code, str(ws.root), json.dumps(ids)], capture_output=True, text=True,
                         check=True, timeout=120)
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    assert fresh["v"] == version and fresh["rows"] == here[["customer_id", "item_id"]].values.tolist()
    for c in ids[:5]:  # batch and recommend() agree
        assert here[here["customer_id"] == c]["item_id"].tolist() == rec.recommend(c, k=10).items


def test_champion_scored_through_its_package_matches_the_logged_metric(trained):
    """The champion/challenger comparison scores the registered package on the new split: on the same
    data it must reproduce the winner's logged NDCG@10 (same fold-in, same masks)."""
    ws, result = trained
    rec, _ = load_recommender(ws)
    cfg, seed = ws.settings().recommend, ws.settings().train.seed
    events = load_events(Lake(ws).connect(), cfg)
    split = temporal_split(events, cfg, seed=seed)
    metrics, _ = recommender.evaluate(recommender.champion_scorer(rec, events.items), split, rec.model.seq_len)
    assert metrics["ndcg_at_10"] == pytest.approx(result.metrics["ndcg_at_10"], rel=1e-4)


def test_als_fold_in_equals_recalculated_user_factors(trained):
    ws = trained[0]
    cfg = ws.settings().recommend
    events = load_events(Lake(ws).connect(), cfg)
    split = temporal_split(events, cfg)
    als = ALS(16, 0.5, 10.0, 10).fit(split.train, cfg, seed=1)
    h = split.train.histories(np.arange(20))
    state = als.state(h)
    # implicit's own half-step from the same confidences gives the same factors
    from implicit.cpu.als import AlternatingLeastSquares

    ref = AlternatingLeastSquares(factors=16, regularization=0.5, alpha=10.0)
    ref.item_factors = als.item_factors
    conf = h.weights.copy()
    conf.data = np.log1p(conf.data)
    expected = ref.recalculate_user(np.arange(20), sp.csr_matrix(conf, dtype=np.float32))
    assert np.allclose(state, expected, atol=1e-4)
    one = als.state(split.train.histories(np.arange(3, 4)))  # a single request's fold-in takes the NumPy path
    assert np.allclose(one[0], expected[3], atol=1e-4)
