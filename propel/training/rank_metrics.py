"""Top-K ranking metrics, as recommender research reports them (vectorised numpy, one row per customer).

Inputs: `top` (customers x K item indices, best first, -1 for an empty slot) and `relevant` (a sparse
customers x items matrix, non-zero = a hit). Per-customer values are averaged over customers with at
least one relevant item:
  precision@K = hits / K          recall@K = hits / relevant        hit_rate@K = any hit
  NDCG@K = sum(hit_j / log2(j + 1)) / the same for an ideal ranking of min(relevant, K) hits (j from 1)
  MAP@K = sum over hit positions j of precision@j, divided by min(relevant, K)
Catalogue-level: coverage@K = distinct recommended items / catalogue size; pop_rank@K = mean popularity
rank (1 = most popular) of what is recommended: low values mean a popularity-biased recommender.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

KS = (10, 20)


def hits(top: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """Boolean (customers x K): is the j-th recommendation of customer i relevant?"""
    rel = sp.csr_matrix(relevant)
    rel.sum_duplicates()  # also sorts the column indices within each row
    n_items = rel.shape[1]
    keys = np.repeat(np.arange(rel.shape[0], dtype=np.int64), np.diff(rel.indptr)) * n_items + rel.indices
    if not len(keys):
        return np.zeros(top.shape, bool)
    query = np.arange(len(top), dtype=np.int64)[:, None] * n_items + top
    found = keys[np.minimum(np.searchsorted(keys, query), len(keys) - 1)] == query
    return found & (top >= 0)


def ranking_metrics(top: np.ndarray, relevant: sp.csr_matrix, k: int) -> dict[str, float]:
    """Mean NDCG, recall, precision, MAP and hit rate at k over customers with a relevant item."""
    n_rel = np.diff(sp.csr_matrix(relevant).indptr)
    rows = n_rel > 0
    h = hits(top[:, :k], relevant)[rows].astype(np.float64)
    if h.shape[1] < k:  # fewer than k recommendations: the missing slots are misses
        h = np.pad(h, ((0, 0), (0, k - h.shape[1])))
    n_rel = n_rel[rows]
    if not len(n_rel):
        return {f"{m}_at_{k}": float("nan") for m in ("ndcg", "recall", "precision", "map", "hit_rate")}
    discount = 1 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discount)[np.minimum(n_rel, k) - 1]
    precision_at_j = np.cumsum(h, axis=1) / np.arange(1, k + 1)
    found = h.sum(axis=1)
    return {f"ndcg_at_{k}": float(np.mean(h @ discount / ideal)),
            f"recall_at_{k}": float(np.mean(found / n_rel)),
            f"precision_at_{k}": float(np.mean(found / k)),
            f"map_at_{k}": float(np.mean((precision_at_j * h).sum(axis=1) / np.minimum(n_rel, k))),
            f"hit_rate_at_{k}": float(np.mean(found > 0))}


def popularity_rank(popularity: np.ndarray) -> np.ndarray:
    """Rank of each item by popularity, 1 = most popular (ties by item index)."""
    rank = np.empty(len(popularity), np.int64)
    rank[np.argsort(-np.asarray(popularity), kind="stable")] = np.arange(1, len(popularity) + 1)
    return rank


def catalogue_metrics(top: np.ndarray, popularity: np.ndarray, k: int) -> dict[str, float]:
    """coverage@k and pop_rank@k of the recommendations (all customers' lists)."""
    rec = top[:, :k]
    rec = rec[rec >= 0]
    return {f"coverage_at_{k}": float(len(np.unique(rec)) / len(popularity)),
            f"pop_rank_at_{k}": float(popularity_rank(popularity)[rec].mean()) if len(rec) else float("nan")}


def all_metrics(top: np.ndarray, relevant: sp.csr_matrix, popularity: np.ndarray, ks=KS) -> dict[str, float]:
    out = {}
    for k in ks:
        out.update(ranking_metrics(top, relevant, k))
        out.update(catalogue_metrics(top, popularity, k))
    return out
