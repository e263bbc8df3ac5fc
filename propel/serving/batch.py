"""`propel score`: score every customer, or an audience, with a task's champion and export it.

Features come from the offline snapshot as of `--as-of` (the newest snapshot on or before that day,
default the latest), joined with the CRM profile and the lake's marketing consent. The work is
chunked so memory stays bounded whatever the number of customers:

  1. DuckDB streams the audience (`--where`, consenting customers only) in chunks; each chunk is
     scored with the champion (propel.serving.scoring's, the model's own predict) and its scores go to a
     temporary Parquet.
  2. DuckDB ranks all scores, applies `--top` / `--min-score` / `--persuadables`.
  3. The selected rows are streamed again in rank order, with their features when reason codes are
     wanted (SHAP, the costly part, so only for exported rows), and written as CSV or Parquet.

With `--engine spark` step 1 runs on Apache Spark instead (propel.serving.spark: the same audience and model
through `mlflow.pyfunc.spark_udf`); steps 2 and 3 are the same.

A summary (counts, score distribution, consent exclusions, feature freshness) is printed and saved
next to the output as `<name>.summary.json`. Customers without marketing consent are counted and
never exported unless `honour_consent=False` (analysis only).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from propel.features.asof import as_of_sql
from propel.features.build import load_catalog
from propel.lake.tables import Lake
from propel.features.request_features import request_context
from propel.config import Workspace
from propel.progress import steps
from propel.serving import scoring
from propel.serving.audience import Top, where_sql
from propel.serving.scoring import BadContext, Champion, check_context
from propel.training.registry import NoChampion

SEGMENT_COLUMNS = ("segment", "rfm_segment")  # a segment feature, when the feature table has one
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def load_champion(ws: Workspace, task: str) -> Champion:
    """propel.serving.scoring's champion, with the missing one a ValueError naming the workspace."""
    try:
        return scoring.load_champion(ws, task)
    except NoChampion as exc:
        raise ValueError(f"{exc} [workspace {ws.root}]") from None


def model_uri(champion: Champion) -> str:
    return f"models:/{champion.task}/{champion.version}"


def label(champion: Champion) -> str:
    return f"{champion.task} v{champion.version}"


@dataclass(frozen=True)
class Campaign:
    """What is sent, for models that score a contact (propensity, uplift): its channel and offer."""

    channel: str
    offer_type: str
    campaign_id: str | None = None
    cost: float = 0.0  # per contact (next best action)


OPTIONS = {"campaign_channel": "--channel", "offer_type": "--offer"}


def context(champion: Champion, campaign: Campaign | None, send_at: datetime) -> dict[str, object]:
    """Constant input columns the snapshot lacks: what is sent (checked by propel.serving.scoring) and the
    calendar of the send time (the function Feast's on-demand view `request_context` applies online)."""
    out: dict[str, object] = {}
    if champion.context_fields:
        if campaign is None:
            known = "; ".join(f"{OPTIONS[c]} {', '.join(champion.levels.get(c, []))}" for c in champion.context_fields)
            raise ValueError(f"{champion.task} scores depend on what is sent: pass --channel and --offer ({known}) "
                             "or --campaign ID")
        try:
            out.update(check_context(champion, {"campaign_channel": campaign.channel, "offer_type": campaign.offer_type}))
        except BadContext as exc:
            raise ValueError(f"{OPTIONS.get(exc.field, exc.field)}: {exc}") from None
    calendar = [f for f in champion.model.features if f.startswith("request_")]
    if calendar:
        row = request_context(pd.DataFrame({"request_ts": [pd.Timestamp(send_at).tz_convert("UTC")]})).iloc[0]
        out.update({f: row[f] for f in calendar})
    return out


def predict(champion: Champion, df: pd.DataFrame) -> pd.DataFrame:
    """The champion's own predict on feature rows, as the service calls it: `score` (+ p_treated and
    p_control for uplift). The model turns the frame into its input itself (one transform, no copy)."""
    try:
        return champion.model.predict(None, df)
    except KeyError as exc:
        raise ValueError(f"{label(champion)} needs input the feature table lacks ({exc}); rebuild features "
                         "(`propel features build`) or retrain the model") from None


def decile_sql(edges: list[float], column: str = "score") -> str:
    """`Champion.deciles()` as a SQL expression (DuckDB and Spark SQL)."""
    return "1 + " + " + ".join(f"CASE WHEN {column} < {float(e)!r} THEN 1 ELSE 0 END" for e in edges)


def reasons(champion: Champion, df: pd.DataFrame, top: int) -> list[str]:
    """Reason codes: the features pushing each row's score up most (SHAP), as 'name (+0.423); ...' (log-odds)."""
    return ["; ".join(f"{name} ({value:+.3g})" for name, value in row) for row in champion.model.explain(df, top)]


# --- the offline audience -------------------------------------------------------------------------

@dataclass
class Snapshot:
    """The features as of a cutoff (`propel.features.asof`): `sql` is their relation, in DuckDB SQL. `at`: the
    moment the clock features (days since, tenure) count to, e.g. the send time, as the online path counts
    to its request time; None = the cutoff."""
    day: date
    latest: date
    ws: Workspace
    catalog: dict
    at: datetime | None = None

    @property
    def sql(self) -> str:
        return as_of_sql(self.ws, self.day, clock_at=self.at)

    @property
    def segments(self) -> Path:
        return self.ws.segments / f"{self.day.isoformat()}.parquet"  # `propel segments` output, if it ran

    def freshness(self) -> dict:
        built = datetime.fromtimestamp(self.ws.catalog.stat().st_mtime, timezone.utc)
        return {"snapshot": self.day.isoformat(), "latest_snapshot": self.latest.isoformat(),
                "snapshot_age_days": (datetime.now(timezone.utc).date() - self.day).days,
                "features_built_at": built.isoformat(timespec="seconds"), "lake_load": self.catalog.get("lake_load")}


def snapshot(ws: Workspace, as_of: date | None = None, at: datetime | None = None) -> Snapshot:
    """The newest feature snapshot on or before `as_of` (default: the latest), its clock features counted to
    `at` (default: the snapshot's own day; never before it)."""
    catalog = load_catalog(ws)
    days = [date.fromisoformat(c) for c in catalog["cutoffs"]]
    usable = [d for d in days if as_of is None or d <= as_of]
    if not usable:
        raise ValueError(f"--as-of {as_of}: no feature snapshot on or before it; snapshots cover "
                         f"{days[0]}..{days[-1]} (`propel features build --snapshots N` keeps more)")
    day = usable[-1]
    midnight = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    return Snapshot(day, days[-1], ws, catalog, max(at, midnight) if at else None)


class Audience:
    """The snapshot's customers as a DuckDB view `base` (features, CRM profile, `_consent`), filtered."""

    def __init__(self, ws: Workspace, snap: Snapshot, where: str | None = None, honour_consent: bool = True):
        self.snap, self.where_text, self.honour_consent = snap, where, honour_consent
        self.con = Lake(ws).connect()
        profile = "".join(f', p."{c}"' for c in snap.catalog.get("profile_columns", {}))
        segments = snap.segments
        self.con.execute("CREATE TEMP TABLE allowed AS SELECT customer_id FROM contactable")
        self.con.execute(f"""CREATE TEMP VIEW base AS SELECT f.* EXCLUDE (event_timestamp){profile}
                               {", s.* EXCLUDE (customer_id, event_timestamp)" if segments.exists() else ""},
                               a.customer_id IS NOT NULL AS _consent
                             FROM ({snap.sql}) f
                             LEFT JOIN read_parquet('{ws.profile}') p USING (customer_id)
                             {f"LEFT JOIN read_parquet('{segments}') s USING (customer_id)" if segments.exists() else ""}
                             LEFT JOIN allowed a USING (customer_id)""")
        self.columns = [r[0] for r in self.con.execute("DESCRIBE base").fetchall() if not r[0].startswith("_")]
        self.where = where_sql(where, self.columns) if where else "true"
        self.filter = f"({self.where})" + (" AND _consent" if honour_consent else "")

    @property
    def segment(self) -> str | None:
        return next((c for c in SEGMENT_COLUMNS if c in self.columns), None)

    def counts(self) -> dict[str, int]:
        try:
            total, matching, refused = self.con.execute(
                f"SELECT count(*), count(*) FILTER (WHERE {self.where}), "
                f"count(*) FILTER (WHERE ({self.where}) AND NOT _consent) FROM base").fetchall()[0]
        except duckdb.Error as exc:
            raise ValueError(f"--where {self.where_text!r}: {str(exc).splitlines()[0]}") from None
        if not self.honour_consent:  # analysis only: everyone is scored, and the summary says how many refused
            return {"customers_in_snapshot": total, "matching_where": matching, "excluded_no_consent": 0,
                    "included_without_consent": refused, "scored": matching}
        return {"customers_in_snapshot": total, "matching_where": matching, "excluded_no_consent": refused,
                "scored": matching - refused}

    def chunks(self, rows: int = 100_000, columns: list[str] | None = None) -> pa.RecordBatchReader:
        """The audience's rows (consenting only, unless consent is not honoured) as Arrow batches."""
        cols = ", ".join(f'"{c}"' for c in columns) if columns else "* EXCLUDE (_consent)"
        return self.con.sql(f"SELECT {cols} FROM base WHERE {self.filter}").to_arrow_reader(rows)


# --- the batch job ----------------------------------------------------------------------------------

@dataclass
class Selection:
    where: str | None = None
    top: Top | None = None
    min_score: float | None = None
    persuadables: bool = False  # uplift: only customers the contact is predicted to help (uplift > 0)
    honour_consent: bool = True


@dataclass
class Job:
    """One export: how each chunk is scored, explained, and which columns are written."""

    title: str
    model: str  # e.g. "churn v3"
    score_chunk: Callable[[pd.DataFrame], pd.DataFrame]  # features -> customer_id, score, [decile], extras
    columns: list[str]  # exported columns between customer_id and decile/rank
    explain: Callable[[pd.DataFrame], list[str]] | None = None  # features (+ scored extras) -> reason codes
    decile_basis: str = "training"
    settings: dict = field(default_factory=dict)  # recorded in the summary's selection
    keep: str | None = None  # SQL condition on scored rows that may be exported (e.g. an action was chosen)
    tally: str | None = None  # a scored column whose value counts the summary reports


def run(ws: Workspace, job: Job, audience: Audience, selection: Selection, out: Path | None,
        chunk_rows: int, progress: bool = False, score_all: Callable[[Path], Path] | None = None) -> dict:
    """Score the audience chunk by chunk, select, export and summarise (see the module docstring).
    `score_all(folder)`, when given, scores the whole audience instead (Spark: `propel.serving.spark.write_scores`)
    and returns the Parquet file(s) it wrote under `folder`, with the columns `job.score_chunk` gives."""
    started = time.perf_counter()
    fmt = output_format(ws, out)
    counts = audience.counts()
    con = audience.con
    tmp = Path(tempfile.mkdtemp(prefix="propel-score-", dir=ws.data if ws.data.exists() else None))
    try:
        scored = (score_all(tmp) if score_all else
                  _score_all(job, audience, tmp / "scored.parquet", chunk_rows, counts["scored"], progress))
        limit = selection.top.limit(counts["scored"]) if selection.top else counts["scored"]
        conds = [f"score >= {float(selection.min_score)!r}"] if selection.min_score is not None else []
        conds += ["score > 0"] if selection.persuadables else []
        con.execute(f"""CREATE OR REPLACE TEMP TABLE selected AS SELECT * FROM (
                          SELECT * REPLACE (coalesce(decile, ntile(10) OVER w) AS decile), row_number() OVER w AS rank
                          FROM read_parquet('{scored}') WHERE {job.keep or 'true'}
                          WINDOW w AS (ORDER BY score DESC, customer_id))
                        WHERE rank <= {int(limit)} {''.join(' AND ' + c for c in conds)}""")
        counts["exported"] = con.execute("SELECT count(*) FROM selected").fetchall()[0][0]
        if job.tally:
            counts[job.tally] = dict(con.execute(f"SELECT {job.tally}, count(*) FROM read_parquet('{scored}') "
                                                 "GROUP BY 1 ORDER BY 2 DESC").fetchall())
        if out:
            _export(job, audience, out, fmt, tmp, chunk_rows, counts["exported"], progress)
        summary = {"task": job.title, "model": job.model, "output": str(out) if out else None,
                   "selection": {**asdict(selection), "top": str(selection.top) if selection.top else None,
                                 **job.settings},
                   "counts": counts, "freshness": audience.snap.freshness(),
                   "scores": {"scored": _distribution(con, f"read_parquet('{scored}')"),
                              "exported": _distribution(con, "selected")},
                   "deciles": {"basis": job.decile_basis, "exported": {int(k): v for k, v in con.execute(
                       "SELECT decile, count(*) FROM selected GROUP BY 1 ORDER BY 1").fetchall()}},
                   "preview": None if out else con.execute(
                       "SELECT customer_id, score FROM selected ORDER BY rank LIMIT 5").df().to_dict("records"),
                   "seconds": round(time.perf_counter() - started, 2)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if out:
        summary_path(out).write_text(json.dumps(summary, indent=2, default=str))
    return summary


def output_format(ws: Workspace, out: Path | None) -> str | None:
    """The export's format; ValueError for a path an export must not write: an unknown suffix, a missing
    folder, or anywhere inside the workspace's own data (lake, features, Feast, MLflow...), symlinks and
    `..` resolved, so an export can never overwrite what the pipeline reads."""
    if out is None:
        return None
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise ValueError(f"--out {out}: write .csv or .parquet")
    if not out.parent.exists():
        raise ValueError(f"--out {out}: folder {out.parent} does not exist")
    target = out.resolve()
    for folder in (ws.lake, ws.features, ws.feast_data, ws.mlruns, ws.data):  # the most specific named first
        if target.is_relative_to(folder.resolve()):
            raise ValueError(f"--out {out}: that is inside the workspace's {folder.name} folder ({folder}), which "
                             "holds Propel's own data; write the export outside it (e.g. --out exports/"
                             f"{out.name})")
    return fmt


FORMULA = r"^[=+\-@\t\r]"  # cell starts a spreadsheet would run as a formula (OWASP, CSV injection)


def csv_safe(table: pa.Table) -> pa.Table:
    """OWASP's CSV-injection advice for every text cell of a CSV export: one starting with = + - @, a tab or
    a carriage return gets a leading single quote, so a spreadsheet shows it instead of running it (an id
    like `=HYPERLINK(...)`). Numbers stay numbers: a negative score is not text."""
    for i, col in enumerate(table.columns):
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            quoted = pc.if_else(pc.match_substring_regex(col, FORMULA), pc.binary_join_element_wise("'", col, ""), col)
            table = table.set_column(i, table.field(i).with_type(col.type), quoted)
    return table


def summary_path(out: Path) -> Path:
    return out.with_name(out.stem + ".summary.json")


def frames(reader: pa.RecordBatchReader, rows: int) -> Iterator[pd.DataFrame]:
    """Re-cut DuckDB's uneven Arrow batches into frames of exactly `rows` (the last one smaller)."""
    pending, n = [], 0
    for batch in reader:
        pending.append(batch)
        n += batch.num_rows
        while n >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows).to_pandas()
            rest = table.slice(rows)
            pending, n = rest.to_batches(), rest.num_rows
    if n:
        yield pa.Table.from_batches(pending).to_pandas()


def _score_all(job: Job, audience: Audience, path: Path, chunk_rows: int, n: int, progress: bool) -> Path:
    writer = None
    with steps(progress, f"score {job.title}", max(1, math.ceil(n / chunk_rows))) as advance:
        for i, df in enumerate(frames(audience.chunks(), chunk_rows)):
            scored = job.score_chunk(df)
            if audience.segment and "segment" not in scored:
                scored["segment"] = df[audience.segment].to_numpy()
            table = pa.Table.from_pandas(scored, preserve_index=False)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table.cast(writer.schema))
            advance(f"{min((i + 1) * chunk_rows, n):,} customers")
    if writer is None:  # nobody in the audience: an empty file with the columns
        cols = ["customer_id", *job.columns, "decile"] + (["segment"] if audience.segment else [])
        pq.write_table(pa.table({c: pa.array([], pa.int64() if c == "decile" else pa.float64() if c == "score"
                                               else pa.string()) for c in cols}), path)
    else:
        writer.close()
    return path


def _export(job: Job, audience: Audience, out: Path, fmt: str, tmp: Path, chunk_rows: int, n: int, progress: bool):
    cols = ["customer_id", *job.columns, "decile", "rank"]
    if job.explain:
        cols.append("reasons")
    if audience.segment:
        cols.append("segment")
    if job.explain:  # reasons need the features of the selected rows
        own = {r[0] for r in audience.con.execute("DESCRIBE selected").fetchall()}
        skip = ", ".join(f'"{c}"' for c in {"_consent", *own} & {"_consent", *audience.columns})
        sql = f"SELECT s.*, b.* EXCLUDE ({skip}) FROM selected s JOIN base b USING (customer_id) ORDER BY rank"
    else:
        sql = "SELECT * FROM selected ORDER BY rank"
    partial, writer, done = tmp / f"out{out.suffix}", None, 0
    with steps(progress, "export", max(1, math.ceil(n / chunk_rows))) as advance:
        for df in frames(audience.con.sql(sql).to_arrow_reader(chunk_rows), chunk_rows):
            if job.explain:
                df["reasons"] = job.explain(df)
            table = pa.Table.from_pandas(df[cols].assign(model_version=job.model), preserve_index=False)
            if writer is None:
                schema = table.schema
                writer = pacsv.CSVWriter(partial, schema) if fmt == "csv" else pq.ParquetWriter(partial, schema)
            writer.write_table(csv_safe(table.cast(schema)) if fmt == "csv" else table.cast(schema))
            done += len(df)
            advance(f"{done:,} rows")
    if writer is None:
        empty = pa.table({c: pa.array([], pa.string()) for c in [*cols, "model_version"]})
        (pacsv.write_csv if fmt == "csv" else pq.write_table)(empty, partial)
    else:
        writer.close()
    shutil.move(partial, out)  # the output appears whole or not at all


def _distribution(con: duckdb.DuckDBPyConnection, relation: str) -> dict:
    row = con.execute(f"""SELECT count(*), min(score), quantile_cont(score, [0.1, 0.25, 0.5, 0.75, 0.9]), max(score),
                          avg(score) FROM {relation}""").fetchall()[0]
    if not row[0]:
        return {"count": 0}
    q = row[2]
    return {"count": row[0], "min": row[1], "p10": q[0], "p25": q[1], "median": q[2], "p75": q[3], "p90": q[4],
            "max": row[3], "mean": row[4]}


# --- churn, propensity, uplift ------------------------------------------------------------------------

def score_job(champion: Champion, campaign: Campaign | None, send_at: datetime, top_reasons: int) -> Job:
    """The job for a classifier/uplift champion: constant context, score, training deciles, SHAP reasons."""
    ctx = context(champion, campaign, send_at)

    def with_context(df: pd.DataFrame) -> pd.DataFrame:
        return df.assign(**ctx) if ctx else df

    def score_chunk(df: pd.DataFrame) -> pd.DataFrame:
        out = predict(champion, with_context(df))
        out.insert(0, "customer_id", df["customer_id"].to_numpy())
        dec = champion.deciles(out["score"].to_numpy())
        out["decile"] = pd.array(dec if dec is not None else [None] * len(out), dtype="Int64")
        return out

    extras = ["p_treated", "p_control"] if champion.task == "uplift" else []
    settings = {"campaign": asdict(campaign) if campaign and ctx else None,
                "send_at": send_at.isoformat() if any(k.startswith("request_") for k in ctx) else None}
    return Job(champion.task, label(champion), score_chunk, ["score", *extras],
               (lambda df: reasons(champion, with_context(df), top_reasons)) if top_reasons else None,
               "training" if getattr(champion.model, "decile_edges", None) else "scored audience", settings)


def describe(summary: dict) -> list[str]:
    """The printed summary: a few lines a marketer can check before uploading the file."""
    c, s, f = summary["counts"], summary["scores"].get("exported", {}), summary["freshness"]
    what = (f"{c['exported']:,} recommendations ({c['distinct_items']:,} distinct items) for {c['scored']:,} customers"
            if "distinct_items" in c else f"{c['exported']:,} exported of {c['scored']:,} scored")
    lines = [f"{summary['model']}: {what} "
             f"({c['matching_where']:,} matching, {c['excluded_no_consent']:,} excluded for lack of marketing consent, "
             f"{c['customers_in_snapshot']:,} in the snapshot)"]
    if c.get("included_without_consent"):
        lines.append(f"consent ignored: {c['included_without_consent']:,} customers without marketing consent are "
                     "included: do not use this file to contact anyone")
    if c.get("outcome"):
        lines.append("outcomes: " + ", ".join(f"{k} {v:,}" for k, v in c["outcome"].items()))
    if s.get("count"):
        lines.append(f"scores exported: min {s['min']:.4f}, median {s['median']:.4f}, max {s['max']:.4f}; "
                     f"deciles ({summary['deciles']['basis']}): "
                     + ", ".join(f"{k}:{v}" for k, v in summary["deciles"]["exported"].items()))
    lines.append(f"features: snapshot {f['snapshot']} ({f['snapshot_age_days']} days old; latest {f['latest_snapshot']}, "
                 f"lake load {f['lake_load']})")
    if summary.get("output"):
        lines.append(f"wrote {summary['output']} and {summary_path(Path(summary['output'])).name} "
                     f"({summary['seconds']:.1f}s)")
    for row in summary.get("preview") or []:
        lines.append(f"  {row['customer_id']}  {row['score']:.4f}")
    return lines
