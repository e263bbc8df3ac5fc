"""Exact top-k selection for recommendations, fast enough for requests and for millions of customers.

`top_k` / `top_k_rows` select from score vectors/matrices. `NormOrder` searches dot products without
scoring the whole catalogue: items are kept in descending-norm order and a customer's search stops once
no unscored item can beat their k-th best (Cauchy-Schwarz: u.y <= |u||y|). Factor models' norms follow
popularity, so a few hundred of 50k items usually settle a top 10; the result is the same as a full sort.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from propel.training.rec_models import MATVEC_ROWS

NARROW = 0.25  # a filter letting through less than this share of items: score only those items


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest finite scores, best first (fewer if fewer are finite). Exact: the k-th
    largest of a strided sample is a lower bound for the true k-th largest, so only the (few) scores
    above it need sorting."""
    n = len(scores)
    if k <= 0 or n == 0:
        return np.empty(0, np.int64)
    if n > 64 * k:
        sample = scores[:: n // (16 * k)]
        candidates = np.flatnonzero(scores >= np.partition(sample, len(sample) - k)[len(sample) - k])
    else:
        candidates = np.arange(n)
    candidates = candidates[np.isfinite(scores[candidates])]
    if len(candidates) > k:  # equal scores: the earlier candidates, as a stable sort would keep them
        s = scores[candidates]
        kth = -np.partition(-s, k - 1)[k - 1]
        above = candidates[s > kth]
        candidates = np.r_[above, candidates[s == kth][:k - len(above)]]
    return candidates[np.argsort(-scores[candidates], kind="stable")]


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Row-wise top-k indices (rows x k), best first, equal scores by index (as top_k() and a stable
    sort order them), -1 where a row has fewer finite scores."""
    top = best_columns(scores, min(k, scores.shape[1]))
    return np.where(np.isfinite(np.take_along_axis(scores, top, axis=1)), top, -1)


def best_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's k highest columns, best first, equal scores by column (k <= columns)."""
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    picked = np.take_along_axis(scores, top, axis=1)
    kth = picked.min(axis=1, keepdims=True)
    # rows where scores equal to the k-th were left out: the lowest indices among them belong in the top
    for r in np.flatnonzero((scores == kth).sum(axis=1) > (picked == kth).sum(axis=1)):
        above = np.flatnonzero(scores[r] > kth[r])
        top[r] = np.r_[above, np.flatnonzero(scores[r] == kth[r])[:k - len(above)]]
    picked = np.take_along_axis(scores, top, axis=1)
    return np.take_along_axis(top, np.lexsort((top, -picked), axis=-1), axis=1)


class NormOrder:
    """Exact top-k of dot products that scores items in descending-norm order and stops once no
    unscored item can beat a customer's k-th best (Cauchy-Schwarz: u.y <= |u||y|). Factor models'
    norms follow popularity, so a few hundred of 50k items usually settle a customer's top 10."""

    FIRST_BLOCK = 1024

    def __init__(self, factors: np.ndarray, items: np.ndarray, groups: np.ndarray):
        norms = np.linalg.norm(factors[items], axis=1)
        self.order = items[np.argsort(-norms, kind="stable")]  # item indices, largest norm first
        self.factors = np.ascontiguousarray(factors[self.order], np.float32)
        self.norms = np.r_[np.sort(norms)[::-1], 0].astype(np.float32)  # sentinel 0 after the last
        self.position = np.full(len(factors), -1, np.int64)
        self.position[self.order] = np.arange(len(self.order))
        # each group's (category's) own search domain, precomputed: a category filter costs no full pass
        self.groups = {g: self._subset(np.flatnonzero(groups[self.order] == g)) for g in np.unique(groups[items])}

    def _subset(self, at: np.ndarray) -> tuple:
        return self.factors[at], np.r_[self.norms[at], 0], self.order[at], at

    def top(self, states: np.ndarray, k: int, seen: sp.csr_matrix | None = None,
            allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(item indices, scores), rows x k, best first; -1 / -inf where fewer items qualify. `seen`:
        rows x items to exclude per row; `allowed`: a boolean item mask for every row."""
        factors, norms, order, at, keep = self._domain(allowed)
        b, n = len(states), len(order)
        top, best = np.full((b, k), -1, np.int64), np.full((b, k), -np.inf, np.float32)
        if k <= 0 or n == 0:
            return top, best
        seen_row, seen_pos = (np.empty(0, np.int64),) * 2
        if seen is not None and seen.nnz:
            coo = seen.tocoo()
            inside, place = self._places(coo.col, at)
            seen_row, seen_pos = coo.row[inside].astype(np.int64), place[inside]
        state_norms = np.linalg.norm(states, axis=1)
        slot = np.full(b, -1, np.int64)  # row -> its place among the rows still open
        open_rows, lo, block = np.arange(b), 0, self.FIRST_BLOCK
        while len(open_rows) and lo < n:
            hi = min(n, lo + block)
            s = (factors[lo:hi] @ states[open_rows].T).T  # (block x f) @ (f x rows): one BLAS call
            if keep is not None:
                s = np.where(keep[lo:hi], s, -np.inf)
            slot[open_rows] = np.arange(len(open_rows))
            hit = (seen_pos >= lo) & (seen_pos < hi) & (slot[seen_row] >= 0)
            s[slot[seen_row[hit]], seen_pos[hit] - lo] = -np.inf
            slot[open_rows] = -1
            cand = np.hstack([best[open_rows], s])
            ids = np.hstack([top[open_rows], np.broadcast_to(np.arange(lo, hi), s.shape)])
            # best first; equal scores in norm order (cand's columns are), whatever the block sizes were
            pick = best_columns(cand, k)  # cand has at least k + 1 columns
            best[open_rows], top[open_rows] = np.take_along_axis(cand, pick, 1), np.take_along_axis(ids, pick, 1)
            lo, block = hi, block * 2
            open_rows = open_rows[best[open_rows, -1] < state_norms[open_rows] * norms[lo]]
        found = np.isfinite(best)
        return np.where(found, order[np.maximum(top, 0)], -1), best

    def _domain(self, allowed: np.ndarray | None, group=None):
        """(factors, norms, order, at, keep) to search: all rankable items (or a group's, when every
        allowed item is in it), and for a narrow filter only the items it lets through (`at`: their
        places in the full order; `keep`: the mask left to apply, if any)."""
        if group is not None:
            if group not in self.groups:
                return (np.empty((0, self.factors.shape[1]), np.float32), np.zeros(1, np.float32),
                        np.empty(0, np.int64), np.empty(0, np.int64), None)
            factors, norms, order, at = self.groups[group]
        else:
            factors, norms, order, at = self.factors, self.norms, self.order, None
        keep = None if allowed is None else allowed[order]
        if keep is None or np.count_nonzero(keep) >= NARROW * len(keep):
            return factors, norms, order, at, keep
        inner = np.flatnonzero(keep)
        return factors[inner], np.r_[norms[inner], 0], order[inner], inner if at is None else at[inner], None

    def _places(self, items: np.ndarray, at: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(which of `items` are searched, their places in the searched order)."""
        place = self.position[items]
        if at is not None:
            inside = np.minimum(np.searchsorted(at, place), len(at) - 1)
            place = np.where((place >= 0) & (at[inside] == place), inside, -1)
        return place >= 0, place

    def top_one(self, state: np.ndarray, k: int, seen_items: np.ndarray | None = None,
                allowed: np.ndarray | None = None, group=None) -> tuple[np.ndarray, np.ndarray]:
        """top() for one customer (a request): the same search on 1-D arrays, a fraction of the overhead.
        `seen_items`: item indices to exclude; `group`: search only this group (`allowed` lies within
        it). Returns (item indices, scores), possibly fewer than k."""
        factors, norms, order, at, keep = self._domain(allowed, group)
        if k <= 0 or not len(order):
            return np.empty(0, np.int64), np.empty(0, np.float32)
        seen_pos = np.empty(0, np.int64)
        if seen_items is not None and len(seen_items):
            inside, place = self._places(seen_items, at)
            seen_pos = place[inside]
        bound, n = float(np.linalg.norm(state)), len(factors)
        ids, best = np.empty(0, np.int64), np.empty(0, np.float32)
        lo, block = 0, self.FIRST_BLOCK
        while lo < n:
            hi = min(n, lo + block)
            s = factors[lo:hi] @ state
            if keep is not None:
                s = np.where(keep[lo:hi], s, -np.inf)
            s[seen_pos[(seen_pos >= lo) & (seen_pos < hi)] - lo] = -np.inf
            cand, cand_ids = np.r_[best, s], np.r_[ids, np.arange(lo, hi)]
            pick = top_k(cand, k)  # ties: earlier candidates first, i.e. norm order, as in the batch search
            ids, best = cand_ids[pick], cand[pick]
            lo, block = hi, min(2 * block, MATVEC_ROWS)
            if len(best) == k and best[-1] >= bound * norms[lo]:
                break
        return order[ids], best
