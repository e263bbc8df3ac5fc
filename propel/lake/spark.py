"""The one Spark session builder, for every stage that runs on Apache Spark (`propel features build --engine
spark`, `propel score --engine spark`, Feast's Spark offline store). The master comes from `[spark] master` in
propel.toml (`local[*]` by default; a cluster's URL such as `yarn` or `spark://host:7077`). pyspark is an
optional extra: without it the commands that need Spark say how to install it."""

from __future__ import annotations

import os
import sys

# Defaults for a local session (the tests, a laptop); on a cluster set the same keys in spark-submit.
SPARK_CONF = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",  # columnar transfer to pandas UDFs
    "spark.sql.execution.arrow.maxRecordsPerBatch": "20000",  # rows per pandas batch the model scores at once
    "spark.sql.session.timeZone": "UTC",  # snapshot timestamps are UTC
    "spark.sql.shuffle.partitions": "8",  # small joins (profile, consent) need few partitions
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",  # Parquet timestamps as DuckDB writes them
    "spark.python.worker.reuse": "true",  # keep Python workers (and the loaded model) between tasks
    "spark.ui.enabled": "false",  # no web UI for batch jobs
}


def require() -> None:
    """A clear error, not an ImportError deep in a stack, when pyspark is missing."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise ValueError("this runs on Apache Spark, and pyspark is not installed. Fix: pip install 'propel[spark]' "
                         "(and Java 17 or newer on the PATH), or use the default engine.") from None


def session(master: str = "local[*]", app: str = "propel", **conf: str):
    """The process's active Spark session if there is one (a notebook, a test, spark-submit), else a new one on
    `master` with `SPARK_CONF` (overridable: `session(**{"spark.driver.memory": "4g"})`). Python workers run this
    interpreter unless PYSPARK_PYTHON says otherwise (on a cluster: the executors' Python with Propel installed)."""
    require()
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(master).appName(app)
    for key, value in {**SPARK_CONF, **conf}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
