"""A small PyTorch sequence-aware recommender, trained on the evaluation's own task.

Matrix factorisation sees a bag of interactions. This model reads each customer's last `seq_max_len`
items in order (repeats collapsed), weighs them by recency with a learned weight per position, maps
the pooled item embedding through a residual MLP to the customer's state, and scores every item by a
dot product with output item embeddings plus an item bias: a multinomial likelihood over the
catalogue, as in Mult-DAE (Liang et al. 2018), with input items dropped at random while training.

Training examples come from the history itself, cut the way the evaluation cuts (its protocol): at up
to MAX_CUTS past cut points, `test_days` apart, the input is what a customer did before the cut and the
targets are the items new to them in the following `test_days` (temporal); or, per customer, the input
is their history but its latest `holdout_share` of items and those items are the targets, repeated on
what is left (leave-last-out). Items they already had are masked out of the softmax - the "future
window" objective of PinnerFormer (Pancha et al. 2022) rather than SASRec's next item: the model is
trained on the task it is judged on, and the encoder stays cheap enough to converge within the CPU
budget.

CPU only, seeded, `torch.set_num_threads(seq_threads)`, within `seq_seconds`, early stopping on held-out
examples. Fold-in is one forward pass over any sequence, fresh items included.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from propel.config import RecommendSettings
from propel.training.interactions import DAY, Histories, Interactions, latest_items
from propel.training.rec_models import FactorModel

MAX_CUTS = 12  # past cut points that make training examples
MAX_EXAMPLES = 400_000  # a seeded sample above this (bounds memory at scale)
BATCH = 256
PATIENCE = 3  # epochs without validation improvement before stopping
EPOCH_STEPS = 50  # at least this many gradient steps per epoch (small data: several passes), so patience counts progress
INPUT_DROPOUT = 0.2  # share of input items hidden in training (denoising)


def _network(n_items: int, dim: int, max_len: int):
    import torch
    from torch import nn

    class RecencyEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.item = nn.Embedding(n_items + 1, dim, padding_idx=0)  # input embeddings; 0 = padding
            self.recency = nn.Parameter(torch.linspace(-1, 0, max_len))  # logit weight per position, newest last
            self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim))
            self.out = nn.Parameter(torch.randn(n_items, dim) * 0.05)  # output item embeddings
            self.bias = nn.Parameter(torch.zeros(n_items))  # output item bias: popularity
            nn.init.normal_(self.item.weight, std=0.05)
            with torch.no_grad():
                self.item.weight[0] = 0

        def forward(self, seq: torch.Tensor) -> torch.Tensor:
            weights = torch.softmax(torch.where(seq > 0, self.recency[max_len - seq.shape[1]:], -1e9), dim=1)
            pooled = (weights.unsqueeze(-1) * self.item(seq)).sum(1)  # all-padding rows pool zeros
            return pooled + self.mlp(pooled)

        def logits(self, h: torch.Tensor) -> torch.Tensor:
            return h @ self.out.T + self.bias

    return RecencyEncoder()


def cuts(train: Interactions, protocol: str, cfg: RecommendSettings):
    """(before, after) event masks of up to MAX_CUTS past cut points, cut like the evaluation's protocol."""
    if protocol == "temporal":
        end = (int(train.ts.max()) // DAY + 1) * DAY
        for k in range(1, MAX_CUTS + 1):
            cut = end - k * cfg.test_days * DAY
            if cut <= train.ts.min():
                return
            yield train.ts < cut, (train.ts >= cut) & (train.ts < cut + cfg.test_days * DAY)
        return
    user = np.repeat(np.arange(train.n_customers), np.diff(train.indptr))
    before = np.ones(len(train.item), bool)
    for _ in range(MAX_CUTS):
        kept = np.flatnonzero(before)
        after = np.zeros(len(before), bool)
        after[kept] = latest_items(user[kept], train.item[kept], train.n_customers, train.n_items, cfg.holdout_share)
        if not after.any():
            return
        before = before & ~after
        yield before, after


def training_examples(train: Interactions, length: int, protocol: str, cfg: RecommendSettings, seed: int):
    """(sequences, seen, targets) at past cut points: the last `length` items before each cut, the items
    had before it (masked in the softmax), and the new items after it."""
    seqs, seen, targets = [], [], []
    for before_mask, after_mask in cuts(train, protocol, cfg):
        before = train.select(before_mask)
        had = sp.csr_matrix(before.matrix > 0, dtype=np.float32)
        new = sp.csr_matrix(train.select(after_mask).matrix > 0, dtype=np.float32)
        new = new - new.multiply(had)
        new.eliminate_zeros()
        users = np.flatnonzero((np.diff(new.indptr) > 0) & (np.diff(had.indptr) > 0))
        seqs.append(before.sequences(users, length))
        seen.append(had[users])
        targets.append(new[users])
    if not seqs:
        return np.zeros((0, length), np.int32), sp.csr_matrix((0, train.n_items)), sp.csr_matrix((0, train.n_items))
    seqs, seen, targets = np.vstack(seqs), sp.vstack(seen).tocsr(), sp.vstack(targets).tocsr()
    if len(seqs) > MAX_EXAMPLES:
        keep = np.sort(np.random.default_rng(seed).choice(len(seqs), MAX_EXAMPLES, replace=False))
        seqs, seen, targets = seqs[keep], seen[keep], targets[keep]
    return seqs, seen, targets


class SequenceModel(FactorModel):
    name = "sequence"
    bias_column = True

    def __init__(self, dim: int, max_len: int, seconds: float, protocol: str = "temporal"):
        self.params = {"dim": dim, "max_len": max_len, "seconds": seconds, "protocol": protocol}
        self.seq_len = max_len
        self._net = None

    def __getstate__(self):  # weights travel as NumPy arrays; the torch module is rebuilt on demand
        return {k: v for k, v in self.__dict__.items() if k != "_net"}

    def __setstate__(self, state):
        self.__dict__.update(state, _net=None)

    @property
    def net(self):
        import torch

        if self._net is None:
            net = _network(self.n_items, self.params["dim"], self.params["max_len"])
            net.load_state_dict({k: torch.from_numpy(v) for k, v in self.weights.items()})
            self._net = net.eval()
        return self._net

    def fit(self, train: Interactions, cfg: RecommendSettings, seed: int) -> SequenceModel:
        import torch

        torch.manual_seed(seed)
        torch.set_num_threads(cfg.seq_threads)
        rng = np.random.default_rng(seed)
        self.n_items = train.n_items
        seqs, seen, targets = training_examples(train, self.params["max_len"], self.params["protocol"], cfg, seed)
        held_out = rng.random(len(seqs)) < 0.05
        fit_rows, valid_rows = np.flatnonzero(~held_out), np.flatnonzero(held_out)
        net = _network(self.n_items, self.params["dim"], self.params["max_len"])
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
        started, best, best_state, stale, epochs = time.perf_counter(), float("inf"), None, 0, 0
        while len(fit_rows) and time.perf_counter() - started < self.params["seconds"] and stale < PATIENCE:
            net.train()
            passes = -(-EPOCH_STEPS // max(1, len(fit_rows) // BATCH))
            order = np.concatenate([rng.permutation(fit_rows) for _ in range(passes)])
            for batch in np.array_split(order, max(1, len(order) // BATCH)):
                seq = torch.from_numpy(seqs[batch]).long()
                seq = seq * (torch.rand(seq.shape) >= INPUT_DROPOUT)
                loss = self._loss(net, seq, seen[batch], targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if time.perf_counter() - started > self.params["seconds"]:
                    break
            epochs += 1
            net.eval()
            with torch.no_grad():
                valid = np.mean([self._loss(net, torch.from_numpy(seqs[b]).long(), seen[b], targets[b]).item()
                                 for b in np.array_split(valid_rows, max(1, len(valid_rows) // 2048))]) \
                    if len(valid_rows) else -epochs
            if valid < best - 1e-4:
                best, stale = float(valid), 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                stale += 1
        if best_state:
            net.load_state_dict(best_state)
        self.weights = {k: v.detach().numpy() for k, v in net.state_dict().items()}
        self.params.update(epochs=epochs, examples=len(seqs), valid_loss=round(best, 4))
        self.item_factors = np.ascontiguousarray(np.hstack([self.weights["out"], self.weights["bias"][:, None]]),
                                                 np.float32)
        self._net = net.eval()
        return self

    @staticmethod
    def _loss(net, seq, seen: sp.csr_matrix, targets: sp.csr_matrix):
        """Multinomial log-likelihood of the new items, items already had excluded from the softmax."""
        import torch

        logits = net.logits(net(seq)).masked_fill(torch.from_numpy(seen.toarray() > 0), -1e9)
        target = torch.from_numpy(targets.toarray())
        return -((torch.log_softmax(logits, 1) * target).sum(1) / target.sum(1)).mean()

    def state(self, h: Histories) -> np.ndarray:
        """The encoder's output, with a 1 that meets the item bias column."""
        import torch

        if not len(h.seq):
            return np.zeros((0, self.params["dim"] + 1), np.float32)
        with torch.no_grad():
            out = np.concatenate([self.net(torch.from_numpy(b).long()).numpy()
                                  for b in np.array_split(h.seq, max(1, len(h.seq) // 4096 + 1))])
        return np.hstack([out, np.ones((len(out), 1), np.float32)]).astype(np.float32)
