"""Workspace paths and settings: the one place every path and tunable comes from.

A workspace holds all state (raw data, lake, features, Feast registry/online store, MLflow runs).
It is chosen by `--workspace DIR`, else `PROPEL_HOME`, else the current directory, and nothing is
computed at import time. Settings have defaults here and may be overridden per workspace in
`<workspace>/propel.toml` (sections match the dataclass names below).
"""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path


@dataclass
class IngestSettings:
    bot_burst_events: int = 8  # this many click events from one identifier ...
    bot_burst_seconds: float = 2.0  # ... within this many seconds is a bot burst, not a human
    # ... from an anonymous identifier of these types: a known customer's imported log (ratings stamped to the
    # second, many in one second) is not a bot
    bot_burst_identities: tuple[str, ...] = ("cookie_id", "device_id")
    future_tolerance_hours: float = 24.0  # timestamps later than now + this are quarantined


@dataclass
class IdentitySettings:
    # The most identifiers of each type one person may hold; a link that would exceed it is refused
    # (e.g. two customer_ids never merge through a shared device). Only an explicit customer_id <->
    # customer_id row in `identities` proves two customers are one person.
    per_person: dict[str, int] = field(
        default_factory=lambda: {"customer_id": 1, "member_id": 1, "email": 3, "phone": 3,
                                 "device_id": 10, "cookie_id": 50}
    )
    # An identifier linked to more distinct identifiers than this is shared (a shop's tablet, a
    # family phone) and links nobody.
    max_links: dict[str, int] = field(
        default_factory=lambda: {"customer_id": 1000, "member_id": 30, "email": 30, "phone": 30,
                                 "device_id": 30, "cookie_id": 30}
    )
    max_ids_per_session: int = 6  # sessions with more distinct identifiers are not used for linking


@dataclass
class FeatureSettings:
    every_days: int = 7  # snapshot cadence: one feature snapshot every this many days
    # how many snapshots, ending at the midnight after the newest event (fewer if the events start later):
    # a year of weekly ones, so campaign responses all year long have features as of their send time
    snapshots: int = 52
    # customers per batch of `propel features build`: a batch holds its customers' rows of every cutoff (~70
    # values each; ~0.8 GB for 25,000 of the generator's customers, three batches at a time), so this bounds the
    # build's memory
    build_people: int = 25_000


@dataclass
class FeastSettings:
    project: str = "propel"  # Feast project name (namespaces keys in a shared Redis)
    online: str = "sqlite"  # online store: sqlite (embedded, default) or redis (production)
    redis_url: str = field(default_factory=lambda: os.environ.get("PROPEL_REDIS_URL", "127.0.0.1:6379"))
    # offline store for training sets: duckdb (Feast's, over the feature Parquet) or spark (Feast's Spark offline
    # store over the same files, on [spark] master; needs pip install 'propel[spark]')
    offline: str = "duckdb"

    def __post_init__(self):
        if self.offline not in ("duckdb", "spark"):
            raise ValueError(f"feast.offline must be duckdb or spark, not '{self.offline}'")


@dataclass
class TrainSettings:
    seed: int = 7  # every random choice in training (LightGBM, baselines, Optuna)
    churn_lookback_days: int = 90  # "active" = bought within this many days before the cutoff
    churn_horizon_days: int = 60  # churner = no purchase within this many days after the cutoff
    response_window_days: int = 7  # a touch converts if the customer buys within this many days
    churn_test_periods: int = 1  # latest labelled cutoffs held out as the out-of-time test
    response_test_periods: int = 2  # latest campaign send days held out as the test
    valid_share: float = 0.2  # share of customers held out of fitting for early stopping and calibration
    # Labels that all describe one moment (a CRM extract) have no later period to test on: this share of
    # customers, stratified by label, is the test instead
    test_share: float = 0.2
    # Fewer fitting rows than this: early stopping, model selection and calibration use stratified k-fold
    # cross-validation by customer (cv_folds folds) instead of one validation split
    cv_max_rows: int = 20_000
    cv_folds: int = 5
    min_positives: int = 100  # eligibility gate: fewer positives in training -> refuse to train
    min_negatives: int = 100  # eligibility gate for negatives
    selection_metric: str = "roc_auc"  # champion/challenger metric for churn and propensity (uplift: qini_auc)
    promotion_margin: float = 0.0  # the challenger must beat the champion by more than this
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_data_in_leaf: int = 100
    max_rounds: int = 2000  # upper bound; early stopping picks the real number
    early_stopping: int = 50  # rounds without validation improvement before stopping
    # Bounded training sets at scale: at most this many labelled rows, a seeded sample of whole customers
    # (all their cutoffs kept together), so a 1M-customer workspace trains in bounded memory; 0 = keep all.
    max_rows: int = 2_000_000
    threads: int = 2


@dataclass
class RecommendSettings:
    # Interaction strength of each item event type (summed per customer and item); other types are ignored.
    event_weights: dict[str, float] = field(
        default_factory=lambda: {"product_view": 1.0, "add_to_cart": 3.0, "purchase": 5.0, "recommendation_click": 2.0})
    half_life_days: float = 0.0  # time decay: an interaction's weight halves every this many days (0 = no decay)
    confidence: str = "log"  # confidence from summed weights: log (log1p, damps heavy repeat viewers) or linear
    # Validation protocol: temporal (train before a cutoff, test the next test_days), leave_last_out (each
    # customer's latest holdout_share of distinct items), or auto: temporal when its test window holds at
    # least 100 customers with new items, else leave_last_out (sparse, long logs)
    protocol: str = "auto"
    test_days: int = 28  # temporal holdout: the last this many days are the test; the same span before is validation
    holdout_share: float = 0.2  # leave-last-out: share of each customer's distinct items held out (at least one)
    relevant_events: tuple[str, ...] = ("product_view", "add_to_cart", "purchase")  # test events that count as hits
    repeat_relevant: bool = False  # items seen before the cutoff count again (repeat purchases); else only new items
    cold_start_max_items: int = 2  # test customers with at most this many distinct earlier items = cold-start subset
    eval_customers: int = 50_000  # evaluate on at most this many test customers (a seeded sample)
    popular_days: int = 28  # popularity (baseline and fallback): customers per item over this many recent days
    selection_metric: str = "ndcg_at_10"  # champion/challenger metric (ndcg/recall/precision/map/hit_rate _at_10/_at_20)
    knn_neighbours: int = 100  # item-kNN: neighbours kept per item
    als_factors: int = 32  # ALS/BPR defaults; a small grid (or Optuna with --tune-seconds) searches around them
    als_regularization: float = 1.0
    als_alpha: float = 10.0  # confidence multiplier (Hu, Koren & Volinsky)
    als_iterations: int = 15
    bpr_learning_rate: float = 0.05
    bpr_iterations: int = 100
    seq_seconds: float = 120.0  # CPU budget for training the sequence model (it stops earlier when validation stalls)
    seq_max_len: int = 50  # the sequence model reads each customer's last this many item interactions
    seq_dim: int = 32  # its embedding width
    seq_threads: int = 1  # torch threads for it: its small batches gain little from more, and lose much on a busy machine
    exclude_purchased: bool = True  # serving: never recommend items bought (a log without purchases: items had)
    in_stock_only: bool = True  # serving: skip items whose catalogue `in_stock` is false (when the column exists)
    exploration_share: float = 0.1  # serving: share of the k slots (rounded down) given to new items, flagged
    fresh_weight: float = 3.0  # serving: weight of each fresh interaction folded in at request time
    threads: int = 2  # CPU threads for fitting and batch scoring

    def __post_init__(self) -> None:
        if self.confidence not in ("log", "linear"):
            raise ValueError(f"recommend.confidence must be 'log' or 'linear', not {self.confidence!r}")
        metrics = [f"{m}_at_{k}" for m in ("ndcg", "recall", "precision", "map", "hit_rate") for k in (10, 20)]
        if self.selection_metric not in metrics:
            raise ValueError(f"recommend.selection_metric must be one of {metrics}, not {self.selection_metric!r}")
        if self.protocol not in ("auto", "temporal", "leave_last_out"):
            raise ValueError(f"recommend.protocol must be auto, temporal or leave_last_out, not {self.protocol!r}")
        if not 0 < self.holdout_share < 1:
            raise ValueError(f"recommend.holdout_share must be in (0, 1), not {self.holdout_share}")
        if not 0 <= self.exploration_share < 1:
            raise ValueError(f"recommend.exploration_share must be in [0, 1), not {self.exploration_share}")


@dataclass
class ScoreSettings:
    chunk_rows: int = 100_000  # customers scored per batch in `propel score` (bounds memory: one chunk's features)
    reasons: int = 3  # reason codes (top SHAP contributions) exported per customer; 0 = none (faster)
    contact_cap: int = 4  # next best action: no action for customers sent this many campaign messages in 30 days
    recommendations: int = 10  # batch recommendations: items per customer


@dataclass
class SparkSettings:
    # Spark master URL for every command that runs on Spark (`propel features build --engine spark`, `propel score
    # --engine spark`, `[feast] offline = "spark"`): local[*] (this machine's cores), local[N], yarn, spark://host:7077
    master: str = "local[*]"


@dataclass
class AnalyticsSettings:
    seed: int = 7  # behavioural clustering (k-means initialisation)
    new_days: int = 30  # lifecycle: first seen at most this many days before the snapshot -> new
    active_days: int = 60  # lifecycle: bought (never-buyers: visited) within this many days -> active
    churned_days: int = 120  # lifecycle: more than this many days -> churned; in between -> lapsing
    churn_risk: float = 0.5  # value tier: a churn champion score at or above this marks a valuable customer at risk
    clusters: int = 5  # behavioural clusters (k-means on standardised activity, channel mix, value)
    # attribution: touches at most this many days before an order can get credit; as train.response_window_days
    # (a longer window mixes in later campaigns and purchases that happen anyway; docs/analytics.md)
    lookback_days: int = 7
    half_life_days: float = 7.0  # time-decay attribution: a touch this many days older gets half the credit
    control_share: float = 0.2  # experiments: planned share of each campaign's audience held out as control
    srm_alpha: float = 0.001  # sample-ratio mismatch when the chi-square p-value of the split is below this
    confidence: float = 0.95  # confidence level of the lift intervals
    cltv_days: int = 365  # CLTV horizon: expected revenue over this many days
    cltv_holdout_days: int = 90  # CLTV check: predict this many final days from the ones before (at most a third of the data)


@dataclass
class MonitorSettings:
    psi_warn: float = 0.1  # population stability index above this: moderate shift, reported
    psi_alert: float = 0.25  # above this: alert (score drift, or one of the champion's top features)
    psi_top_features: int = 10  # feature drift alerts only for the champion's most important features
    sample_rows: int = 20_000  # at most this many rows per side for drift (a seeded sample)
    recent_days: int = 3  # the last this many days are checked for anomalies ...
    baseline_days: int = 28  # ... against the mean of the this many days before them
    conversion_drop: float = 0.5  # alert: a channel's daily conversion rate below (1 - this) x its baseline ...
    volume_drop: float = 0.5  # alert: a channel's (or all) daily events below (1 - this) x baseline ...
    alpha: float = 0.01  # ... and the fall is significant (one-sided binomial / Poisson test p below this)
    min_baseline: int = 10  # channels with fewer baseline sessions (events) per day are not checked
    regular_share: float = 0.8  # ... nor channels with events on fewer of the baseline days (bursty campaign channels)
    max_channel_lag_days: float = 2.0  # alert: a channel's newest event this much older than the newest event overall
    max_data_age_days: float = 2.0  # alert: the newest event this much older than now
    max_online_lag_days: float = 8.0  # alert: the online store's newest snapshot this much older than the newest event
    # `propel monitor --live`: the last hour of the event log against the same hour on up to this many earlier days
    # the log covers (traffic has a daily rhythm) or, while it covers less than a day, the up to this many hours before
    live_baseline_days: int = 7
    live_baseline_hours: int = 6
    live_conversion_drop: float = 0.3  # as conversion_drop for an hour; below 0.5 so that a halving alerts reliably


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"  # `propel serve` listens here (0.0.0.0 to accept other machines)
    port: int = 3000
    workers: int = 2  # server processes; each loads every champion (one per core is usually right)
    # When set, every request except /healthz, /livez, /readyz and /metrics must carry it in the X-API-Key header.
    api_key: str = field(default_factory=lambda: os.environ.get("PROPEL_API_KEY", ""))
    max_ids: int = 1000  # most customer ids in one scoring request (more -> 400 naming customer_ids)
    max_k: int = 100  # most items in one recommendation or similar-items request
    reasons: int = 3  # reason codes (top SHAP contributions) returned per scored customer
    # A request running longer answers 504. BentoML keeps every request's timer alive this long, and at ~1,000
    # RPS the garbage collector's pauses grow with their number (~60 ms at 10 s, ~10 ms at 2 s).
    timeout_seconds: float = 3.0
    reload_seconds: float = 5.0  # each worker checks the registry this often and loads new champions (0 = only POST /reload)
    access_log: bool = False  # BentoML's per-request access log (client address, path, status, latency; no bodies)
    report_seconds: float = 900.0  # GET /report serves a rendered report this long, then renders a fresh one
    max_body_bytes: int = 2_000_000  # larger request bodies are answered 413 before they are read

    def __post_init__(self) -> None:
        for name in ("port", "workers", "max_ids", "max_k", "timeout_seconds", "max_body_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"serve.{name} must be positive, not {getattr(self, name)}")


@dataclass
class StreamSettings:
    # The event log behind POST /events: sqlite (an append-only SQLite file in WAL mode under the workspace, no
    # server) or redis (Redis Streams at redis_url, for several machines)
    backend: str = "sqlite"
    redis_url: str = field(default_factory=lambda: os.environ.get("PROPEL_REDIS_URL", "127.0.0.1:6379"))
    max_events: int = 1000  # most events in one POST /events (more -> 400 naming events)
    # The consumer folding the log into real-time features (propel/featurestore/realtime.py): `propel serve` runs it
    # as a process of its own beside the server (restarted if it dies) unless false; then run `propel stream run`
    consume: bool = True
    consume_batch: int = 2000  # most events folded and committed at once
    poll_seconds: float = 0.05  # with nothing new in the log, look again after this long
    recent_items: int = 20  # items kept per profile in recent_views / recent_purchases

    def __post_init__(self) -> None:
        if self.backend not in ("sqlite", "redis"):
            raise ValueError(f"stream.backend must be 'sqlite' or 'redis', not {self.backend!r}")
        for name in ("max_events", "consume_batch", "poll_seconds", "recent_items"):
            if getattr(self, name) <= 0:
                raise ValueError(f"stream.{name} must be positive, not {getattr(self, name)}")


@dataclass
class Settings:
    ingest: IngestSettings = field(default_factory=IngestSettings)
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    features: FeatureSettings = field(default_factory=FeatureSettings)
    feast: FeastSettings = field(default_factory=FeastSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    recommend: RecommendSettings = field(default_factory=RecommendSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    spark: SparkSettings = field(default_factory=SparkSettings)
    analytics: AnalyticsSettings = field(default_factory=AnalyticsSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    # DuckDB's working memory; larger statements spill to data/.duckdb_tmp. Keeps ingestion and feature
    # builds inside a laptop's budget (peak RSS = this plus Python and Arrow buffers).
    duckdb_memory_limit: str = "2.5GB"


# Settings that moved (old "section.key" -> where it lives now): named in the error instead of "unknown setting".
MOVED = {"score.spark_master": "[spark] master"}


def _merge(obj, overrides: dict, where: str):
    """Apply a TOML section onto a settings dataclass, rejecting unknown keys with their path."""
    known = {f.name: f for f in fields(obj)}
    for key, value in overrides.items():
        moved = MOVED.get(f"{where.rsplit('.', 1)[-1]}.{key}")
        if moved:
            raise ValueError(f"{where}.{key}: this setting moved to {moved} (one Spark master for every command); "
                             f"rename it in {where.rsplit('.', 1)[0]}")
        if key not in known:
            raise ValueError(f"{where}: unknown setting '{key}'; known: {sorted(known)}")
        current = getattr(obj, key)
        if is_dataclass(current):
            _merge(current, value, f"{where}.{key}")
        elif isinstance(current, dict):
            setattr(obj, key, {**current, **value})
        else:
            setattr(obj, key, type(current)(value))
    if hasattr(obj, "__post_init__"):
        obj.__post_init__()
    return obj


@dataclass(frozen=True)
class Workspace:
    """All paths of one workspace. Create with `Workspace.resolve()`."""

    root: Path

    @classmethod
    def resolve(cls, workspace: str | os.PathLike | None = None) -> "Workspace":
        root = workspace or os.environ.get("PROPEL_HOME") or Path.cwd()
        return cls(Path(root).expanduser().resolve())

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def raw(self) -> Path:
        return self.data / "raw"

    @property
    def lake(self) -> Path:
        return self.data / "lake"

    @property
    def features(self) -> Path:
        return self.data / "features"

    @property
    def customer_snapshots(self) -> Path:
        # one Parquet per cutoff, <YYYY-MM-DD>.parquet, of the customers whose values changed: read through
        # propel.features.asof ("the features as of T"), never a file alone
        return self.features / "customer_features"

    @property
    def item_snapshots(self) -> Path:
        return self.features / "item_features"

    @property
    def profile(self) -> Path:
        return self.features / "customer_profile.parquet"  # CRM attributes, one row per customer

    @property
    def features_lock(self) -> Path:
        return self.data / "features.lock"  # held by a feature build, and by `propel forget` (which rewrites the tables)

    @property
    def catalog(self) -> Path:
        return self.features / "catalog.json"  # cutoffs, CRM columns and types, the lake load used

    @property
    def tombstones(self) -> Path:
        return self.lake / "tombstones.parquet"  # hashes of forgotten identifiers

    @property
    def feast_data(self) -> Path:
        return self.data / "feast"  # Feast registry and SQLite online store

    def feast_registry(self, online: str) -> Path:
        # one registry per online store: Feast records materialization progress in it
        return self.feast_data / ("registry.db" if online == "sqlite" else f"registry_{online}.db")

    @property
    def feast_repo(self) -> Path:
        return self.feast_data / "repo"  # feature_store.yaml and definitions.py, as Feast's CLI expects a repo

    @property
    def online_store_db(self) -> Path:
        return self.feast_data / "online_store.db"

    @property
    def mlruns(self) -> Path:
        return self.root / "mlruns"

    @property
    def mlflow_db(self) -> Path:
        return self.mlruns / "mlflow.db"  # MLflow tracking and registry (artifacts beside it)

    @property
    def served_log(self) -> Path:
        return self.data / "served_recommendations"  # every /recommend answer, for the impact report

    @property
    def segments(self) -> Path:
        return self.data / "segments"  # `propel segments`: one Parquet per feature snapshot, read by Feast

    @property
    def stream(self) -> Path:
        return self.data / "stream"  # the embedded event log (events.db) and the stream consumer's state

    @property
    def realtime_source(self) -> Path:
        return self.stream / "customer_realtime.parquet"  # the real-time view's (empty) batch source for Feast

    @property
    def reports(self) -> Path:
        return self.data / "reports"  # `propel report` / `propel monitor` / `propel attribution` output

    @property
    def config_file(self) -> Path:
        return self.root / "propel.toml"

    def settings(self) -> Settings:
        settings = Settings()
        if self.config_file.exists():
            with self.config_file.open("rb") as fh:
                _merge(settings, tomllib.load(fh), str(self.config_file))
        return settings

    def salt(self) -> str:
        """The workspace's secret salt for hashing PII; created on first use, never written to the lake."""
        path = self.data / ".salt"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(16))
            path.chmod(0o600)
        return path.read_text().strip()
