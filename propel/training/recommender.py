"""`propel train recommender`: what each customer should see next, from implicit feedback.

Every model - popularity, random, item-kNN (cosine, BM25), ALS, BPR and a PyTorch sequence model -
is fitted on the same split and evaluated on the same test at K = 10 and 20. The protocol adapts to the
data (`[recommend].protocol`, see propel/training/interactions.py): a temporal holdout (each customer's new items
in the last window) when enough customers are active in it, else each customer's latest items held out
(sparse, long logs); which one and why is logged and printed. ALS and BPR are tuned on a validation
split one step earlier (a small grid, or Optuna within --tune-seconds). Everything goes to
MLflow (experiment `recommender`) with a comparison table and plot. The winner by
`[recommend].selection_metric` is packaged as a `propel.training.recommender_model.Recommender` and registered as
`recommender`; it becomes champion only if it beats the current champion evaluated on this run's test.

The package keeps the winner's item side as fitted on the training part (so the next challenger's test,
later in time, is unseen by it) and refreshes every customer's state from their full history (fold-in).
"""

from __future__ import annotations

import logging
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import scipy.sparse as sp
from mlflow.models import infer_signature

from propel.lake.tables import Lake
from propel.config import RecommendSettings, Workspace
from propel.training import registry
from propel.training.evaluate import _save, plt
from propel.training.interactions import (MIN_TEST_CUSTOMERS, RELIABLE_TEST_CUSTOMERS, Events, Histories, Interactions,
                                          Split, customers_with_items, holdout, load_events, popularity,
                                          validation_split)
from propel.training.pipeline import MODEL_CODE, NotEligible, TrainResult, decide_and_promote
from propel.training.rank_metrics import KS, all_metrics
from propel.training.rec_models import ALS, BPR, ItemKNN, Popularity, RandomModel, RecModel
from propel.training.recommender_model import TASK, Recommender, example_input
from propel.training.sequence_model import SequenceModel
from propel.training.topk import top_k_rows

log = logging.getLogger(__name__)
SCORE_CELLS = 2**24  # score-matrix cells per evaluation chunk (bounds memory for large catalogues)


def evaluate(score, split: Split, seq_len: int = 0) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of a scorer on the split's test, and its top lists. `score(histories, rows)` returns
    customers x items scores; customers without history get popularity (the serving fallback); items
    unknown before the cutoff and items the customer already had are never recommended."""
    h = split.histories(seq_len)
    empty = np.diff(h.weights.indptr) == 0
    top = np.full((len(h), max(KS)), -1, np.int64)
    step = max(1, SCORE_CELLS // split.relevant.shape[1])
    for start in range(0, len(h), step):
        rows = np.arange(start, min(start + step, len(h)))
        s = np.array(score(Histories(h.weights[rows], None if h.seq is None else h.seq[rows]), rows), np.float32)
        s[empty[rows]] = split.popularity
        s[:, ~split.known_items] = -np.inf
        seen = split.seen[rows].tocoo()
        s[seen.row, seen.col] = -np.inf
        top[rows] = top_k_rows(s, max(KS))
    metrics = all_metrics(top, split.relevant, split.popularity)
    if split.cold.any():
        cold = all_metrics(top[split.cold], split.relevant[split.cold], split.popularity)
        metrics.update({f"cold_{k}": v for k, v in cold.items() if not k.startswith(("coverage", "pop_rank"))})
    return metrics, top


def model_scorer(model: RecModel):
    return lambda h, rows: model.scores(model.state(h))


def champion_scorer(champion: Recommender, items: np.ndarray):
    """Score a registered Recommender on a split with its own id maps: histories are translated into
    its item space (items it does not know are dropped) and its scores back into the split's."""
    to_champ = pd.Index(champion.items).get_indexer(items)
    usable = to_champ >= 0
    usable[usable] = champion.known[to_champ[usable]]
    seq_map = np.r_[0, np.where(to_champ >= 0, to_champ + 1, 0)].astype(np.int32)

    def score(h: Histories, rows) -> np.ndarray:
        w = h.weights.tocoo()
        keep = to_champ[w.col] >= 0
        weights = sp.csr_matrix((w.data[keep], (w.row[keep], to_champ[w.col[keep]])), shape=(len(h), len(champion.items)))
        seq = None if h.seq is None else seq_map[h.seq]
        inner = champion.model.scores(champion.model.state(Histories(weights, seq)))
        out = np.full((len(h), len(items)), -np.inf, np.float32)
        out[:, usable] = inner[:, to_champ[usable]]
        return out

    return score


def tune(kind: str, events: Events, split: Split, cfg: RecommendSettings, seed: int, seconds: float) -> dict:
    """ALS/BPR parameters by NDCG@10 on a validation split (the same protocol inside the training part):
    a small grid around the settings, or Optuna (TPE, seeded) within `seconds`. On a sparse log (the
    leave-last-out protocol: a few items per customer, cheap fits) the ALS grid also tries 10x the
    regularization, which such data needs most."""
    valid = validation_split(events, split, cfg, seed)
    make = {"als": lambda p: ALS(**p), "bpr": lambda p: BPR(**p)}[kind]
    if kind == "als":
        base = {"factors": cfg.als_factors, "regularization": cfg.als_regularization, "alpha": cfg.als_alpha,
                "iterations": cfg.als_iterations}
        regs = (cfg.als_regularization,) + ((10 * cfg.als_regularization,) if split.protocol == "leave_last_out" else ())
        grid = [{**base, "factors": f, "alpha": a, "regularization": r}
                for f in (max(8, cfg.als_factors // 2), cfg.als_factors) for a in (cfg.als_alpha / 4, cfg.als_alpha)
                for r in regs]
    else:
        base = {"factors": cfg.als_factors, "learning_rate": cfg.bpr_learning_rate, "regularization": 0.01,
                "iterations": cfg.bpr_iterations}
        grid = [base, {**base, "learning_rate": cfg.bpr_learning_rate / 5}]
    if len(valid.test_users) < MIN_TEST_CUSTOMERS:
        return base

    def ndcg(params: dict) -> float:
        model = make(params).fit(valid.train, cfg, seed)
        return evaluate(model_scorer(model), valid)[0]["ndcg_at_10"]

    if not seconds:
        return max(grid, key=ndcg)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: optuna.Trial) -> float:
        p = {"factors": trial.suggest_int("factors", 16, 128, log=True),
             "regularization": trial.suggest_float("regularization", 1e-3, 1.0, log=True)}
        if kind == "als":
            p |= {"alpha": trial.suggest_float("alpha", 1.0, 100.0, log=True),
                  "iterations": trial.suggest_int("iterations", 5, 30)}
        else:
            p |= {"learning_rate": trial.suggest_float("learning_rate", 1e-3, 0.1, log=True),
                  "iterations": trial.suggest_int("iterations", 30, 300, log=True)}
        return ndcg(p)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial({k: v for k, v in base.items()})
    study.optimize(objective, timeout=seconds)
    return {**base, **study.best_params}


def candidates(events: Events, split: Split, cfg: RecommendSettings, seed: int, tune_seconds: float) -> dict[str, RecModel]:
    return {"popular": Popularity(split.popularity), "random": RandomModel(),
            "itemknn_cosine": ItemKNN("cosine", cfg.knn_neighbours), "itemknn_bm25": ItemKNN("bm25", cfg.knn_neighbours),
            "als": ALS(**tune("als", events, split, cfg, seed, tune_seconds / 2)),
            "bpr": BPR(**tune("bpr", events, split, cfg, seed, tune_seconds / 2)),
            "sequence": SequenceModel(cfg.seq_dim, cfg.seq_max_len, cfg.seq_seconds, split.protocol)}


def oracle_metrics(oracle, events: Events, split: Split, top: np.ndarray) -> dict[str, float]:
    """The generator plants a preferred category per person: recommending the most popular new items of
    the true preferred category is a strong reference. Compared on test customers with ground truth."""
    preferred = oracle.preferred_category(events.customers[split.test_users])
    rows = np.flatnonzero(pd.notna(preferred))
    if not len(rows):
        return {}
    category = events.catalog["category"].to_numpy(object)
    boost = (category[None, :] == preferred[:, None]) * (split.popularity.max() + 1)
    oracle_top = evaluate(lambda h, r: split.popularity + boost[r], split)[1]
    relevant = split.relevant[rows]
    return {"oracle_ndcg_at_10": all_metrics(oracle_top[rows], relevant, split.popularity)["ndcg_at_10"],
            "model_ndcg_at_10_on_truth_rows": all_metrics(top[rows], relevant, split.popularity)["ndcg_at_10"]}


def comparison_artifacts(table: pd.DataFrame, winner: str, metric: str, protocol: str, out: Path) -> list[Path]:
    table.to_csv(out / "model_comparison.csv", index_label="model")
    shown = [m for m in ("ndcg_at_10", "recall_at_20", "cold_ndcg_at_10") if m in table]
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.5))
    for ax, m in zip(np.atleast_1d(axes), shown):
        ax.barh(table.index, table[m], color=["tab:orange" if n == winner else "tab:blue" for n in table.index])
        ax.set(title=m, xlabel=m)
    fig.suptitle(f"Recommenders on the same {protocol} test (winner by {metric}: {winner})", fontsize=9)
    return [out / "model_comparison.csv", _save(fig, out / "model_comparison.png")]


def package(winner: RecModel, events: Events, split: Split, cfg: RecommendSettings) -> Recommender:
    """The serving model: the winner as fitted on the split's training part with every customer's full
    history folded in, the catalogue, and popularity (over the split's window) as of the end of the data
    for the unknown-customer fallback."""
    full = events.window(None, events.end, cfg.half_life_days)
    return Recommender(winner, events.customers, events.items, full.histories(seq_len=winner.seq_len), already_had(full),
                       events.catalog, popularity(full, events, events.end, split.popular_days), split.known_items, cfg)


def already_had(full: Interactions) -> sp.csr_matrix:
    """What serving excludes (`exclude_purchased`): purchases; in a log without any (ratings, views),
    every item a customer interacted with, as the evaluation treats their history."""
    return full.purchased if full.purchase.any() else sp.csr_matrix(full.matrix > 0, dtype=np.float32)


def protocol_name(split: Split, cfg: RecommendSettings) -> str:
    if split.protocol == "temporal":
        return f"temporal holdout of the last {cfg.test_days} days"
    return f"leave-last-{cfg.holdout_share:.0%}-out per customer"


def check_testable(events: Events, split: Split, cfg: RecommendSettings) -> None:
    """Enough test customers to rank models, or NotEligible saying what is missing."""
    if split.protocol == "temporal":
        if len(split.test_users) < MIN_TEST_CUSTOMERS:
            raise NotEligible(f"recommender: only {len(split.test_users)} customers have new items in the last "
                              f"{cfg.test_days} days (test window); at least {MIN_TEST_CUSTOMERS} are needed. Add "
                              "history, or change recommend.test_days (or recommend.protocol) in propel.toml.")
        return
    eligible = customers_with_items(events, 2)
    if eligible < RELIABLE_TEST_CUSTOMERS or len(split.test_users) < MIN_TEST_CUSTOMERS:
        raise NotEligible(f"recommender: only {eligible:,} customers have interactions with at least 2 distinct items "
                          f"({len(split.test_users):,} with a held-out item that counts as a hit); at least "
                          f"{RELIABLE_TEST_CUSTOMERS} are needed to hold out each customer's latest items and rank models. "
                          "Add more customers' history, or count more event types as interactions "
                          "(recommend.event_weights / recommend.relevant_events in propel.toml).")


def train(ws: Workspace, tune_seconds: float = 0, oracle=None) -> TrainResult:
    cfg, tcfg = ws.settings().recommend, ws.settings().train
    lake = Lake(ws)
    events = load_events(lake.connect(threads=cfg.threads), cfg)
    if not len(events.ts):
        raise NotEligible("recommender: the lake has no item events with a positive weight (recommend.event_weights)")
    split, why = holdout(events, cfg, tcfg.seed)
    check_testable(events, split, cfg)
    log.info("recommender: validation by %s (%s)", protocol_name(split, cfg), why)
    models = candidates(events, split, cfg, tcfg.seed, tune_seconds)
    results, tops = {}, {}
    for name, model in models.items():
        started = time.perf_counter()
        model.fit(split.train, cfg, tcfg.seed)
        fitted = time.perf_counter() - started
        metrics, tops[name] = evaluate(model_scorer(model), split, model.seq_len)
        results[name] = {**metrics, "fit_seconds": round(fitted, 2), "eval_seconds": round(time.perf_counter() - started - fitted, 2)}
        log.info("recommender %s: %s", name, {k: round(v, 4) for k, v in metrics.items() if k.endswith("_at_10")})
    metric = cfg.selection_metric
    table = pd.DataFrame(results).T
    winner = max((n for n in models if n != "random"), key=lambda n: table.loc[n, metric])
    metrics = {**results[winner], **{f"{n}_{k}": v for n, r in results.items() for k, v in r.items()}}
    if oracle:
        metrics.update(oracle_metrics(oracle, events, split, tops[winner]))
    lift = metrics[metric] / max(metrics[f"popular_{metric}"], 1e-12) - 1
    notes = [f"winner {winner}: {metric} {metrics[metric]:.4f}, {lift:+.0%} over popularity "
             f"({metrics[f'popular_{metric}']:.4f}); {len(split.test_users):,} test customers "
             f"({int(split.cold.sum()):,} cold-start)", f"validation: {protocol_name(split, cfg)} ({why})"]
    rec = package(models[winner], events, split, cfg)
    with mlflow.start_run(experiment_id=registry.experiment(ws, TASK), run_name=f"{TASK}-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        manifests = lake.manifests()
        mlflow.set_tags({"propel.task": TASK, "propel.selection_metric": metric, "propel.winner": winner,
                         "propel.protocol": split.protocol,
                         "propel.lake_load": manifests[-1]["load_id"] if manifests else ""})
        mlflow.log_params({"winner": winner, **{f"{winner}_{k}": v for k, v in models[winner].params.items()},
                           **{f"{n}_{k}": v for n in ("als", "bpr") for k, v in models[n].params.items()},
                           "protocol": split.protocol, "protocol_reason": why,
                           **({"cutoff": pd.Timestamp(split.cutoff, unit="s").isoformat(), "test_days": cfg.test_days}
                              if split.protocol == "temporal" else {"holdout_share": cfg.holdout_share}),
                           "customers": len(events.customers), "items": len(events.items), "events": len(events.ts),
                           "train_interactions": split.train.matrix.nnz, "test_customers": len(split.test_users),
                           "cold_customers": int(split.cold.sum()), "event_weights": str(cfg.event_weights),
                           "half_life_days": cfg.half_life_days, "confidence": cfg.confidence,
                           "repeat_relevant": cfg.repeat_relevant, "tune_seconds": tune_seconds})
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            for path in comparison_artifacts(table, winner, metric, split.protocol.replace("_", "-"), Path(tmp)):
                mlflow.log_artifact(str(path), "tables" if path.suffix == ".csv" else "plots")
        example = example_input()
        info = mlflow.pyfunc.log_model(
            name="model", python_model=rec, registered_model_name=TASK, input_example=example, code_paths=MODEL_CODE,
            signature=infer_signature(example, rec.predict(None, example), params={"k": 10}),
            pip_requirements=[f"implicit=={version('implicit')}", f"torch=={version('torch')}", "numpy", "pandas",
                              "scipy", "threadpoolctl"])
    return decide_and_promote(ws, TASK, str(info.registered_model_version), run.info.run_id, metrics, split, tcfg,
                              notes, metric, lambda champion, s: evaluate(champion_scorer(champion, events.items), s,
                                                                           champion.model.seq_len)[0][metric])
