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
from sklearn.metrics import brier_score_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from propel.featurestore import store as fstore
from propel.features.build import load_catalog
from propel.lake.tables import Lake
from propel.config import TrainSettings, Workspace
from propel.training import registry
from propel.training.evaluate import classification_metrics, gains_table, plot_curves, plot_importance
from propel.training.labels import time_split
from propel.training.model import PlattCalibrator, PropelClassifier, decile_edges, model_input, prepare

log = logging.getLogger(__name__)
NOT_FEATURES = {"customer_id", "event_timestamp", "label", "group", "campaign_id", "split", "request_ts"}


class NotEligible(Exception):
    """Too few positives or negatives to train (or promote) responsibly."""


@dataclass
class Frame:
    """A labelled training frame with its split and the features the model may use."""

    data: pd.DataFrame
    features: list[str]
    categorical: list[str]
    feature_service: str
    label_source: str
    labelled_rows: int  # before `max_rows` sampling

    def part(self, name: str) -> pd.DataFrame:
        return self.data[self.data["split"] == name]


@dataclass
class Fitted:
    model: PropelClassifier
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict = field(default_factory=dict)


def build_frame(ws: Workspace, entity: pd.DataFrame, service: str, label_source: str, cfg: TrainSettings,
                gap_days: float, test_periods: int) -> Frame:
    """Point-in-time features for every labelled row (Feast), plus the out-of-time split. Rows older
    than the first feature snapshot are left out: no snapshot describes them, so they would train on
    empty features (e.g. campaign touches sent before the snapshots begin)."""
    store = fstore.feature_store(ws)
    first = pd.Timestamp(load_catalog(ws)["cutoffs"][0], tz="UTC")
    covered = pd.to_datetime(entity["event_timestamp"], utc=True) >= first
    if not covered.all():
        log.info("%s: %d of %d labelled rows predate the first feature snapshot (%s) and are left out",
                 service, int((~covered).sum()), len(entity), first.date())
        entity = entity[covered.to_numpy()].reset_index(drop=True)
    labelled = len(entity)
    data = fstore.historical_features(store, service, sample_customers(entity, cfg.max_rows, cfg.seed))
    data["split"] = time_split(data["event_timestamp"], data["customer_id"], test_periods, cfg.valid_share, gap_days)
    features = [c for c in data.columns if c not in NOT_FEATURES and not c.startswith("_")]
    categorical = [c for c in features if not pd.api.types.is_numeric_dtype(data[c]) or pd.api.types.is_bool_dtype(data[c])]
    data[categorical] = data[categorical].astype("string")
    return Frame(data, features, categorical, service, label_source, labelled)


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


def lgb_params(cfg: TrainSettings, pos_rate: float) -> dict:
    return {"objective": "binary", "metric": "auc", "learning_rate": cfg.learning_rate, "num_leaves": cfg.num_leaves,
            "min_data_in_leaf": cfg.min_data_in_leaf, "feature_fraction": 0.7, "bagging_fraction": 0.8,
            "bagging_freq": 1, "lambda_l2": 5.0, "cat_smooth": 10, "seed": cfg.seed, "deterministic": True,
            "force_row_wise": True, "num_threads": cfg.threads, "verbose": -1,
            # Rare positives get more weight; early stopping watches AUC, which the weight does not bias,
            # and calibration afterwards restores honest probabilities.
            "scale_pos_weight": float(np.sqrt((1 - pos_rate) / pos_rate)) if 0 < pos_rate < 0.25 else 1.0}


def fit_classifier(frame: Frame, train: pd.DataFrame, valid: pd.DataFrame, cfg: TrainSettings, task: str,
                   params: dict | None = None, refit: bool = True, isotonic: bool = False) -> Fitted:
    """LightGBM with early stopping on the validation split, then Platt (or isotonic) calibration on it.

    With `refit`, the final booster is trained again on train + validation rows (the most recent before the
    test) for the early-stopped number of rounds, scaled to the larger set; the calibration fitted on the
    early-stopped booster's validation scores carries over (same rounds per row, same score scale). On the
    demo this adds ~0.001 test ROC AUC to propensity and lowers Brier slightly.
    """
    categories = {c: sorted(train[c].dropna().unique().tolist()) for c in frame.categorical}
    xt, xv = prepare(train, frame.features, categories), prepare(valid, frame.features, categories)
    params = params or lgb_params(cfg, float(train["label"].mean()))
    cat = frame.categorical or "auto"
    booster = lgb.train(params, lgb.Dataset(xt, train["label"], categorical_feature=cat),
                        num_boost_round=cfg.max_rounds, valid_sets=[lgb.Dataset(xv, valid["label"], categorical_feature=cat)],
                        callbacks=[lgb.early_stopping(cfg.early_stopping, verbose=False)])
    calibrator = (IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1) if isotonic else PlattCalibrator()
                  ).fit(booster.predict(xv), valid["label"])
    best, rounds = booster.best_iteration, booster.best_iteration
    if refit:
        rounds = max(1, round(best * (len(train) + len(valid)) / len(train)))
        booster = lgb.train(params, lgb.Dataset(pd.concat([xt, xv]), pd.concat([train["label"], valid["label"]]),
                                                categorical_feature=cat), num_boost_round=rounds)
    model = PropelClassifier(booster, calibrator, frame.features, categories, task, frame.feature_service)
    model.decile_edges = decile_edges(model.score(train))
    return Fitted(model, params={**params, "best_iteration": best, "final_rounds": rounds})


def tune(frame: Frame, train: pd.DataFrame, valid: pd.DataFrame, cfg: TrainSettings, task: str, seconds: float) -> dict:
    """Optuna search of LightGBM parameters within a time budget; returns the best parameters."""
    import optuna
    from sklearn.metrics import roc_auc_score

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = lgb_params(cfg, float(train["label"].mean()))

    def objective(trial: optuna.Trial) -> float:
        params = {**base, "num_leaves": trial.suggest_int("num_leaves", 8, 128, log=True),
                  "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
                  "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 10, 300, log=True),
                  "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
                  "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 10, log=True)}
        fitted = fit_classifier(frame, train, valid, cfg, task, params, refit=False)  # scored on valid: no refit
        return roc_auc_score(valid["label"], fitted.model.raw_score(valid))

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
        # feast.*: Feast's own MLflow tag convention (feast.mlflow_integration)
        mlflow.set_tags({"propel.task": task, "feast.project": ws.settings().feast.project,
                         "feast.feature_service": frame.feature_service,
                         "propel.label_source": frame.label_source, "propel.lake_load": load_catalog(ws)["lake_load"],
                         "propel.selection_metric": metric,
                         **{f"propel.lake_version.{t}": v for t, v in Lake(ws).versions().items()}})
        mlflow.log_params({k: v for k, v in params.items() if not isinstance(v, (dict, list))})
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
    """The churn/propensity flow: gate, (tune,) fit, score the model and its baselines on the test,
    log everything, then the champion decision. `heuristic` is the feature ranked as the simple baseline;
    `oracle_fn(test, scores)` adds ground-truth metrics on generated data."""
    train, valid, test = frame.part("train"), frame.part("valid"), frame.part("test")
    check_eligible(train, cfg, task)
    params = tune(frame, train, valid, cfg, task, tune_seconds) if tune_seconds else None
    fitted = fit_classifier(frame, train, valid, cfg, task, params)
    scores = {"lightgbm": fitted.model.score(test), "lightgbm_uncalibrated": fitted.model.raw_score(test),
              # the baseline learns from the same rows as the refitted booster
              "logistic": logistic_baseline(frame, pd.concat([train, valid]), test, cfg.seed)}
    if heuristic in test:
        scores[f"heuristic_{heuristic}"] = test[heuristic].rank(pct=True).fillna(0.5).to_numpy()
    extra = oracle_fn(test, scores["lightgbm"]) if oracle_fn else {}
    run_id, version = log_classifier_run(ws, task, frame, fitted, scores, extra, cfg)
    return decide_and_promote(ws, task, version, run_id, fitted.metrics, test, cfg, [])
