"""Recommendations at serving time: the library the BentoML service and batch jobs call
(its HTTP contract: `/recommend` and `/similar_items` in docs/serving.md).

`Recommender` is the registered pyfunc itself (`models:/recommender@champion` unwraps to it). It carries
the winning model, the id maps, each known customer's history (summed weights, recent sequence) and
precomputed state, purchases for exclusion, the catalogue (category, price, in_stock), popularity, and
the serving settings it was trained with. All per-request work is NumPy over precomputed arrays (an
exact top-k search that scores items in descending-norm order and stops early, see propel/training/topk.py;
boolean masks for filters), and nothing is mutated after loading, so concurrent reads are safe.

Behaviour:
- a known customer gets the model's top-k, never items they bought (`exclude_purchased`), only in-stock
  items (`in_stock_only`), within the given filters;
- an unknown customer gets the most popular items (within the filters, e.g. a category), flagged
  `fallback="unknown_customer"`; with `fresh_items` they are folded in instead;
- `fresh_items` (interactions not yet in training) are folded in without retraining: the model
  recomputes the customer's state from history + fresh items (see propel/training/rec_models.py);
- `exploration_share` of the k slots (rounded down; 0.1 -> 1 of 10) go to new items the model cannot
  rank yet (no interactions), picked by a hash of the customer id (stable per customer), flagged
  `explored`, score 0, placed last;
- a customer forgotten since packaging (`propel forget`'s tombstones, applied by `forget()`) is unknown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import scipy.sparse as sp

from propel.config import RecommendSettings, Workspace
from propel.lake.tombstones import customer_key, keys as tombstone_keys
from propel.training.interactions import Histories
from propel.training.tasks import RECOMMENDER
from propel.training.rec_models import FactorModel, RecModel
from propel.training.topk import NormOrder, top_k, top_k_rows

TASK = RECOMMENDER
EXAMPLE_IDS = ("example-customer-1", "example-customer-2", "example-customer-3")  # input examples: never real ids
BATCH_ROWS = 20_000  # customers per chunk in batch scoring (bounds the score blocks' memory)


@dataclass
class Recommendations:
    items: list[str]  # item ids, best first
    scores: list[float]
    explored: list[bool]  # True for items mixed in by the exploration share (new items)
    fallback: str | None  # None, or why a fallback was used: "unknown_customer" (popular items)
    model: str  # which model produced them ("als", "popular", ...)


class Recommender(mlflow.pyfunc.PythonModel):
    """The packaged recommender; see the module docstring. predict(): DataFrame `customer_id` -> batch()."""

    def __init__(self, model: RecModel, customers: np.ndarray, items: np.ndarray, histories: Histories,
                 purchased: sp.csr_matrix, catalog: pd.DataFrame, popularity: np.ndarray, known: np.ndarray,
                 cfg: RecommendSettings):
        self.model, self.customers, self.items = model, np.asarray(customers, object), np.asarray(items, object)
        self.histories, self.purchased = histories, sp.csr_matrix(purchased, dtype=bool)
        self.state = model.state(histories)  # every known customer's representation, from their full history
        codes, self.categories = pd.factorize(catalog["category"])
        self.category = codes.astype(np.int32)  # -1 = no category
        self.price = catalog["price"].to_numpy(np.float64)
        self.in_stock = catalog["in_stock"].to_numpy(bool)
        self.popularity = np.asarray(popularity, np.float32)
        self.known = np.asarray(known, bool)  # items the model can rank (interactions in its training data)
        self.in_stock_only, self.exclude_purchased = cfg.in_stock_only, cfg.exclude_purchased
        self.exploration_share, self.fresh_weight = cfg.exploration_share, cfg.fresh_weight
        self._derive()

    DERIVED = ("rankable", "new_items", "new_pool", "dense", "norm_order", "_customer_row", "_item_row",
               "_category_code", "_customer_index", "forgotten")

    def _derive(self) -> None:
        """Masks and indexes computed from the stored arrays, at packaging and again at loading."""
        sellable = self.in_stock if self.in_stock_only else np.ones(len(self.items), bool)
        self.rankable = self.known & sellable
        self.new_items = ~self.known & sellable  # the exploration pool
        self.new_pool = np.flatnonzero(self.new_items)
        self.dense = isinstance(self.model, FactorModel)
        self.norm_order = NormOrder(self.model.item_factors, np.flatnonzero(self.rankable),
                                    self.category) if self.dense else None
        self._customer_row = {c: i for i, c in enumerate(self.customers)}
        self._item_row = {c: i for i, c in enumerate(self.items)}
        self._category_code = {c: i for i, c in enumerate(self.categories)}
        self._customer_index = pd.Index(self.customers)
        self.forgotten: frozenset[str] = frozenset()  # tombstone keys of customers to treat as unknown

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in self.DERIVED}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._derive()

    # ---- forgetting ------------------------------------------------------------------------------
    def forget(self, tombstones: frozenset[str]) -> None:
        """Treat tombstoned customers as unknown from now on (popular fallback): how a running service
        honours `propel forget` at once, without reloading (one attribute swap, safe under reads)."""
        self.forgotten = tombstones

    def drop_forgotten(self, tombstones: frozenset[str]) -> int:
        """Remove tombstoned customers' ids, histories, purchases and state for good (the package that
        `propel forget` rewrites); returns how many customers were removed."""
        gone = np.fromiter((customer_key(str(c)) in tombstones for c in self.customers), bool, len(self.customers))
        if not gone.any():
            return 0
        rows = np.flatnonzero(~gone)
        h = self.histories
        self.customers, self.purchased, self.state = self.customers[rows], self.purchased[rows], self.state[rows]
        self.histories = Histories(h.weights[rows], None if h.seq is None else h.seq[rows])
        self._derive()
        return int(gone.sum())

    def _row(self, customer_id: str | None) -> int | None:
        row = self._customer_row.get(customer_id) if customer_id is not None else None
        if row is not None and self.forgotten and customer_key(customer_id) in self.forgotten:
            return None
        return row

    # ---- the contract --------------------------------------------------------------------------
    def knows_customer(self, customer_id: str) -> bool:
        return self._row(customer_id) is not None

    def knows_item(self, item_id: str) -> bool:
        return item_id in self._item_row

    def recommend(self, customer_id: str | None, k: int = 10, *, category: str | None = None,
                  min_price: float | None = None, max_price: float | None = None,
                  allowed_items: list[str] | None = None, exclude: list[str] | None = None,
                  fresh_items: list[str] | None = None) -> Recommendations:
        row = self._row(customer_id)
        fresh = [self._item_row[i] for i in fresh_items or () if i in self._item_row]
        wanted = self._filter(category, min_price, max_price, allowed_items, exclude)
        pool = self.new_pool if wanted is None else np.flatnonzero(self.new_items & wanted)
        n_explore = min(int(k * self.exploration_share), len(pool))
        seen = None
        if self.exclude_purchased and row is not None:
            seen = self.purchased.indices[self.purchased.indptr[row]:self.purchased.indptr[row + 1]]
        fallback, name = None, self.model.name
        if fresh or row is not None:
            state = self._fold_in(row, fresh) if fresh else self.state[row:row + 1]
            if self.dense:
                group = self._category_code.get(category, -2) if category is not None else None
                top, scores = self.norm_order.top_one(np.asarray(state[0], np.float32), k - n_explore, seen, wanted,
                                                      group)
            else:
                top, scores = self._masked_top(self.model.scores(state)[0], k - n_explore, seen, wanted)
        else:
            fallback, name = "unknown_customer", "popular"
            top, scores = self._masked_top(self.popularity, k - n_explore, None, wanted)
        explored = self._explore(np.array([customer_id or ""], object), pool, n_explore)[0]
        return Recommendations(items=[self.items[i] for i in top] + [self.items[i] for i in explored],
                               scores=[float(x) for x in scores] + [0.0] * len(explored),
                               explored=[False] * len(top) + [True] * len(explored), fallback=fallback, model=name)

    def similar_items(self, item_id: str, k: int = 10) -> list[tuple[str, float]]:
        """Most similar rankable items; for an item the model has no interactions for, the most popular
        items of its category. KeyError for an item not in the catalogue."""
        i = self._item_row[item_id]
        if self.known[i]:
            sim = self.model.item_similarity(i)
        else:
            sim = np.where((self.category == self.category[i]) | (self.category[i] < 0), self.popularity, -np.inf)
        mask = self.rankable.copy()
        mask[i] = False
        return [(self.items[j], float(sim[j])) for j in top_k(np.where(mask, sim, -np.inf), k)]

    def batch(self, customer_ids: list[str], k: int = 10) -> pd.DataFrame:
        """Top-k for many customers (same rules as recommend() without filters): customer_id, rank,
        item_id, score, explored, fallback."""
        ids = np.asarray(customer_ids, dtype=object)
        rows = self._customer_index.get_indexer(ids)
        if self.forgotten:
            rows[[i for i in np.flatnonzero(rows >= 0) if customer_key(str(ids[i])) in self.forgotten]] = -1
        pool = self.new_pool
        n_explore = min(int(k * self.exploration_share), len(pool))
        n_model = k - n_explore
        top = np.full((len(ids), n_model), -1, np.int64)
        score = np.zeros((len(ids), n_model), np.float32)
        known = np.flatnonzero(rows >= 0)
        for chunk in np.array_split(known, max(1, -(-len(known) // BATCH_ROWS))):
            if len(chunk):
                top[chunk], score[chunk] = self._batch_known(rows[chunk], n_model)
        unknown = rows < 0
        if unknown.any():
            popular = top_k(np.where(self.rankable, self.popularity, -np.inf), n_model)
            top[unknown, :len(popular)], score[unknown, :len(popular)] = popular, self.popularity[popular]
        explored = self._explore(np.where(pd.isna(ids), "", ids), pool, n_explore)
        top, score = np.hstack([top, explored]), np.hstack([score, np.zeros(explored.shape, np.float32)])
        flag = np.hstack([np.zeros((len(ids), n_model), bool), np.ones(explored.shape, bool)])
        keep = top >= 0
        rank = np.cumsum(keep, axis=1)
        cust = np.repeat(np.arange(len(ids)), keep.sum(axis=1))
        return pd.DataFrame({"customer_id": ids[cust], "rank": rank[keep].astype(np.int32),
                             "item_id": self.items[top[keep]], "score": score[keep].astype(np.float64),
                             "explored": flag[keep],
                             "fallback": np.where(unknown, "unknown_customer", None)[cust]})

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.batch(model_input["customer_id"].astype(object).tolist(), int((params or {}).get("k", 10)))

    # ---- internals -----------------------------------------------------------------------------
    def _filter(self, category, min_price, max_price, allowed_items, exclude) -> np.ndarray | None:
        masks = []
        if category is not None:
            code = self._category_code.get(category)
            masks.append(self.category == code if code is not None else np.zeros(len(self.items), bool))
        if min_price is not None:
            masks.append(self.price >= min_price)
        if max_price is not None:
            masks.append(self.price <= max_price)
        if allowed_items is not None:
            allowed = np.zeros(len(self.items), bool)
            allowed[[self._item_row[i] for i in allowed_items if i in self._item_row]] = True
            masks.append(allowed)
        if exclude:
            keep = np.ones(len(self.items), bool)
            keep[[self._item_row[i] for i in exclude if i in self._item_row]] = False
            masks.append(keep)
        return np.logical_and.reduce(masks) if masks else None

    def _masked_top(self, scores: np.ndarray, k: int, seen: np.ndarray | None, wanted: np.ndarray | None):
        mask = self.rankable.copy() if wanted is None else self.rankable & wanted
        if seen is not None:
            mask[seen] = False
        top = top_k(np.where(mask, scores, -np.inf), k)
        return top, scores[top]

    def _fold_in(self, row: int | None, fresh: list[int]):
        """The customer's state from their history plus the fresh items."""
        n = len(self.items)
        weights = self.histories.weights[row] if row is not None else sp.csr_matrix((1, n), dtype=np.float32)
        weights = weights + sp.csr_matrix((np.full(len(fresh), self.fresh_weight, np.float32),
                                           (np.zeros(len(fresh), int), fresh)), shape=(1, n))
        seq = None
        if self.model.seq_len:
            before = self.histories.seq[row] if row is not None else np.zeros(self.model.seq_len, np.int32)
            seq = np.r_[before, np.asarray(fresh, np.int32) + 1][-self.model.seq_len:][None, :]
        return self.model.state(Histories(sp.csr_matrix(weights), seq))

    def _batch_known(self, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        seen = self.purchased[rows] if self.exclude_purchased else None
        if self.dense:
            top, scores = self.norm_order.top(np.asarray(self.state[rows], np.float32), k, seen)
            return top, np.where(top >= 0, scores, 0)
        scores = self.model.scores(self.state[rows])
        scores[:, ~self.rankable] = -np.inf
        if seen is not None:
            p = seen.tocoo()
            scores[p.row, p.col] = -np.inf
        top = top_k_rows(scores, k)
        return top, np.where(top >= 0, np.take_along_axis(scores, np.maximum(top, 0), axis=1), 0)

    def _explore(self, customer_ids: np.ndarray, pool: np.ndarray, n: int) -> np.ndarray:
        """n distinct pool items per customer, chosen by a stable hash of the customer id."""
        if n == 0:
            return np.empty((len(customer_ids), 0), np.int64)
        start = pd.util.hash_array(customer_ids.astype(str).astype(object)) % np.uint64(len(pool))
        return pool[(start.astype(np.int64)[:, None] + np.arange(n)) % len(pool)]


def load_recommender(ws: Workspace) -> tuple[Recommender, str]:
    """The champion recommender and its version; LookupError when there is none."""
    from propel.training import registry

    client = registry.tracking(ws)
    champ = registry.champion_version(client, TASK)
    if champ is None:
        raise LookupError(f"no '{TASK}' champion in {ws.root}; run `propel train recommender` first")
    model = mlflow.pyfunc.load_model(f"models:/{TASK}/{champ.version}").unwrap_python_model()
    model.forget(tombstone_keys(ws.tombstones))  # anyone forgotten since (or a forget that did not finish)
    return model, str(champ.version)


def example_input() -> pd.DataFrame:
    """The input example logged with a package: synthetic ids, so no package carries a real one."""
    return pd.DataFrame({"customer_id": list(EXAMPLE_IDS)})


def scrub_packages(ws: Workspace, tombstones: frozenset[str]) -> dict[str, int]:
    """`propel forget` in the recommender's registered packages, every version (a rollback must not bring
    a person back): tombstoned customers removed from python_model.pkl, rewritten in place (an atomic
    replace; the version, its metrics and the alias history stay), and input examples holding real ids
    (packages logged before EXAMPLE_IDS) rewritten with synthetic ones. Rewriting in place rather than
    logging a new version is what removes the data: every older version would otherwise still hold it.
    Returns the customers removed per version."""
    import json
    from urllib.parse import unquote, urlparse

    import cloudpickle

    from propel.training import registry

    if not ws.mlflow_db.exists():
        return {}
    client = registry.tracking(ws)
    removed = {}
    for version in client.search_model_versions(f"name = '{TASK}'"):
        uri = urlparse(client.get_model_version_download_uri(TASK, version.version))
        if uri.scheme != "file":
            raise ValueError(f"{TASK} v{version.version} is stored at {uri.geturl()}, not in this workspace: remove "
                             "the forgotten customers from it there, or retrain and delete the version")
        folder = Path(unquote(uri.path))
        if not folder.resolve().is_relative_to(ws.mlruns.resolve()):
            raise ValueError(f"{TASK} v{version.version} is stored at {folder}, outside this workspace's mlruns "
                             "(a moved or copied workspace?); propel forget only rewrites packages of its own workspace")
        with (folder / "python_model.pkl").open("rb") as fh:
            model = cloudpickle.load(fh)
        removed[str(version.version)] = n = model.drop_forgotten(tombstones)
        if n:
            tmp = folder / ".python_model.pkl.tmp"
            with tmp.open("wb") as fh:
                cloudpickle.dump(model, fh)
            os.replace(tmp, folder / "python_model.pkl")
        example = {"columns": ["customer_id"], "data": [[c] for c in EXAMPLE_IDS]}
        for name, body in (("input_example.json", example), ("serving_input_example.json", {"dataframe_split": example})):
            if (folder / name).exists() and json.loads((folder / name).read_text()) != body:
                (folder / f".{name}.tmp").write_text(json.dumps(body))
                os.replace(folder / f".{name}.tmp", folder / name)
    return removed
