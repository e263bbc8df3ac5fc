"""The contract every recommender model class keeps (after implicit's RecommenderBase test mixin), on a
deterministic tiny "checkerboard": customer u had every item of u's parity except item u, so item u -
what all of u's look-alikes had - is the one right answer for u, and an item's neighbours share its
parity. Each model is fitted once, packaged as the serving `Recommender`, and checked for output shapes
and types, the held-out diagonal item first, seen items excluded only when asked, fold-in of a customer
it never saw, similar items, batch = request, and a pickle round trip (models travel in MLflow).

Popularity is a candidate champion (the same list for everyone), so it keeps the interface half; the
random model is a floor that never becomes champion and is left out."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from propel.config import RecommendSettings
from propel.training.interactions import DAY, Events
from propel.training.recommender_model import Recommender
from propel.training.rec_models import ALS, BPR, ItemKNN, Popularity
from propel.training.sequence_model import SequenceModel

N = 40  # customers = items
CFG = RecommendSettings(exploration_share=0.0, threads=1, seq_threads=1)
MODELS = {  # name -> (factory, personalised)
    "popular": (lambda: Popularity(np.full(N, 1.0, np.float32)), False),
    "itemknn_cosine": (lambda: ItemKNN("cosine", 20), True),
    "itemknn_bm25": (lambda: ItemKNN("bm25", 20), True),
    "als": (lambda: ALS(factors=3, regularization=0.1, alpha=10.0, iterations=15), True),  # rank ~2 data, as implicit tests it
    "bpr": (lambda: BPR(factors=8, learning_rate=0.05, regularization=0.01, iterations=200), True),
    "sequence": (lambda: SequenceModel(dim=16, max_len=N, seconds=20, protocol="leave_last_out"), True),
}


def checkerboard() -> Events:
    """Customer u bought each item j with j % 2 == u % 2 and j != u, one a day in a seeded order."""
    rng = np.random.default_rng(0)
    pairs = [(u, j) for u in range(N) for j in rng.permutation(N) if j % 2 == u % 2 and j != u]
    user, item = (np.array(x, np.int32) for x in zip(*pairs))
    ts = (np.arange(len(pairs)) % (N // 2) * DAY + 1_700_000_000).astype(np.int64)
    catalog = pd.DataFrame({"item_id": [f"i{j:02d}" for j in range(N)], "category": ["even", "odd"] * (N // 2),
                            "price": 10.0, "in_stock": True})
    ones = np.ones(len(pairs), bool)
    return Events(np.array([f"c{u:02d}" for u in range(N)], object), catalog["item_id"].to_numpy(object), user, item,
                  np.ones(len(pairs), np.float32), ts, ones, ones, catalog)


EVENTS = checkerboard()
TRAIN = EVENTS.window(None, EVENTS.end)


@pytest.fixture(scope="module", params=list(MODELS))
def fitted(request):
    factory, personal = MODELS[request.param]
    return factory().fit(TRAIN, CFG, seed=3), personal


def package(model, **settings) -> Recommender:
    cfg = RecommendSettings(**{**CFG.__dict__, **settings})
    return Recommender(model, EVENTS.customers, EVENTS.items, TRAIN.histories(seq_len=model.seq_len), TRAIN.purchased,
                       EVENTS.catalog, (TRAIN.matrix > 0).sum(axis=0).A1, np.ones(N, bool), cfg)


def personalised(fitted):
    if not fitted[1]:
        pytest.skip("popularity gives everyone the same list")
    return fitted[0]


class TestRecommenderContract:
    def test_outputs_have_the_documented_shapes_and_types(self, fitted):
        model = fitted[0]
        state = model.state(TRAIN.histories(np.arange(5), model.seq_len))
        scores = model.scores(state)
        assert scores.shape == (5, N) and scores.dtype == np.float32 and np.isfinite(scores).all()
        similarity = model.item_similarity(3)
        assert similarity.shape == (N,) and np.isfinite(similarity).all()
        if hasattr(model, "item_factors"):  # factor models are searched by dot product with these
            assert model.item_factors.dtype == np.float32 and model.item_factors.shape[0] == N
            assert np.allclose(scores, np.asarray(state) @ model.item_factors.T, atol=1e-4)

    def test_the_held_out_diagonal_item_comes_first(self, fitted):
        rec = package(personalised(fitted))
        for u, customer in enumerate(EVENTS.customers):
            got = rec.recommend(customer, k=5)
            assert got.items[0] == EVENTS.items[u], (customer, got.items)
            assert got.fallback is None and got.model == rec.model.name

    def test_seen_items_are_excluded_only_when_asked(self, fitted):
        model = fitted[0]
        for exclude in (True, False):
            rec = package(model, exclude_purchased=exclude)
            for u, customer in enumerate(EVENTS.customers[:6]):
                had = set(EVENTS.items[TRAIN.purchased[u].indices])
                got = rec.recommend(customer, k=N)
                assert len(got.items) == (N - len(had) if exclude else N) and len(set(got.items)) == len(got.items)
                assert bool(had & set(got.items)) is not exclude

    def test_a_customer_never_seen_is_folded_in(self, fitted):
        rec = package(personalised(fitted))
        for u in (0, 1, 7):
            history = EVENTS.items[EVENTS.item[EVENTS.user == u]].tolist()  # in time order
            got = rec.recommend("someone-new", k=5, fresh_items=history, exclude=history)
            assert got.items[0] == EVENTS.items[u] and got.fallback is None

    def test_similar_items_are_the_item_itself_or_its_twins(self, fitted):
        model = personalised(fitted)
        rec = package(model)
        for i in (0, 1, 10, 25):
            similarity = model.item_similarity(i)
            assert similarity[i] >= similarity[np.arange(N) % 2 != i % 2].max()
            assert all(int(j[1:]) % 2 == i % 2 for j, _ in rec.similar_items(EVENTS.items[i], k=10))

    def test_batch_gives_what_single_requests_give(self, fitted):
        rec = package(fitted[0])
        batch = rec.batch(EVENTS.customers[:8].tolist(), k=5)
        for customer in EVENTS.customers[:8]:
            assert batch.loc[batch["customer_id"] == customer, "item_id"].tolist() == rec.recommend(customer, k=5).items

    def test_a_pickled_model_scores_the_same(self, fitted):
        model = fitted[0]
        h = TRAIN.histories(np.arange(N), model.seq_len)
        again = pickle.loads(pickle.dumps(model))
        assert np.allclose(again.scores(again.state(h)), model.scores(model.state(h)), atol=1e-5)
