"""`propel segments`: RFM scores and named segments, lifecycle stage, value tier and behavioural clusters for
every customer snapshot, written back as the Feast view `customer_segments` (propel/features/definitions.py holds
the rules; docs/features.md lists them).

Each snapshot T is segmented from the snapshot at T alone, so the segments are as point-in-time correct as
the features: quintiles rank customers within it; k-means for T starts from the previous snapshot's
centroids (cluster numbers keep their meaning over time) and never sees a later snapshot; the churn
champion scores only snapshots from its out-of-time test period on, where it has learnt nothing.
Output: `data/segments/<date>.parquet` (one per snapshot) and `clusters.json` (profiles, newest snapshot).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone

import duckdb
import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler

from propel.analytics import champions
from propel.features.asof import as_of
from propel.features.build import load_catalog
from propel.features.definitions import SEGMENT_FEATURES
from propel.config import AnalyticsSettings, Workspace
from propel.progress import steps

# What behavioural clusters are made of, with the words a profile uses for each (logged: counts and money).
CLUSTER_FEATURES = {
    "purchases_90d": "purchases", "revenue_90d": "spend", "avg_order_value_365d": "order value",
    "events_90d": "activity", "sessions_90d": "sessions", "share_web_90d": "web share", "share_app_90d": "app share",
    "share_store_90d": "store share", "touches_90d": "campaign messages", "email_click_rate_90d": "email clicks",
    "category_entropy_365d": "category variety", "price_level_365d": "price level",
}
LOGGED = ("purchases_90d", "revenue_90d", "avg_order_value_365d", "events_90d", "sessions_90d", "touches_90d")
CLUSTERS_FILE = "clusters.json"
_DTYPES = {"int": "BIGINT", "float": "DOUBLE", "string": "VARCHAR"}


@dataclass
class Segmentation:
    snapshots: list[str]
    rows: int
    scored: list[str]  # snapshots with churn scores
    clusters: list[dict]  # profiles at the newest snapshot
    seconds: float

    def summary(self) -> str:
        churn = f"churn scores on {len(self.scored)}" if self.scored else "no churn champion scores"
        return (f"{len(self.snapshots)} snapshots, {self.rows:,} customer rows, {len(self.clusters)} clusters, {churn} "
                f"({self.seconds:.1f}s)")


class Clusterer:
    """k-means on standardised behaviour, one snapshot after another, each fit started from the last centroids."""

    def __init__(self, k: int, seed: int):
        self.k, self.seed, self.centroids = k, seed, None  # centroids in the transformed (logged) space

    def fit(self, snap: pd.DataFrame) -> tuple[pd.Series, list[dict]]:
        """Cluster of each customer active in 90 days (-1 for the rest), and each cluster's profile."""
        active = snap[snap["events_90d"] > 0]
        labels = pd.Series(-1, index=snap.index, dtype="int64")
        if len(active) < self.k:
            return labels, []
        x = _transform(active)
        scaler = StandardScaler().fit(x)
        z = scaler.transform(x)
        if self.centroids is None:
            km = KMeans(self.k, n_init=10, random_state=self.seed).fit(z)
            # number clusters by spend, highest first, so cluster 0 is the most valuable from the start
            order = np.argsort(-scaler.inverse_transform(km.cluster_centers_)[:, list(CLUSTER_FEATURES).index("revenue_90d")])
            init = km.cluster_centers_[order]
        else:
            init = scaler.transform(self.centroids)
        km = KMeans(self.k, init=init, n_init=1, random_state=self.seed).fit(z)
        self.centroids = scaler.inverse_transform(km.cluster_centers_)
        labels[active.index] = km.labels_
        return labels, _profiles(active, z, km.labels_, self.k)


def _transform(df: pd.DataFrame) -> np.ndarray:
    x = df[list(CLUSTER_FEATURES)].astype(float).clip(lower=0)
    x[list(LOGGED)] = np.log1p(x[list(LOGGED)])
    return x.to_numpy()


def _profiles(active: pd.DataFrame, z: np.ndarray, labels: np.ndarray, k: int) -> list[dict]:
    """Size, feature means and what distinguishes each cluster (largest standardised differences)."""
    names = list(CLUSTER_FEATURES)
    out = []
    for c in range(k):
        members = labels == c
        if not members.any():
            continue
        diff = z[members].mean(axis=0)
        top = np.argsort(-np.abs(diff))[:3]
        traits = [f"{'high' if diff[i] > 0 else 'low'} {CLUSTER_FEATURES[names[i]]}" for i in top]
        out.append({"cluster": c, "customers": int(members.sum()), "share": round(float(members.mean()), 4),
                    "label": ", ".join(traits),
                    "distinguishing": {names[i]: round(float(diff[i]), 2) for i in top},
                    "means": {n: round(float(v), 3) for n, v in active.loc[members, names].mean().items()}})
    return out


def _cutoffs(ws: Workspace) -> list[date]:
    return [date.fromisoformat(c) for c in load_catalog(ws)["cutoffs"]]


def churn_scores(ws: Workspace, snaps: dict[date, pd.DataFrame]) -> dict[date, pd.Series]:
    """The churn champion's score per customer it can score honestly (see module doc), by snapshot."""
    loaded = champions.load(ws, "churn")
    if loaded is None:
        return {}
    model, _ = loaded
    start = champions.out_of_sample_from(champions.churn_training_rows(ws))
    lookback = ws.settings().train.churn_lookback_days
    entity = pd.concat([s.loc[s["days_since_last_purchase"] <= lookback, ["customer_id"]].assign(
        event_timestamp=pd.Timestamp(t)) for t, s in snaps.items() if pd.Timestamp(t) >= start] or [pd.DataFrame()])
    if entity.empty:
        return {}
    scored = champions.score(ws, model, entity.reset_index(drop=True))
    scored["day"] = pd.to_datetime(scored["event_timestamp"]).dt.date
    return {t: g.set_index("customer_id")["score"] for t, g in scored.groupby("day")}


def segment_sql(snapshot: str, settings: AnalyticsSettings) -> str:
    """One snapshot's segments from the relation `snapshot` joined with `model_columns` (churn_score, cluster)."""
    by_source = {s: [f for f in SEGMENT_FEATURES if f.source == s] for s in ("snapshot", "model", "derived")}
    model = ", ".join(f"coalesce(m.{f.name}, {f.default}) AS {f.name}" for f in by_source["model"])
    ranked = ", ".join(f"{f.sql} AS {f.name}" for f in by_source["snapshot"])
    derived = ", ".join(f"{f.sql.format(**asdict(settings))} AS {f.name}" for f in by_source["derived"])
    cols = ", ".join(f"CAST(coalesce({f.name}, {f.default}) AS {_DTYPES[f.dtype]}) AS {f.name}" for f in SEGMENT_FEATURES)
    return (f"SELECT customer_id, event_timestamp, {cols} FROM (SELECT *, {derived} FROM ("
            f"SELECT s.*, {model}, {ranked} FROM {snapshot} s LEFT JOIN model_columns m USING (customer_id))) "
            "ORDER BY customer_id")


def compute(ws: Workspace, cutoffs: list[date] | None = None, progress: bool = False):
    """Yield (cutoff, segments frame, cluster profiles) for each snapshot, oldest first (default: all)."""
    settings = ws.settings().analytics
    cutoffs = cutoffs or _cutoffs(ws)
    con = duckdb.connect()
    snaps = {t: as_of(ws, t) for t in cutoffs}  # in customer_id order: k-means' seeded start depends on a fixed one
    scores = churn_scores(ws, snaps)
    clusterer = Clusterer(settings.clusters, settings.seed)
    with steps(progress, "segments", len(cutoffs)) as advance:
        for t, snap in snaps.items():
            labels, profiles = clusterer.fit(snap)
            model_columns = pd.DataFrame({"customer_id": snap["customer_id"], "behaviour_cluster": labels.to_numpy()})
            model_columns["churn_score"] = model_columns["customer_id"].map(scores.get(t, pd.Series(dtype=float)))
            con.register("model_columns", model_columns)
            con.register("snap", snap)
            yield t, con.execute(segment_sql("snap", settings)).df(), profiles
            advance(str(t))


def build(ws: Workspace, progress: bool = False) -> Segmentation:
    """Segment every snapshot into `data/segments/`, replacing the previous run."""
    started = time.perf_counter()
    tmp = ws.segments.with_name(ws.segments.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows, profiles, done, scored = 0, [], [], []
    for t, seg, profiles in compute(ws, progress=progress):
        seg.to_parquet(tmp / f"{t.isoformat()}.parquet", index=False)
        rows += len(seg)
        done.append(t.isoformat())
        if (seg["churn_score"] >= 0).any():
            scored.append(t.isoformat())
    (tmp / CLUSTERS_FILE).write_text(json.dumps({"snapshot": done[-1], "clusters": profiles}, indent=2))
    shutil.rmtree(ws.segments, ignore_errors=True)
    tmp.rename(ws.segments)
    return Segmentation(done, rows, scored, profiles, time.perf_counter() - started)


def publish(ws: Workspace, online: str | None = None) -> None:
    """Register the segments view in Feast and load its newest rows into the online store (always in full:
    a re-run rewrites segments of snapshots that may already have been loaded)."""
    from propel.featurestore import store as fstore

    fstore.apply(ws, online)
    store = fstore.feature_store(ws, online)
    end = datetime.fromisoformat(load_catalog(ws)["cutoffs"][-1]).replace(tzinfo=timezone.utc) + timedelta(seconds=1)
    store.materialize(start_date=datetime(1970, 1, 1, tzinfo=timezone.utc), end_date=end,
                      feature_views=["customer_segments"])


def latest(ws: Workspace) -> tuple[pd.DataFrame, list[dict]]:
    """Segments and cluster profiles at the newest snapshot: the stored ones when current, else computed now."""
    newest = _cutoffs(ws)[-1]
    path = ws.segments / f"{newest.isoformat()}.parquet"
    if path.exists() and (ws.segments / CLUSTERS_FILE).exists():
        return pd.read_parquet(path), json.loads((ws.segments / CLUSTERS_FILE).read_text())["clusters"]
    _, seg, profiles = next(compute(ws, [newest]))
    return seg, profiles
