"""docs/benchmarks.md's tables, rendered from benchmark records, so the doc cannot drift from the figures.

A record is one row of a table: what is measured, its target, the latest figure, whether it meets the
target, the date, the machine and the command that measured it. bench/reference.json holds the latest
record of every measured thing; `make bench` turns its run into records (`records`), merges them in
(newest wins per key) and rewrites the tables between the `<!-- BEGIN stage -->` markers of the doc.
Rows measured by hand (their command says how) are edited in bench/reference.json, then
`python bench/report.py` re-renders the doc; tests/test_docs.py fails when the doc is not what the
records render.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from propel.docs import render as fill_sections

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "bench" / "reference.json"
DOC = ROOT / "docs" / "benchmarks.md"
STAGES = ("ingestion", "featurestore", "training", "shapes", "scoring", "recommenders", "serving", "realtime")  # the doc's marker names
SCALE_DOC = ROOT / "docs" / "scale.md"  # its one table: the offline stages at each scale (stage "scale")
FIELDS = ("stage", "key", "what", "target", "figure", "met", "date", "machine", "command")


@dataclass(frozen=True)
class Metric:
    """A row `make bench` measures: `read` turns the run's rows (by stage label) into (figure, checks),
    checks being (name, passed) per limit of the target; None when the run did not measure it."""
    key: str
    stage: str
    what: str
    target: str
    scale: str
    read: Callable[[dict[str, dict]], tuple[str, list[tuple[str, bool]]] | None]


def num(x: float) -> str:
    """About three significant digits, as the doc writes figures."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def of_row(label: str, figure: Callable[[dict], tuple[str, list]], *fields: str):
    """A metric's `read` for the run row of one stage label (None without the row or the `fields` it needs)."""
    return lambda rows: figure(rows[label]) if label in rows and all(f in rows[label] for f in fields) else None


def peak(row: dict) -> str:
    return f"peak {row['peak_rss_gib']:.2f} GiB"


def timed(label: str, seconds: float | None = None, gib: float | None = None):
    """Wall time and peak RSS of one `run()` stage, against optional limits."""
    def figure(row):
        rate = f" ({num(row['events_per_s'] / 1000)}k events/s)" if "events_per_s" in row else ""
        checks = ([("time", row["seconds"] <= seconds)] if seconds else []) + (
            [("memory", row["peak_rss_gib"] <= gib)] if gib else [])
        return f"{num(row['seconds'])} s{rate}, {peak(row)}", checks
    return of_row(label, figure)


def materialized(label: str, per_1m_seconds: float | None = None):
    """Seconds per 1M entities: the bench's 1M customers come with ~0.55M anonymous profiles."""
    def figure(row):
        per_1m = row["seconds"] * 1e6 / row["entities"]
        figure = f"{num(row['seconds'])} s for {row['entities'] / 1e6:.2f}M entities = {num(per_1m)} s per 1M"
        return f"{figure}, {peak(row)}", [("time", per_1m <= per_1m_seconds)] if per_1m_seconds else []
    return of_row(label, figure, "entities")


# The feature tables of the full-snapshot layout (one row per person and cutoff) at 1M customers, measured on
# the same lake before the change-only layout (issue 21): `du -sb data/features`, 2026-12-07 (3.00 GiB)
FULL_SNAPSHOTS_1M_BYTES = 3_221_783_287


def feature_bytes(label: str, share: float | None = None):
    """Bytes of data/features after a build, against `share` of the full-snapshot layout's."""
    def figure(row):
        size = f"{row['feature_bytes'] / 2**30:.2f} GiB"
        if not share:
            return size, []
        ratio = row["feature_bytes"] / FULL_SNAPSHOTS_1M_BYTES
        return (f"{size} = {ratio:.0%} of the full snapshots' {FULL_SNAPSHOTS_1M_BYTES / 2**30:.2f} GiB",
                [("bytes", ratio <= share)])
    return of_row(label, figure, "feature_bytes")


def latency(label: str, field: str, p99_ms: float | None = None):
    """p50 / p99 of an in-process call, recorded under `field` of the row."""
    def figure(row):
        ms = row[field]
        checks = [("p99", ms["p99_ms"] <= p99_ms)] if p99_ms else []
        return f"p50 {num(ms['p50_ms'])} / p99 {num(ms['p99_ms'])} ms", checks
    return of_row(label, figure, field)


def inner_seconds(label: str, field: str, seconds: float | None = None, rss: bool = False):
    """A duration the stage timed itself (`field`), e.g. the fit inside its process."""
    def figure(row):
        value = row[field]["seconds"] if isinstance(row[field], dict) else row[field]
        return f"{num(value)} s" + (f", {peak(row)}" if rss else ""), [("time", value <= seconds)] if seconds else []
    return of_row(label, figure, field)


def scored(label: str, seconds: float | None = None):
    """One `propel score` process: its wall time, the job's own time, the rows and bytes it exported."""
    def figure(row):
        times = f"{num(row['seconds'])} s ({num(row['in_process_seconds'])} s in process)"
        figure = f"{times}, {row['exported']:,} exported, {peak(row)}, {num(row['output_mib'])} MiB"
        return figure, [("time", row["seconds"] <= seconds)] if seconds else []
    return of_row(label, figure, "exported")


def open_loop(label: str, p99_ms: float | None = None):
    """A fixed request rate: latency percentiles from each request's scheduled time."""
    def figure(row):
        ms = " / ".join(f"{p} {num(row[f'{p}_ms'])}" for p in ("p50", "p95", "p99", "max"))
        errors = f"; {row['non_2xx']} errors" if row.get("non_2xx") else ""
        return f"{ms} ms{errors}", [("p99", row["p99_ms"] <= p99_ms)] if p99_ms else []
    return of_row(label, figure)


def beats_popularity(label: str, times: float):
    """A recommender champion's NDCG@10 next to popularity's, on the protocol training chose."""
    def figure(row):
        return (f"NDCG@10 {row['ndcg_at_10']:.3f} vs popularity {row['popular_ndcg_at_10']:.3f} = "
                f"{row['lift_over_popular']:.2f}x ({row['winner']}; {row['protocol']}, {row['test_customers']:,} test "
                f"customers, {row['events']:,} events)"), [("lift", row["lift_over_popular"] >= times)]
    return of_row(label, figure, "lift_over_popular")


def insert_floor(row: dict) -> tuple[str, list]:
    return f"{num(row['seconds_per_1m_entities'])} s per 1M entities", []


def closed_loop(prefix: str, min_rps_at_32: float | None = None, p99_ms_at_1: float | None = None):
    """wrk at concurrency 1 / 8 / 32: RPS, p99 and errors in one row."""
    def read(rows):
        runs = [rows.get(f"{prefix} c={c}") for c in (1, 8, 32)]
        if None in runs:
            return None
        errors = sum(r["non_2xx"] + r["socket_errors"] for r in runs)
        rps, p99 = " / ".join(f"{r['rps']:,}" for r in runs), " / ".join(num(r["p99_ms"]) for r in runs)
        figure = f"RPS {rps}; p99 {p99} ms; {errors} errors"
        checks = [("RPS", runs[2]["rps"] >= min_rps_at_32), ("errors", errors == 0)] if min_rps_at_32 else []
        return figure, checks + ([("p99", runs[0]["p99_ms"] <= p99_ms_at_1)] if p99_ms_at_1 else [])
    return read


def intake(label: str, min_rate: float):
    """Events/s over HTTP and how many acknowledged events the log lacks (must be 0)."""
    def figure(row):
        return (f"{row['events_per_s']:,} events/s ({row['clients']} clients); request p50 {num(row['p50_ms'])} / p99 "
                f"{num(row['p99_ms'])} ms; {row['lost']} of {row['acknowledged']:,} acknowledged lost"), [
            ("rate", row["events_per_s"] >= min_rate), ("lost", row["lost"] == 0 and row["logged_twice"] == 0)]
    return of_row(label, figure, "events_per_s")


def crashed(label: str):
    def figure(row):
        return (f"{row['lost']} of {row['acknowledged']:,} acknowledged lost, {row['logged_twice']} logged twice; "
                f"after flush {row['lake_lost']} missing from the lake, {row['lake_twice']} twice",
                [("lost", row["lost"] == 0 and row["logged_twice"] == 0),
                 ("lake", row["lake_lost"] == 0 and row["lake_twice"] == 0)])
    return of_row(label, figure, "lost")


def freshness(label: str):
    """Seconds from POST /events answered to /recommend and /score/churn reflecting the event (bench/freshness.py)."""
    def figure(row):
        parts, checks = [], []
        for endpoint, key in (("/recommend", "freshness_recommend"), ("/score/churn", "freshness_churn")):
            f = row[key]
            parts.append(f"{endpoint} p50 {num(f['p50_ms'])} / p99 {num(f['p99_ms'])} ms ({f['reflected']} of {f['probes']} probes)")
            checks.append((endpoint, f["p99_ms"] <= 1000 and f["reflected"] == f["probes"] > 0))
        return f"{'; '.join(parts)}; {row['events_per_s']:,} events/s", checks
    return of_row(label, figure, "freshness_recommend")


def loaded(label: str, p99_ms: float | None = None):
    """An open-loop phase of bench/freshness.py: latency percentiles and each process's CPU seconds per second."""
    def figure(row):
        base, checks = open_loop(label, p99_ms)({label: row})
        cpu = row["cpu_per_s"]
        share = ", ".join(f"{k} {cpu[k]:.2f}" for k in ("worker", "consumer", "client") if k in cpu)
        return f"{base}; CPU s/s: {share}; whole machine {cpu['machine']:.2f} of {row['cores']} cores", checks
    return of_row(label, figure, "cpu_per_s")


def crashed_realtime(label: str):
    def figure(row):
        return (f"{row['lost']} of {row['acknowledged']:,} acknowledged lost, {row['logged_twice']} logged twice; "
                f"consumer restarted: {'yes' if row['consumer_restarted'] else 'no'}; online events_1h wrong for "
                f"{row['online_wrong']} of {row['online_profiles']:,} profiles; after flush {row['lake_lost']} missing "
                f"from the lake, {row['lake_twice']} twice",
                [("log", row["lost"] == 0 and row["logged_twice"] == 0),
                 ("online", row["online_wrong"] == 0 and row["consumer_restarted"]),
                 ("lake", row["lake_lost"] == 0 and row["lake_twice"] == 0)])
    return of_row(label, figure, "online_wrong")


def stream_state(label: str, recent_items: int = 20):
    def figure(row):
        return (f"{row['profiles']:,} profiles, {row['bytes_per_profile']:,} bytes each on average (max "
                f"{row['max_bytes']:,}); longest window {row['max_window']} events, at most {row['max_items']} items "
                "per list", [("items", row["max_items"] <= recent_items)])
    return of_row(label, figure, "bytes_per_profile")


def shape_quality(label: str):
    """One data shape of issue 16 (bench/shapes.py): its size, the protocol training chose, and the champion's
    test ROC AUC against the better of its baselines fitted on the same rows (target: within 0.005)."""
    def figure(row):
        heuristic = f", heuristic {row['heuristic_roc_auc']:.3f}" if row.get("heuristic_roc_auc") is not None else ""
        return (f"{row['events']:,} events, {row['customers']:,} customers, {row['label_rows']:,} labelled rows; "
                f"`{row['protocol']}` ({row['selected']}); ROC AUC {row['roc_auc']:.3f} vs logistic "
                f"{row['logistic_roc_auc']:.3f}{heuristic}; {num(row['seconds'])} s",
                [("quality", row["gap_to_best_baseline"] <= 0.005)])
    return of_row(label, figure, "roc_auc")


SHAPES = {"crm_snapshot": "CRM snapshot, explicit churn labels at one `as_of` (~7k customers, telco-like)",
          "transactions": "transactions only, purchases 1997-1998, derived churn (~10k customers, CDNOW-like)",
          "attributes_only": "attributes only, one signup event each, explicit response labels (bank-marketing-like)",
          "small_imbalanced": "small and imbalanced: 5,822 customers, ~5.5% positives, 85 numeric columns (CoIL-like)",
          "no_crm_no_campaigns": "no CRM attributes, no campaigns: web/app/store behaviour, derived churn"}
FM, REC, SERVE = "features-1m", "recommender package + recommend() + batch top-10", "serve"
METRICS = [
    Metric("ingest-1m generate", "ingestion", "generate 20k customers x 365 days (~0.9M events, Parquet)", "",
           "ingest-1m", timed("ingest-1m generate")),
    Metric("ingest-1m ingest", "ingestion", "ingest ~0.9M events (20k customers x 365 days)", "", "ingest-1m",
           timed("ingest-1m ingest")),
    Metric("ingest-10m generate", "ingestion", "generate 200k customers x 365 days (~9.3M events, Parquet)", "",
           "ingest-10m", timed("ingest-10m generate")),
    Metric("ingest-10m ingest", "ingestion", "ingest ~9.3M events (200k customers x 365 days)", "<= 60 s, <= 4 GiB",
           "ingest-10m", timed("ingest-10m ingest", 60, 4)),
    Metric("features-1m ingest", "ingestion", "ingest ~46M events (1M customers x 365 days)", "", FM,
           timed("features-1m ingest")),
    Metric("features-1m features build", "featurestore",
           "feature build: 52 weekly snapshots of 1.55M people (1M customers, 46M events)", "<= 180 s, <= 6 GiB", FM,
           timed("features-1m features build", 180, 6)),
    Metric("features-1m materialize sqlite", "featurestore", "materialize the latest snapshot into SQLite",
           "<= 90 s per 1M customers", FM, materialized("features-1m materialize sqlite", 90)),
    Metric("features-1m materialize redis", "featurestore", "materialize the latest snapshot into Redis",
           "<= 90 s per 1M customers", FM, materialized("features-1m materialize redis", 90)),
    Metric("features-1m sqlite insert floor", "featurestore",
           "SQLite's own insert time for the online table's layout (pre-encoded rows, no Python)", "", FM,
           of_row("features-1m sqlite insert floor", insert_floor, "seconds_per_1m_entities")),
    *[Metric(f"features-1m online read {n} {store}", "featurestore",
             f"online read of `churn_v1`, {n} customer{'s' if n > 1 else ''}, {label} (1.55M entities)",
             f"p99 <= {limit} ms", FM, latency("features-1m online reads + training set", f"online_{n}_{store}", limit))
      for store, label in (("redis", "Redis"), ("sqlite", "SQLite")) for n, limit in ((1, 2), (100, 20))],
    Metric("features-1m training set", "featurestore",
           "training set of 1M entity rows x 82 features (Feast `get_historical_features`)", "<= 30 s", FM,
           inner_seconds("features-1m online reads + training set", "training_set", 30, rss=True)),
    Metric("features-1m feature bytes", "featurestore", "feature tables on disk at 1M customers (change-only rows)",
           "<= 40% of the full snapshots'", FM, feature_bytes("features-1m features build", 0.4)),
    Metric("features-1m train churn", "training", "`propel train churn` at 1M customers (2M-row training frame)", "",
           FM, timed("features-1m train churn")),
    *[Metric(f"shape {name}", "shapes", what, "ROC AUC within 0.005 of the best baseline", "shapes",
             shape_quality(f"shape {name}")) for name, what in SHAPES.items()],
    *[Metric(f"score-1m {label}", "scoring", what, target, "score-1m", scored(f"score-1m {label}", limit))
      for label, what, target, limit in (
          ("all customers -> parquet, no reasons", "score 1M customers, export all to Parquet, no reasons",
           "<= 30 s", 30),
          ("all customers -> csv, no reasons", "score 1M customers, export all to CSV, no reasons", "<= 30 s", 30),
          ("top 10% -> csv with 3 reasons", "score 1M customers, export the top 10% to CSV with 3 reason codes", "",
           None),
          ("where + top 5000 -> csv with 3 reasons",
           "score 1M customers, `--where` + top 5000 to CSV with 3 reason codes", "", None))],
    Metric("recommender ALS fit", "recommenders",
           "ALS fit (implicit, 32 factors, 15 iterations), 1M customers x 50k items x 20M interactions", "<= 300 s",
           "recommender", inner_seconds("recommender ALS fit", "fit_seconds", 300, rss=True)),
    Metric("recommender package", "recommenders", "package the model: fold-in of 1M customers' states + indexes", "",
           "recommender", inner_seconds(REC, "package_seconds")),
    Metric("recommender recommend", "recommenders", "`recommend(customer, 10)`, 50k items, in process",
           "p99 <= 1 ms", "recommender", latency(REC, "recommend_top10", 1)),
    Metric("recommender recommend filtered", "recommenders",
           "`recommend(customer, 10, category=..., max_price=...)`, in process", "p99 <= 1 ms", "recommender",
           latency(REC, "recommend_top10_category_price", 1)),
    Metric("recommender recommend fold-in", "recommenders",
           "`recommend(customer, 10, fresh_items=[3 items])` (fold-in), in process", "", "recommender",
           latency(REC, "recommend_top10_fold_in_3_fresh")),
    Metric("recommender similar_items", "recommenders", "`similar_items(item, 10)`, in process", "", "recommender",
           latency(REC, "similar_items_top10")),
    Metric("recommender batch", "recommenders", "`batch(1M customers, 10)` -> 10M rows", "<= 120 s", "recommender",
           inner_seconds(REC, "batch_top10_seconds", 120, rss=True)),
    Metric("recommender sparse shape", "recommenders",
           "shape 4: a sparse ratings log (610 customers over 6 years, a handful active a month), champion vs popularity",
           ">= 1.25x popularity's NDCG@10 (leave-last-20%-out)", "recommender-sparse",
           beats_popularity("shape sparse_interactions (recommender)", 1.25)),
    Metric("serve /recommend closed loop", "serving", "`/recommend`, closed loop (wrk) at c = 1 / 8 / 32",
           ">= 1,000 RPS at c = 32, 0 errors", SERVE, closed_loop("serve /recommend", min_rps_at_32=1000)),
    Metric("serve /recommend at 200 RPS", "serving", "`/recommend`, open loop at 200 RPS", "p99 <= 10 ms", SERVE,
           open_loop("serve /recommend at 200 RPS", 10)),
    Metric("serve /similar_items closed loop", "serving", "`/similar_items`, closed loop at c = 1 / 8 / 32", "",
           SERVE, closed_loop("serve /similar_items")),
    Metric("serve /score/churn closed loop", "serving", "`/score/churn` (1 id), closed loop at c = 1 / 8 / 32",
           "p99 <= 10 ms at c = 1", SERVE, closed_loop("serve /score/churn", p99_ms_at_1=10)),
    Metric("serve /score/churn at 50 RPS", "serving", "`/score/churn` (1 id), open loop at 50 RPS", "p99 <= 10 ms",
           SERVE, open_loop("serve /score/churn at 50 RPS", 10)),
    *[Metric(f"serve {name} closed loop", "serving", f"{what}, closed loop at c = 1 / 8 / 32", "", SERVE,
             closed_loop(f"serve {name}"))
      for name, what in (("/score/propensity", "`/score/propensity` (1 id)"),
                         ("/score/uplift", "`/score/uplift` (1 id)"),
                         ("/score/churn (100 ids)", "`/score/churn` (100 ids)"))],
    *[Metric(f"realtime intake batch {n}", "realtime", f"`POST /events`, batches of {n:,}, SQLite log",
             ">= 5,000 events/s, 0 lost", "realtime", intake(f"intake http batch {n}", 5000)) for n in (100, 1000)],
    Metric("realtime intake crash", "realtime", "`kill -9` of the server (all workers) under load, then restart",
           "every acknowledged event in the log and, after flush, the lake, once", "realtime", crashed("intake crash (kill -9 under load)")),
    Metric("realtime freshness", "realtime", "freshness: `POST /events` answered -> `/recommend` and `/score/churn` "
           "reflecting it, during ~1,000 events/s + `/recommend` at 200 RPS", "p99 <= 1 s", "freshness",
           freshness("freshness under load")),
    Metric("realtime /recommend under load", "realtime", "`/recommend` open loop at 200 RPS during ~1,000 events/s "
           "(stream consumer in its own process)", "p99 <= 10 ms", "freshness", loaded("freshness under load", 10)),
    Metric("realtime /recommend alone", "realtime", "the same `/recommend` load on the same server without events "
           "(this run's floor)", "", "freshness", loaded("freshness /recommend alone")),
    Metric("realtime crash consumer and server", "realtime", "`kill -9` of the stream consumer, then of the whole "
           "server, under ~1,000 events/s; restart", "every acknowledged event in the log, the online state and, "
           "after flush, the lake, once", "freshness", crashed_realtime("realtime crash (kill -9 consumer, then server)")),
    Metric("realtime stream state", "realtime", "the stream consumer's state after the freshness bench",
           "bounded per profile: its last 24 h of events, `recent_items` (20) items per list", "freshness",
           stream_state("realtime stream state")),
    # docs/scale.md: each offline stage at three scales (ingestion measured by the ingest-* runs below 1M)
    *[Metric(f"scale {size} {stage}", "scale", f"{what} ({size} customers x 365 days)", "",
             ingested if stage == "ingest" else scale, read(f"{ingested if stage == 'ingest' else scale} {label}"))
      for size, ingested, scale in (("20k", "ingest-1m", "scale-20k"), ("200k", "ingest-10m", "scale-200k"),
                                    ("1M", FM, FM))
      for stage, label, what, read in (
          ("ingest", "ingest", "ingest", timed),
          ("build", "features build", "feature build, 52 weekly cutoffs", timed),
          ("bytes", "features build", "feature tables on disk", feature_bytes),
          ("materialize", "materialize sqlite", "materialize the newest values into SQLite", materialized),
          ("training set", "online reads + training set", "training set of 4 entity rows per customer (at most 1M), "
           "Feast", lambda label: inner_seconds(label, "training_set", rss=True)),
          ("train", "train churn", "`propel train churn`", timed),
          ("score", "score churn", "`propel score churn --reasons 0`, every customer to Parquet", timed))],
    Metric("serve control closed loop", "serving", "control: a bare uvicorn echo app, closed loop at c = 1 / 8 / 32",
           "", SERVE, closed_loop("control (bare uvicorn echo)")),
    *[Metric(f"serve control at {rate} RPS", "serving", f"control: the echo app, open loop at {rate} RPS", "", SERVE,
             open_loop(f"control (bare uvicorn echo) at {rate} RPS")) for rate in (200, 50)],
]


def machine_label(m: dict) -> str:
    return f"{m['cores']} cores ({m['cpu']}{', virtualised' if m.get('virtualised') else ''}), {m['memory_gib']} GiB"


def verdict(checks: list[tuple[str, bool]]) -> str:
    """'yes', 'no', or 'no (time)' when only some limits of the target are missed."""
    if not checks:
        return ""
    missed = [name for name, ok in checks if not ok]
    return "yes" if not missed else "no" if len(missed) == len(checks) else f"no ({', '.join(missed)})"


def records(result: dict) -> list[dict]:
    """The records a `bench/run.py` result (its JSON) measured."""
    rows = {row["stage"]: row for row in result["rows"]}
    out = []
    for m in METRICS:
        read = m.read(rows)
        if read is not None:
            figure, checks = read
            out.append({"stage": m.stage, "key": m.key, "what": m.what, "target": m.target, "figure": figure,
                        "met": verdict(checks), "date": result["when"][:10],
                        "machine": machine_label(result["machine"]),
                        "command": f"`BENCH={m.scale} make bench`"})
    return out


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """Newest wins per key; a key keeps its place, new keys come last."""
    merged = {r["key"]: r for r in old}
    for r in new:
        if r["key"] not in merged or r["date"] >= merged[r["key"]]["date"]:
            merged[r["key"]] = r
    return list(merged.values())


def table(rows: list[dict]) -> str:
    out = ["| measured | target | latest | met | date | machine | command |", "|---|---|---|---|---|---|---|"]
    out += [f"| {r['what']} | {r['target']} | {r['figure']} | {r['met']} | {r['date']} | {r['machine']} | "
            f"{r['command']} |" for r in rows]
    return "\n".join(out)


def render(recs: list[dict], text: str, stages: tuple[str, ...] = STAGES) -> str:
    """`text` (docs/benchmarks.md, or docs/scale.md with `stages=("scale",)`) with each stage's table rendered
    from `recs`."""
    unknown = {r["stage"] for r in recs} - {*STAGES, "scale"}
    if unknown:
        raise ValueError(f"bench/reference.json: unknown stage(s) {sorted(unknown)}; use one of {[*STAGES, 'scale']}")
    order = {m.key: i for i, m in enumerate(METRICS)}  # docs/scale.md: by scale, then stage, as METRICS lists them
    rows = {s: [r for r in recs if r["stage"] == s] for s in stages}
    rows["scale"] = sorted(rows.get("scale", []), key=lambda r: order.get(r["key"], len(order)))
    return fill_sections(text, {s: (lambda s=s: table(rows[s])) for s in stages})


def write_docs(recs: list[dict]) -> None:
    DOC.write_text(render(recs, DOC.read_text()))
    SCALE_DOC.write_text(render(recs, SCALE_DOC.read_text(), ("scale",)))


def load(path: Path = REFERENCE) -> list[dict]:
    return json.loads(path.read_text())


def save(recs: list[dict], path: Path = REFERENCE) -> None:
    path.write_text(json.dumps([{f: r[f] for f in FIELDS} for r in recs], indent=1, ensure_ascii=False) + "\n")


def update(result: dict) -> None:
    """After a run: its records merged into bench/reference.json, docs/benchmarks.md re-rendered."""
    recs = merge(load(), records(result))
    save(recs)
    write_docs(recs)


if __name__ == "__main__":
    write_docs(load())
    print(f"rendered {DOC} and {SCALE_DOC} from {REFERENCE}")
