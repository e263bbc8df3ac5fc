"""Score customers with the champion of a task, in process: the one place that turns customer ids into
a probability (or uplift), its decile against the training scores, reason codes and the model version.

The HTTP service calls it per request and batch jobs can call it per chunk, so an answer does not
depend on the path it took. Features come from the online store (`propel.featurestore.store.online_reader`);
the transform and the scores are the champion's own (`PropelClassifier` / `PropelUplift`). Only what
a request adds is supplied here: what is sent (campaign channel, offer type) for the contact models, and the
"days since" features at request time from the stream's newest events (the `customer_realtime` view) when they are
newer than the snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import mlflow
import numpy as np
import pandas as pd

from propel.config import Workspace
from propel.features.build import load_catalog
from propel.training import registry
from propel.training.labels import CONTEXT_COLUMNS

RECENCY = {"days_since_last_purchase": "last_purchase_ts", "days_since_last_visit": "last_event_ts"}


class BadContext(ValueError):
    """A request's campaign context is missing or names a value the champion never saw."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Champion:
    """A task's champion, pinned to its version (a promotion later does not change it)."""

    task: str
    version: str
    run_id: str | None
    model: object  # propel.training.model.PropelClassifier or PropelUplift

    @property
    def feature_service(self) -> str:
        return self.model.feature_service

    @property
    def levels(self) -> dict[str, list[str]]:
        """Category levels the model knows, per categorical input (the treated arm's for uplift)."""
        return getattr(self.model, "treated", self.model).categories

    @property
    def context_fields(self) -> list[str]:
        """Inputs that describe what is sent, so the caller must give them (not in the feature store)."""
        return [c for c in CONTEXT_COLUMNS if c in self.model.features]

    def deciles(self, scores: np.ndarray) -> np.ndarray | None:
        """Decile 1 (top 10% of training scores) .. 10, or None for a model logged without its edges."""
        edges = getattr(self.model, "decile_edges", None)
        if not edges:
            return None
        return 1 + len(edges) - np.searchsorted(np.asarray(edges[::-1]), scores, side="right")


def load_champion(ws: Workspace, task: str) -> Champion:
    """The task's champion, pinned to its version; NoChampion when there is none, without creating a model
    registry in a workspace that has none."""
    if not ws.mlflow_db.exists():
        raise registry.NoChampion(task)
    client = registry.tracking(ws)
    found = registry.champion_version(client, task)
    if found is None:
        raise registry.NoChampion(task)
    model = mlflow.pyfunc.load_model(f"models:/{task}/{found.version}").unwrap_python_model()
    return Champion(task, str(found.version), found.run_id, model)


def check_context(champion: Champion, given: dict[str, str | None]) -> dict[str, str]:
    """The campaign context the champion needs, validated against the levels it was trained on."""
    out = {}
    for name in champion.context_fields:
        value, known = given.get(name), champion.levels.get(name, [])
        if value is None:
            raise BadContext(name, f"{champion.task} scores depend on what is sent: give {name} (one of {', '.join(known)})")
        if value not in known:
            raise BadContext(name, f"{name} '{value}' was not seen in training; use one of {', '.join(known)}")
        out[name] = value
    return out


class CustomerScorer:
    """Scores customers by id: online features -> champion -> result rows. Thread-safe (read only)."""

    def __init__(self, ws: Workspace, champion: Champion, store=None):
        from propel.featurestore import realtime, store as fstore  # Feast: the online path only (not batch scoring)

        self.champion, self.store = champion, store or fstore.feature_store(ws)
        self.reader = fstore.online_reader(self.store, champion.feature_service)
        self.realtime = realtime.reader(self.store) if RECENCY.keys() & set(champion.model.features) else None
        # the newest snapshot counts the days before this midnight: events from then on are the stream's to add
        self.cutoff = datetime.fromisoformat(load_catalog(ws)["cutoffs"][-1]).replace(tzinfo=timezone.utc).timestamp()

    def score(self, customer_ids: list[str], context: dict[str, str] | None = None, reasons: int = 3,
              request_ts: datetime | None = None) -> list[dict]:
        """One result per id, in order: `status` 200 with the scores, or 404 for an id the online store
        does not know (the others are still scored). `context` must pass `check_context`."""
        features, missing = self.reader.read(customer_ids, request_ts)
        if self.realtime is not None:
            self.recency(features, self.realtime.read(customer_ids)[0], request_ts or datetime.now(timezone.utc))
        unknown = set(missing)
        known = [i for i, c in enumerate(customer_ids) if c not in unknown]
        rows = {}
        if known:
            found = features if len(known) == len(customer_ids) else features.iloc[known]
            rows = dict(zip(known, self.score_frame(found, context, reasons)))
        return [rows.get(i) or {"customer_id": c, "status": 404, "error": "unknown customer: no features in the online store"}
                for i, c in enumerate(customer_ids)]

    def recency(self, features: pd.DataFrame, live: pd.DataFrame, now: datetime) -> None:
        """Days since the last purchase and visit from the stream's times where they are newer than the snapshot,
        and overdue_ratio from the new days (its definition in propel.features.definitions)."""
        from propel.featurestore.realtime import days_since

        for name, ts in RECENCY.items():
            t = live[ts].to_numpy()
            newer = t >= self.cutoff  # NaN (never) is not newer
            if name in features and newer.any():
                features.loc[newer, name] = days_since(t[newer], now)
                if name == "days_since_last_purchase" and {"overdue_ratio", "ipt_mean_days_365d"} <= set(features):
                    gap = features.loc[newer, "ipt_mean_days_365d"]
                    features.loc[newer, "overdue_ratio"] = (features.loc[newer, name] / gap).where(gap > 0, 0.0)

    def score_frame(self, features: pd.DataFrame, context: dict[str, str] | None, reasons: int) -> list[dict]:
        """Result rows for feature rows (customer_id plus the champion's features)."""
        champ, model = self.champion, self.champion.model
        ids = features["customer_id"].tolist()
        if context:
            features = features.assign(**context)
        if champ.task == "uplift":
            pred = model.predict(None, features)
            score = pred["score"].to_numpy()
            extra = {"p_treated": pred["p_treated"].to_numpy(), "p_control": pred["p_control"].to_numpy()}
            name = "uplift"
        else:
            features = model.matrix(features)  # encoded once for score() and explain()
            score, extra, name = model.score(features), {}, "probability"
        deciles = champ.deciles(score)
        why = model.explain(features, reasons) if reasons else [[] for _ in ids]
        return [{"customer_id": ids[i], "status": 200, name: float(score[i]),
                 **{k: float(v[i]) for k, v in extra.items()},
                 "decile": int(deciles[i]) if deciles is not None else None,
                 "reasons": [{"feature": f, "contribution": round(c, 6)} for f, c in why[i]],
                 "model_version": champ.version} for i in range(len(ids))]
