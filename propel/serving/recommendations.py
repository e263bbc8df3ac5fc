"""`propel score recommender`: batch recommendations and item audiences with the recommender champion
(propel/training/recommender_model.py; columns and options in docs/scoring.md).

- Without `--item`/`--category`: the top-k items of every customer of the audience, one row per
  (customer, item): customer_id, rank, item_id, score, explored (an exploration slot for a new item),
  fallback (why the list is not personal, e.g. an unknown customer gets popular items), and the list's
  recommendation_id (send it back with the events that follow, as for /recommend); the exported lists
  are also written to the served-recommendations log (propel/serving/served_log.py) for analytics.
- With `--item X` or `--category Y`: an item audience, "who would want X most", ranked like any other
  audience (`--top`, `--min-score`): the recommender's score of X (or of the customer's best item of
  Y) per customer. Customers it cannot personalise, or who already bought X, are counted, not listed.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from propel.config import Workspace
from propel.progress import steps
from propel.serving import served_log
from propel.serving.batch import (Audience, Job, Selection, Snapshot, csv_safe, frames, output_format,
                                  summary_path)


def load(ws: Workspace):
    """(Recommender, version) of the champion; ValueError (a user error) when there is none."""
    from propel.training.recommender_model import load_recommender

    try:
        return load_recommender(ws)
    except LookupError as exc:
        raise ValueError(str(exc)) from None


def item_audience_job(ws: Workspace, item: str | None, category: str | None) -> Job:
    if item and category:
        raise ValueError("--item and --category: give one (an item audience is for an item or a category)")
    rec, version = load(ws)
    if item and not rec.knows_item(item):
        raise ValueError(f"--item {item}: not in the recommender's catalogue (recommender v{version})")
    if category and not rec.recommend(None, 1, category=category).items:
        raise ValueError(f"--category {category}: the recommender has no item of this category")
    target = {"allowed_items": [item]} if item else {"category": category}

    def score_chunk(df: pd.DataFrame) -> pd.DataFrame:
        ids = df["customer_id"].tolist()
        found = [rec.recommend(c, 1, **target) if rec.knows_customer(c) else None for c in ids]
        score = pd.array([r.scores[0] if r is not None and r.items else None for r in found], dtype="Float64")
        outcome = ["unknown customer" if r is None else "recommended" if r.items else "already bought"
                   for r in found]
        out = pd.DataFrame({"customer_id": ids, "score": score, "decile": pd.array([None] * len(ids), "Int64"),
                            "outcome": outcome})
        if category:
            out.insert(2, "item_id", [r.items[0] if r is not None and r.items else None for r in found])
        return out

    return Job(f"recommender audience for {'item ' + item if item else 'category ' + category}",
               f"recommender v{version}", score_chunk, ["score", *(["item_id"] if category else [])],
               decile_basis="scored audience", settings={"item": item, "category": category},
               keep="outcome = 'recommended'", tally="outcome")


def recommendations(ws: Workspace, snap: Snapshot, selection: Selection, out: Path | None, k: int,
                    chunk_rows: int, progress: bool = False) -> dict:
    """Top-k items per customer of the audience, written in (customer, rank) order."""
    if selection.top or selection.min_score is not None:
        raise ValueError("--top/--min-score select customers by a score; batch recommendations list k items for "
                         "every customer of the audience (use --where, or --item/--category for an item audience)")
    started = time.perf_counter()
    fmt = output_format(ws, out)
    rec, version = load(ws)
    audience = Audience(ws, snap, selection.where, selection.honour_consent)
    counts = audience.counts()
    segment = audience.segment
    writer, partial, rows, fallback, items = None, None, 0, 0, set()
    run, lists = uuid.uuid4().hex[:16], 0  # recommendation_id = run + the list's number in the run
    preview = []
    with steps(progress, "recommend", max(1, math.ceil(counts["scored"] / chunk_rows))) as advance:
        reader = audience.chunks(columns=["customer_id", *([segment] if segment else [])])
        for df in frames(reader, chunk_rows):
            recs = rec.batch(df["customer_id"].tolist(), k)
            if segment:
                recs["segment"] = recs["customer_id"].map(df.set_index("customer_id")[segment])
            recs["model_version"] = f"recommender v{version}"
            number = lists + recs["customer_id"].ne(recs["customer_id"].shift()).cumsum().to_numpy()
            recs["recommendation_id"] = [f"{run}{n:016x}" for n in number]
            if out:
                served_log.write_batch(ws, recs, run, lists, rec.model.name, str(version))
            lists = int(number[-1]) if len(number) else lists
            rows += len(recs)
            fallback += int(recs.drop_duplicates("customer_id")["fallback"].notna().sum())
            items.update(recs["item_id"].unique())
            preview = preview or recs.head(k).to_dict("records")
            if out:
                table = pa.Table.from_pandas(recs, preserve_index=False)
                if writer is None:
                    partial, schema = out.with_name(out.name + ".partial"), table.schema
                    writer = pacsv.CSVWriter(partial, schema) if fmt == "csv" else pq.ParquetWriter(partial, schema)
                writer.write_table(csv_safe(table.cast(schema)) if fmt == "csv" else table.cast(schema))
            advance(f"{rows:,} rows")
    if writer is not None:
        writer.close()
        partial.replace(out)
    elif out:
        empty = pa.table({c: pa.array([], pa.string()) for c in ("customer_id", "rank", "item_id", "score",
                                                                 "explored", "fallback", "model_version",
                                                                 "recommendation_id")})
        (pacsv.write_csv if fmt == "csv" else pq.write_table)(empty, out)
    counts.update({"exported": rows, "customers_with_fallback": fallback, "distinct_items": len(items)})
    summary = {"task": "recommender", "model": f"recommender v{version}", "output": str(out) if out else None,
               "selection": {"where": selection.where, "honour_consent": selection.honour_consent, "k": k},
               "counts": counts, "freshness": audience.snap.freshness(), "scores": {}, "deciles": {},
               "preview": None if out else preview[:5], "seconds": round(time.perf_counter() - started, 2)}
    if out:
        summary_path(out).write_text(json.dumps(summary, indent=2, default=str))
    return summary
