"""Scoring on Apache Spark: the same champion, feature snapshot, audience filter and consent rule as
`propel score`, with the model applied by MLflow's `mlflow.pyfunc.spark_udf` (pandas batches over
Arrow), for feature tables larger than one machine. Configuration: docs/scoring.md ("On Apache Spark").

    propel score churn --engine spark --where "city_tier = 1" --top 10% --out churn.csv

scores on Spark and hands the scores to `propel score`'s ranking, selection, reason codes and export
(`write_scores`); from Python, `score()` gives the scores as a Spark DataFrame:

    from propel.lake.spark import session
    from propel.serving.spark import score
    spark = session("local[*]")
    score(spark, ws, "churn", where="city_tier = 1").write.parquet("churn_scores")

The model sees exactly the single-machine input: every feature cast to the type of the model's
signature (double or string, `propel.training.model.model_input`) before the UDF, so MLflow's schema
enforcement accepts Spark's integer and decimal columns.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path

import mlflow
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from propel.features import asof
from propel.lake.spark import session
from propel.lake.tables import Lake
from propel.config import Workspace
from propel.serving.audience import where_sql
from propel.serving.batch import (Audience, Campaign, Champion, context, decile_sql, label, load_champion, model_uri,
                           snapshot)


def features(spark: SparkSession, ws: Workspace, as_of: date | None = None, at: datetime | None = None) -> DataFrame:
    """The snapshot as of `as_of` (clock features counted to `at`, see `propel.serving.batch.snapshot`) joined with
    the CRM profile and segments: `propel.serving.batch.Audience`'s `base`."""
    snap = snapshot(ws, as_of, at)
    df = asof.as_of_spark(spark, ws, snap.day, clock_at=snap.at).drop("event_timestamp")
    df = df.join(spark.read.parquet(str(ws.profile)).drop("event_timestamp"), "customer_id", "left")
    if snap.segments.exists():
        df = df.join(spark.read.parquet(str(snap.segments)).drop("event_timestamp"), "customer_id", "left")
    return df


def contactable(spark: SparkSession, ws: Workspace) -> DataFrame:
    """Customers who gave marketing consent (the lake's `contactable` view, read with DuckDB)."""
    table = Lake(ws).connect().sql("SELECT customer_id FROM contactable").to_arrow_table()
    return spark.createDataFrame(table.to_pandas() if table.num_rows else [], "customer_id string")


def model_columns(champion: Champion, ctx: dict) -> list[Column]:
    """The model's inputs in its signature's types: categoricals as strings, everything else as doubles."""
    cols = []
    for f in champion.model.features:
        col = F.lit(ctx[f]) if f in ctx else F.col(f)
        cols.append(col.cast("string" if f in champion.levels else "double").alias(f))
    return cols


def audience(spark: SparkSession, ws: Workspace, as_of: date | None = None, where: str | None = None,
             honour_consent: bool = True, at: datetime | None = None) -> DataFrame:
    """`features()` filtered by `--where` and, unless told otherwise, to customers who gave consent."""
    df = features(spark, ws, as_of, at)
    if where:
        df = df.where(where_sql(where, df.columns, dialect="spark"))
    if honour_consent:
        df = df.join(contactable(spark, ws), "customer_id", "left_semi")
    return df


def apply(spark: SparkSession, champion: Champion, df: DataFrame, ctx: dict,
          carry: dict[str, str] | None = None) -> DataFrame:
    """customer_id, score (+ p_treated/p_control for uplift), decile, model_version for the rows of `df`,
    plus the `carry` columns of `df` (output name -> column) passed through."""
    outputs = ["score", "p_treated", "p_control"] if champion.task == "uplift" else ["score"]
    udf = mlflow.pyfunc.spark_udf(spark, model_uri(champion), result_type=", ".join(f"{c} double" for c in outputs),
                                  env_manager="local")
    kept = [F.col(c).alias(name) for name, c in (carry or {}).items()]
    scored = df.select("customer_id", udf(F.struct(*model_columns(champion, ctx))).alias("_p"), *kept)
    scored = scored.select("customer_id", *[F.col(f"_p.{c}").alias(c) for c in outputs], *(carry or {}))
    edges = getattr(champion.model, "decile_edges", None)
    decile = F.expr(decile_sql(edges)) if edges else F.ntile(10).over(Window.orderBy(F.desc("score"), "customer_id"))
    return scored.withColumn("decile", decile.cast("int")).withColumn("model_version", F.lit(label(champion)))


def score(spark: SparkSession, ws: Workspace, task: str, as_of: date | None = None, where: str | None = None,
          honour_consent: bool = True, campaign: Campaign | None = None, send_at: datetime | None = None) -> DataFrame:
    """customer_id, score (+ p_treated/p_control for uplift), decile, model_version, for the audience."""
    champion = load_champion(ws, task)
    ctx = context(champion, campaign, send_at or datetime.now(timezone.utc))
    return apply(spark, champion, audience(spark, ws, as_of, where, honour_consent), ctx)


def write_scores(ws: Workspace, champion: Champion, ctx: dict, aud: Audience, master: str, folder: Path) -> Path:
    """`propel score --engine spark`: the scores of `propel.serving.batch.Audience` `aud` computed on Spark and
    written as Parquet under `folder`, in the layout of the single-machine scorer (customer_id, score,
    extras, decile, segment), for `propel.serving.batch.run` to rank, select, explain and export. Uses the
    process's active Spark session if there is one (a notebook, a test), else starts one on `master` and
    stops it after."""
    created = SparkSession.getActiveSession() is None
    spark = session(master)
    try:
        df = audience(spark, ws, aud.snap.day, aud.where_text, aud.honour_consent, aud.snap.at)
        scored = apply(spark, champion, df, ctx, {"segment": aud.segment} if aud.segment else None)
        scored = scored.drop("model_version").withColumn("decile", F.col("decile").cast("long"))
        scored.write.parquet(str(folder / "spark"))
    finally:
        if created:
            spark.stop()
    return folder / "spark" / "*.parquet"
