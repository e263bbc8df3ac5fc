"""What every prediction task shares: the training frame from Feast, the out-of-time split, the
LightGBM fit (early stopping, categoricals, imbalance, calibration), baselines, MLflow logging and the
champion/challenger decision. Task modules (`churn`, `propensity`, `uplift`) only say what the rows
and labels are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from propel.featurestore import store as fstore
from propel.features.build import load_catalog
from propel.lake.tables import Lake
from propel.config import TrainSettings, Workspace
from propel.training import registry
from propel.training.evaluate import classification_metrics, gains_table, plot_curves, plot_importance
from propel.training.labels import cv_folds, holdout_split, time_split, validation_customers
from propel.training.model import PlattCalibrator, PropelClassifier, decile_edges, model_input, prepare

log = logging.getLogger(__name__)
NOT_FEATURES = {"customer_id", "event_timestamp", "label", "group", "campaign_id", "split", "fold", "request_ts"}


class NotEligible(Exception):
    """Too few positives or negatives to train (or promote) responsibly."""


@dataclass
class Frame:
    """A labelled training frame with its split and the features the model may use.

    `split` is train/valid/test/gap; with cross-validation every fitting row is 'train' and `fold` (0..k-1)
    says which fold holds it out. `protocol` says how the test and the validation were chosen, and why."""

    data: pd.DataFrame
    features: list[str]
    categorical: list[str]
    feature_service: str
    label_source: str
    labelled_rows: int  # before `max_rows` sampling
    protocol: dict = field(default_factory=lambda: {"test": "out_of_time", "validation": "split", "folds": 0,
                                                    "reason": ""})

    def part(self, name: str) -> pd.DataFrame:
        return self.data[self.data["split"] == name]

    def fit_rows(self) -> pd.DataFrame:
        return self.data[self.data["split"].isin(("train", "valid"))]

    def folds(self) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
        """(fit, held out) pairs for early stopping and model selection: the k folds, or the one split."""
        if not self.protocol["folds"]:
            return [(self.part("train"), self.part("valid"))]
        fit = self.fit_rows()
        return [(fit[fit["fold"] != k], fit[fit["fold"] == k]) for k in range(self.protocol["folds"])]


@dataclass
class Fitted:
    model: PropelClassifier
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict = field(default_factory=dict)


def build_frame(ws: Workspace, entity: pd.DataFrame, service: str, label_source: str, cfg: TrainSettings,
                gap_days: float, test_periods: int, cv: bool = True) -> Frame:
    """Point-in-time features for every labelled row (Feast), plus the split (`split_protocol`; `cv=False`
    keeps one validation split whatever the size). Rows older
    than the first feature snapshot are left out: no snapshot describes them, so they would train on
    empty features (e.g. campaign touches sent before the snapshots begin)."""
    if entity.empty:
        raise NotEligible(f"{service}: no labelled rows")
    store = fstore.feature_store(ws)
    first = pd.Timestamp(load_catalog(ws)["cutoffs"][0], tz="UTC")
    covered = pd.to_datetime(entity["event_timestamp"], utc=True) >= first
    if not covered.all():
        log.info("%s: %d of %d labelled rows predate the first feature snapshot (%s) and are left out",
                 service, int((~covered).sum()), len(entity), first.date())
        entity = entity[covered.to_numpy()].reset_index(drop=True)
    if entity.empty:
        raise NotEligible(f"{service}: every labelled row predates the first feature snapshot ({first.date()}); "
                          "build more snapshots (`propel features build --snapshots N`)")
    labelled = len(entity)
    data = fstore.historical_features(store, service, sample_customers(entity, cfg.max_rows, cfg.seed))
    protocol = split_protocol(data, cfg, gap_days, test_periods, cv)
    features = [c for c in data.columns if c not in NOT_FEATURES and not c.startswith("_")]
    for c in features:  # yes/no columns are numbers (1/0), as the online store returns them
        values = data[c].dropna()
        if pd.api.types.is_bool_dtype(data[c]) or (data[c].dtype == object and len(values)
                                                    and values.map(type).isin([bool, np.bool_]).all()):
            data[c] = data[c].astype("float64")
    categorical = [c for c in features if not pd.api.types.is_numeric_dtype(data[c])]
    data[categorical] = data[categorical].astype("string")
    return Frame(data, features, categorical, service, label_source, labelled, protocol)


def split_protocol(data: pd.DataFrame, cfg: TrainSettings, gap_days: float, test_periods: int, cv: bool = True) -> dict:
    """Add `split` (and `fold`) to the rows; return the protocol used and why.

    Labels at several moments get the out-of-time test (the latest periods, as production sees them).
    Labels that all describe one moment (a CRM extract) have no later period: a stratified share of
    customers is the test. Either way, fewer fitting rows than `cv_max_rows` are validated by stratified
    k-fold cross-validation by customer (one validation split of a few hundred rows would make early
    stopping, model selection and calibration noisy); more get one validation split of customers."""
    periods = pd.to_datetime(data["event_timestamp"]).dt.tz_localize(None).dt.normalize().nunique()
    if periods > test_periods:
        data["split"] = time_split(data["event_timestamp"], data["customer_id"], test_periods, cfg.valid_share, gap_days)
        test, reason = "out_of_time", f"labels at {periods} moments: the latest {test_periods} are the test"
    else:
        data["split"] = holdout_split(data["label"], data["customer_id"], cfg.test_share, cfg.seed)
        fit = data["split"] == "train"
        data.loc[fit & validation_customers(data["customer_id"], cfg.valid_share), "split"] = "valid"
        test = "customer_holdout"
        reason = (f"labels at {periods} moment(s), no later period to test on: a stratified {cfg.test_share:.0%} of "
                  "customers is the test")
    fit = data["split"].isin(("train", "valid"))
    y = data.loc[fit, "label"]
    folds = min(cfg.cv_folds, int(y.sum()), int((1 - y).sum()))
    if not cv or fit.sum() >= cfg.cv_max_rows or folds < 2:
        return {"test": test, "validation": "split", "folds": 0,
                "reason": f"{reason}; {int(fit.sum()):,} fitting rows: one validation split of customers"}
    data.loc[fit, "split"] = "train"
    data["fold"] = -1
    data.loc[fit, "fold"] = cv_folds(y, data.loc[fit, "customer_id"], folds, cfg.seed)
    return {"test": test, "validation": "cv", "folds": folds,
            "reason": f"{reason}; {int(fit.sum()):,} fitting rows (< train.cv_max_rows {cfg.cv_max_rows:,}): "
                      f"stratified {folds}-fold cross-validation by customer"}


def sample_customers(entity: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """At most ~max_rows rows: whole customers chosen by a seeded hash of their id, so the same
    customers are kept run after run (comparable champions) and no customer is split across splits."""
    if not max_rows or len(entity) <= max_rows:
        return entity
    keys = pd.util.hash_pandas_object(entity["customer_id"].astype(str), index=False, hash_key=f"propel{seed:010d}")
    share = max_rows / len(entity)
    return entity[(keys.to_numpy() % 1_000_000) < share * 1_000_000].reset_index(drop=True)


def check_eligible(train: pd.DataFrame, cfg: TrainSettings, what: str) -> None:
    pos, neg = int(train["label"].sum()), int((1 - train["label"]).sum())
    if pos < cfg.min_positives or neg < cfg.min_negatives:
        raise NotEligible(f"{what}: the training window has {pos:,} positives and {neg:,} negatives; at least "
                          f"{cfg.min_positives:,} and {cfg.min_negatives:,} are needed (train.min_positives / "
                          "train.min_negatives in propel.toml). Add history, or lower the thresholds knowingly.")


# Fewer rows than this are fitted on one thread: a second OpenMP thread costs more than it saves there (on a
# busy 2-core machine 45 ms instead of 6 ms per boosting round for 1,000 rows).
ONE_THREAD_ROWS = 50_000


def lgb_params(cfg: TrainSettings, pos_rate: float, rows: int | None = None) -> dict:
    threads = 1 if rows is not None and rows < ONE_THREAD_ROWS else cfg.threads
    return {"objective": "binary", "metric": "auc", "learning_rate": cfg.learning_rate, "num_leaves": cfg.num_leaves,
            "min_data_in_leaf": cfg.min_data_in_leaf, "feature_fraction": 0.7, "bagging_fraction": 0.8,
            "bagging_freq": 1, "lambda_l2": 5.0, "cat_smooth": 10, "seed": cfg.seed, "deterministic": True,
            "force_row_wise": True, "num_threads": threads, "verbose": -1,
            # Rare positives get more weight; early stopping watches AUC, which the weight does not bias,
            # and calibration afterwards restores honest probabilities.
            "scale_pos_weight": float(np.sqrt((1 - pos_rate) / pos_rate)) if 0 < pos_rate < 0.25 else 1.0}


def cross_validate(frame: Frame, folds: list[tuple[pd.DataFrame, pd.DataFrame]], cfg: TrainSettings, params: dict,
                   categories: dict[str, list[str]]) -> dict:
    """LightGBM with early stopping on each held-out part: the boosters, their rounds, held-out raw scores
    and labels, and the mean held-out ROC AUC (model selection). A held-out part with one class only (a
    fold without positives) stops on log loss and is left out of the mean."""
    cat = frame.categorical or "auto"
    out = {"boosters": [], "rounds": [], "raw": [], "y": [], "aucs": []}
    for train, held in folds:
        xt, xh = prepare(train, frame.features, categories), prepare(held, frame.features, categories)
        both = held["label"].nunique() == 2
        booster = lgb.train({**params, **({} if both else {"metric": "binary_logloss"})},
                            lgb.Dataset(xt, train["label"], categorical_feature=cat), num_boost_round=cfg.max_rounds,
                            valid_sets=[lgb.Dataset(xh, held["label"], categorical_feature=cat)],
                            callbacks=[lgb.early_stopping(cfg.early_stopping, verbose=False)])
        raw = booster.predict(xh, num_iteration=booster.best_iteration)
        out["boosters"].append(booster)
        out["rounds"].append(max(1, booster.best_iteration))
        out["raw"].append(raw)
        out["y"].append(held["label"].to_numpy())
        if both:
            out["aucs"].append(roc_auc_score(held["label"], raw))
    out["auc"] = float(np.mean(out["aucs"])) if out["aucs"] else float("nan")
    return out


def fit_classifier(frame: Frame, folds: list[tuple[pd.DataFrame, pd.DataFrame]], cfg: TrainSettings, task: str,
                   params: dict | None = None, refit: bool = True, isotonic: bool = False, cv: dict | None = None) -> Fitted:
    """LightGBM with early stopping on the held-out rows of each fold (one validation split, or k folds),
    then Platt (or isotonic) calibration on their held-out scores.

    With `refit`, the final booster is trained again on all fitting rows for the early-stopped number of
    rounds, scaled to the larger set; the calibration fitted on the early-stopped boosters' held-out scores
    carries over (same rounds per row, same score scale). On the demo this adds ~0.001 test ROC AUC to
    propensity and lowers Brier slightly. Without it (one split only) the early-stopped booster is the model.
    """
    fit = pd.concat([folds[0][0], *(held for _, held in folds)]) if len(folds) == 1 else pd.concat([h for _, h in folds])
    categories = {c: sorted(fit[c].dropna().unique().tolist()) for c in frame.categorical}
    params = params or lgb_params(cfg, float(fit["label"].mean()), len(fit))
    cv = cv or cross_validate(frame, folds, cfg, params, categories)
    calibrator = (IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1) if isotonic else PlattCalibrator()
                  ).fit(np.concatenate(cv["raw"]), np.concatenate(cv["y"]))
    best = round(float(np.mean(cv["rounds"])))
    rounds = best
    if refit or len(folds) > 1:
        rounds = max(1, round(best * len(fit) / np.mean([len(t) for t, _ in folds])))
        booster = lgb.train(params, lgb.Dataset(prepare(fit, frame.features, categories), fit["label"],
                                                categorical_feature=frame.categorical or "auto"), num_boost_round=rounds)
    else:
        booster = cv["boosters"][0]
    model = PropelClassifier(booster, calibrator, frame.features, categories, task, frame.feature_service)
    model.decile_edges = decile_edges(model.score(fit))
    return Fitted(model, params={**params, "best_iteration": best, "final_rounds": rounds})


def candidates(cfg: TrainSettings, pos_rate: float, rows: int) -> dict[str, dict]:
    """The LightGBM settings model selection compares (a careful first search, not an exhaustive one): the
    configured ones, shallow near-additive trees (as good as a logistic model when effects add up), small
    regularised trees, and larger trees once the data is large enough to grow them (`cv_max_rows`). Leaves
    never need more than ~2% of the rows."""
    base = lgb_params(cfg, pos_rate, rows)
    leaf = max(5, min(cfg.min_data_in_leaf, rows // 50))
    grid = {"configured": base,
            "additive": {**base, "num_leaves": 3, "min_data_in_leaf": leaf, "learning_rate": 0.1, "lambda_l2": 1.0},
            "small": {**base, "num_leaves": 7, "min_data_in_leaf": leaf, "lambda_l2": 10.0}}
    if rows >= cfg.cv_max_rows:
        grid["large"] = {**base, "num_leaves": 63, "min_data_in_leaf": cfg.min_data_in_leaf}
    return grid


# Model selection compares candidates on at most this many fitting rows (a seeded sample of whole customers):
# beyond it the choice is settled and each candidate would cost a full fit.
SELECT_MAX_ROWS = 100_000


def select_params(frame: Frame, cfg: TrainSettings, tune_seconds: float) -> tuple[str, dict, dict[str, float], dict | None]:
    """The candidate with the best held-out ROC AUC (plus an Optuna search with `tune_seconds`); returns
    (name, parameters, every candidate's held-out AUC, the winner's cross-validation when it can be reused)."""
    folds = frame.folds()
    sampled = sum(len(h) for _, h in folds) + (len(folds[0][0]) if len(folds) == 1 else 0) > SELECT_MAX_ROWS
    if sampled:
        keep = set(sample_customers(frame.fit_rows(), SELECT_MAX_ROWS, cfg.seed)["customer_id"])
        folds = [(t[t["customer_id"].isin(keep)], h[h["customer_id"].isin(keep)]) for t, h in folds]
    fit = frame.fit_rows()
    categories = {c: sorted(fit[c].dropna().unique().tolist()) for c in frame.categorical}
    grid = candidates(cfg, float(fit["label"].mean()), len(fit))
    if tune_seconds:
        grid["optuna"] = tune(frame, folds, categories, cfg, tune_seconds)
    results = {name: cross_validate(frame, folds, cfg, params, categories) for name, params in grid.items()}
    aucs = {name: r["auc"] for name, r in results.items()}
    best = max(aucs, key=lambda n: (np.nan_to_num(aucs[n], nan=-1), n == "configured"))
    return best, grid[best], aucs, None if sampled else results[best]


def tune(frame: Frame, folds, categories: dict, cfg: TrainSettings, seconds: float) -> dict:
    """Optuna search of LightGBM parameters within a time budget, on the held-out AUC; returns the best."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = lgb_params(cfg, float(frame.fit_rows()["label"].mean()), len(frame.fit_rows()))

    def objective(trial: optuna.Trial) -> float:
        params = {**base, "num_leaves": trial.suggest_int("num_leaves", 3, 128, log=True),
                  "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
                  "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 5, 300, log=True),
                  "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
                  "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 10, log=True)}
        return cross_validate(frame, folds, cfg, params, categories)["auc"]

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg.seed))
    study.optimize(objective, timeout=seconds)
    return {**base, **study.best_params}


# Rows the logistic baseline learns from at most (a seeded sample beyond): a linear model over ~100 columns
# has converged long before, while its one-hot, imputed and scaled copies of a 2M-row frame cost gigabytes.
LOGISTIC_MAX_ROWS = 250_000


def logistic_baseline(frame: Frame, train: pd.DataFrame, test: pd.DataFrame, seed: int) -> np.ndarray:
    """Logistic regression on the same features: imputed, scaled numerics and one-hot categoricals."""
    if len(train) > LOGISTIC_MAX_ROWS:
        train = train.sample(LOGISTIC_MAX_ROWS, random_state=seed)
    numeric = [f for f in frame.features if f not in frame.categorical]
    pre = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler()), numeric),
        ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="missing"),
                              OneHotEncoder(handle_unknown="ignore", min_frequency=20)), frame.categorical),
    ])
    pipe = make_pipeline(pre, LogisticRegression(max_iter=2000, C=0.5, random_state=seed))
    def cast(d: pd.DataFrame) -> pd.DataFrame:  # scikit-learn wants np.nan, not pd.NA, for missing strings
        out = d[frame.features].copy()
        for c in frame.categorical:
            out[c] = out[c].astype(object).where(out[c].notna(), np.nan)
        return out

    pipe.fit(cast(train), train["label"])
    return pipe.predict_proba(cast(test))[:, 1]


def data_hash(df: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(df, index=False).values.tobytes()).hexdigest()[:16]


@contextmanager
def tracked_run(ws: Workspace, task: str, frame: Frame, params: dict, cfg: TrainSettings, metric: str):
    """An MLflow run with what every task logs: tags, parameters, row counts, data hash, training data."""
    with mlflow.start_run(experiment_id=registry.experiment(ws, task), run_name=f"{task}-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        protocol = frame.protocol
        # feast.*: Feast's own MLflow tag convention (feast.mlflow_integration)
        mlflow.set_tags({"propel.task": task, "feast.project": ws.settings().feast.project,
                         "feast.feature_service": frame.feature_service,
                         "propel.label_source": frame.label_source, "propel.lake_load": load_catalog(ws)["lake_load"],
                         "propel.selection_metric": metric,
                         **{f"propel.lake_version.{t}": v for t, v in Lake(ws).versions().items()},
                         "propel.protocol": f"{protocol['test']}+" + (f"cv{protocol['folds']}" if protocol["folds"] else "split"),
                         "propel.protocol_reason": protocol["reason"]})
        mlflow.log_params({k: v for k, v in params.items() if not isinstance(v, (dict, list))})
        mlflow.log_params({"protocol_test": protocol["test"], "protocol_validation": protocol["validation"],
                           "cv_folds": protocol["folds"]})
        mlflow.log_params({"features": len(frame.features), "categorical": len(frame.categorical),
                           "labelled_rows": frame.labelled_rows,
                           **{f"rows_{s}": int((frame.data["split"] == s).sum()) for s in ("train", "valid", "test", "gap")},
                           "data_hash": data_hash(frame.data[[*frame.features, "label", "split"]])})
        train = frame.part("train").head(50_000)
        mlflow.log_input(mlflow.data.from_pandas(model_input(train, frame.features, frame.categorical)
                                                 .assign(label=train["label"].astype("float64")),
                                                 name=f"{task}-train-{frame.feature_service}"), context="training")
        yield run


# logged with every model (MLflow code_paths), so it loads from the registry where Propel is not installed
MODEL_CODE = [str(Path(__file__).resolve().parents[1])]


def log_model(task: str, model, frame: Frame, test: pd.DataFrame) -> str:
    """Log the pyfunc with its code, signature and input example, register it; returns the new version."""
    sample = model_input(test.head(200), frame.features, frame.categorical)
    example = sample.head(5)
    info = mlflow.pyfunc.log_model(
        name="model", python_model=model, registered_model_name=task, input_example=example, code_paths=MODEL_CODE,
        signature=infer_signature(sample, model.predict(None, example)),
        pip_requirements=[f"lightgbm=={lgb.__version__}", "scikit-learn", "pandas", "numpy"])
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_model_version_tag(task, version, "feast.feature_service", frame.feature_service)
    return version


def log_classifier_run(ws: Workspace, task: str, frame: Frame, fitted: Fitted, scores: dict[str, np.ndarray],
                       extra_metrics: dict[str, float], cfg: TrainSettings) -> tuple[str, str]:
    """Metrics of the model and its baselines, plots, tables and the model. Returns (run_id, version)."""
    test = frame.part("test")
    y = test["label"].to_numpy()
    with tracked_run(ws, task, frame, fitted.params, cfg, cfg.selection_metric) as run:
        metrics = {}
        for name, s in scores.items():
            metrics.update({(k if name == "lightgbm" else f"{name}_{k}"): v for k, v in classification_metrics(y, s).items()})
        metrics.update(extra_metrics)
        mlflow.log_metrics(metrics)
        fitted.metrics = metrics
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            for p in plot_curves(y, scores, out):
                mlflow.log_artifact(str(p), "plots")
            contrib = fitted.model.booster.predict(prepare(test, frame.features, fitted.model.categories), pred_contrib=True)
            importance = pd.Series(np.abs(contrib[:, :-1]).mean(axis=0), index=frame.features).sort_values(ascending=False)
            mlflow.log_artifact(str(plot_importance(importance, out)), "plots")
            importance.rename("mean_abs_shap").to_csv(out / "feature_importance.csv")
            gains_table(y, scores["lightgbm"]).to_csv(out / "gains_table.csv", index=False)
            (out / "features.json").write_text(json.dumps({"features": frame.features, "categorical": frame.categorical}))
            for name in ("feature_importance.csv", "gains_table.csv", "features.json"):
                mlflow.log_artifact(str(out / name), "tables")
        return run.info.run_id, log_model(task, fitted.model, frame, test)


LOWER_IS_BETTER = {"log_loss", "brier"}


@dataclass
class TrainResult:
    task: str
    version: str
    run_id: str
    metrics: dict
    decision: str
    promoted: bool
    notes: list[str]

    def summary(self) -> str:
        m = self.metrics
        head = ", ".join(f"{k} {m[k]:.3f}" for k in ("roc_auc", "pr_auc", "brier", "qini", "ndcg_at_10", "recall_at_20") if k in m)
        notes = "".join(f"\n  note: {n}" for n in self.notes)
        return f"{self.task} v{self.version}: {head}; {'champion' if self.promoted else 'challenger'} ({self.decision}){notes}"


def decide_and_promote(ws: Workspace, task: str, version: str, run_id: str, metrics: dict, test: pd.DataFrame,
                       cfg: TrainSettings, notes: list[str], metric: str | None = None, metric_fn=None) -> TrainResult:
    """Score the current champion on this run's test set and promote the new version only if it is better."""
    metric = metric or cfg.selection_metric
    metric_fn = metric_fn or (lambda model, t: classification_metrics(t["label"].to_numpy(), model.score(t))[metric])
    if "logistic_roc_auc" in metrics and metrics["roc_auc"] < metrics["logistic_roc_auc"]:
        notes.append(f"LightGBM ROC AUC {metrics['roc_auc']:.4f} is below the logistic baseline "
                     f"{metrics['logistic_roc_auc']:.4f} on the test split")
    client = registry.tracking(ws)
    champ = registry.champion_version(client, task)
    champion_value = None
    if champ is not None and str(champ.version) != str(version):
        model = mlflow.pyfunc.load_model(f"models:/{task}@{registry.CHAMPION}").unwrap_python_model()
        try:
            champion_value = float(metric_fn(model, test))
        except KeyError as exc:  # the champion needs features this test set does not have
            notes.append(f"champion v{champ.version} cannot score this test set ({exc}); not promoting automatically")
            champion_value = float("inf") if metric not in LOWER_IS_BETTER else float("-inf")
    decision = registry.decide(metric, metrics[metric], champion_value, cfg.promotion_margin,
                               higher_is_better=metric not in LOWER_IS_BETTER)
    client.set_tag(run_id, "propel.decision", decision.reason)
    client.set_model_version_tag(task, version, "decision", decision.reason)
    if decision.promote:
        registry.set_champion(ws, task, version, decision.reason, {metric: metrics[metric]})
    return TrainResult(task, version, run_id, metrics, decision.reason, decision.promote, notes)


def train_classifier(ws: Workspace, task: str, frame: Frame, cfg: TrainSettings, tune_seconds: float,
                     heuristic: str, oracle_fn=None) -> TrainResult:
    """The churn/propensity flow: gate, model selection (and tuning), fit, score the model and its baselines
    on the test, log everything, then the champion decision. `heuristic` is the feature ranked as the simple
    baseline; `oracle_fn(test, scores)` adds ground-truth metrics on generated data."""
    fit, test = frame.fit_rows(), frame.part("test")
    check_eligible(fit, cfg, task)
    if test["label"].nunique() < 2:
        raise NotEligible(f"{task}: the test split has {len(test):,} rows of one class only; add labelled rows "
                          "(both outcomes) or history")
    chosen, params, selection, cv = select_params(frame, cfg, tune_seconds)
    fitted = fit_classifier(frame, frame.folds(), cfg, task, params, cv=cv)
    fitted.params.update({"selected": chosen, **{f"selection_auc_{n}": round(v, 5) for n, v in selection.items()}})
    scores = {"lightgbm": fitted.model.score(test), "lightgbm_uncalibrated": fitted.model.raw_score(test),
              # the baseline learns from the same rows as the refitted booster
              "logistic": logistic_baseline(frame, fit, test, cfg.seed)}
    if heuristic in test:
        scores[f"heuristic_{heuristic}"] = test[heuristic].rank(pct=True).fillna(0.5).to_numpy()
    extra = oracle_fn(test, scores["lightgbm"]) if oracle_fn else {}
    # the champion against the better of its baselines fitted on the same rows (issue 16: within 0.005)
    extra["baseline_gap_roc_auc"] = max(0.0, roc_auc_score(test["label"], scores["logistic"])
                                        - roc_auc_score(test["label"], scores["lightgbm"]))
    run_id, version = log_classifier_run(ws, task, frame, fitted, scores, extra, cfg)
    return decide_and_promote(ws, task, version, run_id, fitted.metrics, test, cfg, [])
