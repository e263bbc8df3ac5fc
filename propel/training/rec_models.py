"""Recommender models behind one small interface, so evaluation, champion comparison and serving treat
them alike (after implicit's own base class):

  fit(train, cfg, seed)    learn the item side from an `Interactions` window
  state(histories)         a representation of each customer computed from their history alone, so a
                           customer never seen in fit (or one with fresh interactions) is folded in
                           without retraining: ALS recalculates the user factors by least squares,
                           BPR solves the same least squares against its item factors, item-kNN reads
                           the history directly, the sequence model encodes the recent items
  scores(state)            customers x items
  item_similarity(item)    similarity of every item to one item (for "similar items")

Factor models (everything but item-kNN) score by a dot product with `item_factors`, which serving and
batch scoring use directly (`implicit.topk`). Only NumPy arrays are kept, so models pickle small.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from propel.config import RecommendSettings
from propel.training.interactions import Histories, Interactions, confidence


class RecModel:
    name = "base"
    seq_len = 0  # > 0: state() needs the customers' recent item sequences
    params: dict

    def fit(self, train: Interactions, cfg: RecommendSettings, seed: int) -> RecModel:
        return self

    def state(self, h: Histories):
        raise NotImplementedError

    def scores(self, state) -> np.ndarray:
        raise NotImplementedError

    def item_similarity(self, item: int) -> np.ndarray:
        raise NotImplementedError


MATVEC_ROWS = 8_192  # OpenBLAS threads larger matrix-vector products, which on a busy machine costs ms of jitter


def matvec(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """matrix @ vector in row blocks small enough for single-threaded BLAS: steady sub-ms latency."""
    return np.concatenate([matrix[i:i + MATVEC_ROWS] @ vector for i in range(0, len(matrix), MATVEC_ROWS)])


class FactorModel(RecModel):
    """score = state @ item_factors.T"""

    item_factors: np.ndarray
    bias_column = False  # the last factor column is an item bias (users hold 1 there), not a direction

    def scores(self, state: np.ndarray) -> np.ndarray:
        return np.asarray(state, np.float32) @ self.item_factors.T

    @property
    def yty(self) -> np.ndarray:
        """Gram matrix of the item factors that the least-squares fold-in uses (cached)."""
        if getattr(self, "_yty", None) is None:
            f = self.item_factors[:, :-1] if self.bias_column else self.item_factors
            self._yty = f.T @ f
        return self._yty

    def item_similarity(self, item: int) -> np.ndarray:
        """Cosine similarity of the item vectors."""
        f = self.item_factors[:, :-1] if self.bias_column else self.item_factors
        if getattr(self, "_norms", None) is None:
            self._norms = np.maximum(np.linalg.norm(f, axis=1), 1e-12)
        return matvec(f, f[item]) / (self._norms * self._norms[item])


class Popularity(FactorModel):
    """The same list for everyone: customers per item over a recent window (given, see interactions.popularity)."""

    name = "popular"

    def __init__(self, popularity: np.ndarray):
        self.item_factors = np.asarray(popularity, np.float32)[:, None]
        self.params = {}

    def state(self, h: Histories) -> np.ndarray:
        return np.ones((len(h), 1), np.float32)

    def item_similarity(self, item: int) -> np.ndarray:
        return self.item_factors[:, 0]


class RandomModel(FactorModel):
    """Random scores (a floor every other model must clear)."""

    name = "random"

    def fit(self, train: Interactions, cfg: RecommendSettings, seed: int) -> RandomModel:
        self.seed, self.params = seed, {}
        self.item_factors = np.random.default_rng(seed).standard_normal((train.n_items, 16)).astype(np.float32)
        return self

    def state(self, h: Histories) -> np.ndarray:
        return np.random.default_rng(self.seed + 1).standard_normal((len(h), 16)).astype(np.float32)


FEW_ROWS = 8  # fold-in of this few customers (a request) runs in NumPy: no thread-pool set-up per call


def least_squares_state(item_factors: np.ndarray, conf: sp.csr_matrix, regularization: float, threads: int,
                        yty: np.ndarray | None = None) -> np.ndarray:
    """Implicit-ALS user factors for given histories and fixed item factors (Hu et al.'s closed form):
    what implicit's `recalculate_user` computes, by its own solver for batches, in NumPy for a request."""
    from implicit.cpu.als import AlternatingLeastSquares

    conf = sp.csr_matrix(conf, dtype=np.float32)
    if conf.shape[0] <= FEW_ROWS:
        yty = item_factors.T @ item_factors if yty is None else yty
        out = np.zeros((conf.shape[0], item_factors.shape[1]), np.float32)
        for r in range(conf.shape[0]):
            items, c = conf.indices[conf.indptr[r]:conf.indptr[r + 1]], conf.data[conf.indptr[r]:conf.indptr[r + 1]]
            y = item_factors[items]
            a = yty + (y.T * (c - 1)) @ y + regularization * np.eye(len(yty), dtype=np.float32)
            out[r] = np.linalg.solve(a, y.T @ c)
        return out
    with threadpool_limits(1, "blas"):  # implicit parallelises itself; BLAS threads would oversubscribe
        solver = AlternatingLeastSquares(factors=item_factors.shape[1], regularization=regularization, num_threads=threads)
        solver.item_factors = np.ascontiguousarray(item_factors, np.float32)
        return solver.recalculate_user(np.arange(conf.shape[0]), conf)


class ALS(FactorModel):
    """implicit's ALS on confidence = alpha * confidence(weights)."""

    name = "als"

    def __init__(self, factors: int, regularization: float, alpha: float, iterations: int):
        self.params = {"factors": factors, "regularization": regularization, "alpha": alpha, "iterations": iterations}

    def fit(self, train: Interactions, cfg: RecommendSettings, seed: int) -> ALS:
        from implicit.cpu.als import AlternatingLeastSquares

        self.confidence, self.threads = cfg.confidence, cfg.threads
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(**self.params, random_state=seed, num_threads=cfg.threads)
            model.fit(confidence(train.matrix, cfg.confidence), show_progress=False)  # it applies alpha itself
        self.item_factors = np.ascontiguousarray(model.item_factors, np.float32)
        return self

    def _conf(self, weights: sp.csr_matrix) -> sp.csr_matrix:
        return confidence(weights, self.confidence) * np.float32(self.params["alpha"])

    def state(self, h: Histories) -> np.ndarray:
        return least_squares_state(self.item_factors, self._conf(h.weights), self.params["regularization"], self.threads,
                                   self.yty)


class BPR(FactorModel):
    """implicit's Bayesian Personalised Ranking. Its last factor column is an item bias (users hold 1 there).
    Fold-in: the ALS least-squares user factors against BPR's item factors, bias column set to 1."""

    name = "bpr"
    bias_column = True

    def __init__(self, factors: int, learning_rate: float, regularization: float, iterations: int):
        self.params = {"factors": factors, "learning_rate": learning_rate, "regularization": regularization,
                       "iterations": iterations}

    def fit(self, train: Interactions, cfg: RecommendSettings, seed: int) -> BPR:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        self.confidence, self.threads = cfg.confidence, cfg.threads
        model = BayesianPersonalizedRanking(**self.params, random_state=seed, num_threads=cfg.threads)
        model.fit(sp.csr_matrix(train.matrix > 0, dtype=np.float32), show_progress=False)
        self.item_factors = np.ascontiguousarray(model.item_factors, np.float32)
        return self

    def state(self, h: Histories) -> np.ndarray:
        users = least_squares_state(self.item_factors[:, :-1], confidence(h.weights, self.confidence),
                                    self.params["regularization"], self.threads, self.yty)
        return np.hstack([users, np.ones((len(users), 1), np.float32)])


class ItemKNN(RecModel):
    """implicit's item-item neighbours (cosine or BM25 weighting); score = history @ similarity."""

    def __init__(self, weighting: str, neighbours: int):
        self.weighting, self.name = weighting, f"itemknn_{weighting}"
        self.params = {"weighting": weighting, "neighbours": neighbours}

    def fit(self, train: Interactions, cfg: RecommendSettings, seed: int) -> ItemKNN:
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

        self.confidence = cfg.confidence
        cls = BM25Recommender if self.weighting == "bm25" else CosineRecommender
        model = cls(K=self.params["neighbours"], num_threads=cfg.threads)
        model.fit(confidence(train.matrix, cfg.confidence), show_progress=False)
        self.similarity = sp.csr_matrix(model.similarity, dtype=np.float32)
        return self

    def state(self, h: Histories) -> sp.csr_matrix:
        return confidence(h.weights, self.confidence)

    def scores(self, state: sp.csr_matrix) -> np.ndarray:
        return np.asarray((state @ self.similarity).todense(), np.float32)

    def item_similarity(self, item: int) -> np.ndarray:
        return np.asarray(self.similarity[item].todense(), np.float32).ravel()
