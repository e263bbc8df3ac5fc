"""`propel features build --engine spark`: the feature build's own DuckDB SQL, run on Apache Spark.

There is one feature registry and one build (propel.features.build): it hands every statement to a connection's
`execute`. `SparkConnection` has that surface and runs each statement on Spark, transpiled by sqlglot from
DuckDB to Spark SQL, plus what sqlglot leaves to the engine:

  CREATE [TEMP] TABLE t AS q a temp view over q, locally checkpointed (later statements read it again: without
                             truncating its lineage Spark would recompute it for each)
  CREATE VIEW v AS q         a temp view (lazy)
  COPY (q) TO 'f.parquet'    one Parquet file at f.parquet, as DuckDB writes it (same columns, types and
                             compression)
  read_parquet([...])        the files read by Spark (columns united by name), FROM 'f.parquet' likewise
  DESCRIBE t                 (column, DuckDB type name) rows
  date - date                datediff(date, date) (Spark's difference is an interval)
  hash(a, b, ...)            xxhash64(a, a IS NULL, b, ...) and UBIGINT as BIGINT (the build's change
                             hashes: compared only with others of the same engine)
  first(x ORDER BY k)        min_by(x, struct(k IS NULL, k)) (NULLs last, as DuckDB orders them)
  * RENAME (a AS b)          * EXCEPT (a), a AS b
  WITH c AS MATERIALIZED     a plain CTE (a DuckDB planner hint)
  out-of-range values        duckdb.ConversionException, as DuckDB raises them (build.py names the cause)

Everything else (FILTER, GROUP BY ALL, * EXCEPT, SEMI/ANTI JOIN, greatest/least skipping NULLs, `/` as
double division) reads the same in both engines; tests/features/test_spark.py compares every value of a
build on each. The workspace must be on storage the driver and the executors share (the lake is read, and the
feature files written, by the executors).
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import duckdb
import sqlglot
from sqlglot import exp

from propel.lake.spark import session
from propel.lake.tables import Lake

# Spark's type names (DataType.simpleString) as DuckDB's DESCRIBE spells them: the catalog's CRM column types
DUCKDB_TYPES = {"string": "VARCHAR", "bigint": "BIGINT", "int": "INTEGER", "smallint": "SMALLINT",
                "tinyint": "TINYINT", "double": "DOUBLE", "float": "FLOAT", "boolean": "BOOLEAN", "date": "DATE",
                "timestamp_ntz": "TIMESTAMP", "timestamp": "TIMESTAMP WITH TIME ZONE"}


class Result:
    """Rows of a query, as DuckDB's `execute(...)` returns them (fetchone, fetchall)."""

    def __init__(self, rows: list[tuple]):
        self.rows = rows

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple]:
        return self.rows


class SparkConnection:
    """DuckDB's `execute` on a Spark session: see the module docstring."""

    def __init__(self, spark):
        self.spark = spark
        # Feast's Spark offline store turns this on for its session; off, `quoted` names are names, not regexes
        spark.conf.set("spark.sql.parser.quotedRegexColumnNames", "false")
        self.names = (f"_propel_parquet_{i}" for i in itertools.count())
        self.dates: dict[str, set[str]] = {}  # view -> its DATE columns (for `date - date`)

    def execute(self, sql: str) -> Result:
        from pyspark.errors import ArithmeticException

        try:
            return self._execute(sqlglot.parse_one(sql, read="duckdb"))
        except ArithmeticException as exc:  # a value out of its type's range, as DuckDB reports it (build.py says why)
            raise duckdb.ConversionException(str(exc).splitlines()[0]) from None

    def _execute(self, statement: exp.Expression) -> Result:
        if isinstance(statement, exp.Create):
            name = statement.this.name
            df = self.spark.sql(self._spark_sql(statement.expression))
            if statement.kind == "TABLE":
                df = df.localCheckpoint()
            df.createOrReplaceTempView(name)
            self.dates[name] = {f.name for f in df.schema.fields if f.dataType.simpleString() == "date"}
            return Result([])
        if isinstance(statement, exp.Drop):
            self.spark.catalog.dropTempView(statement.find(exp.Table).name)
            return Result([])
        if isinstance(statement, exp.Copy):
            params = {p.this.name.lower(): p.expression.name for p in statement.args.get("params") or []}
            self._copy(self.spark.sql(self._spark_sql(statement.this.unnest())), Path(statement.args["files"][0].name),
                       params.get("compression", "snappy"))
            return Result([])
        if isinstance(statement, exp.Describe):
            return Result([(f.name, _duckdb_type(f.dataType.simpleString()))
                           for f in self.spark.table(statement.this.name).schema.fields])
        return Result([tuple(r) for r in self.spark.sql(self._spark_sql(statement)).collect()])

    def _copy(self, df, path: Path, compression: str) -> None:
        """`df` as the one Parquet file `path` (written by Spark into a folder beside it, then moved)."""
        folder = path.with_name(path.name + ".spark")
        df.repartition(1).write.mode("overwrite").option("compression", compression).parquet(str(folder))
        part, = folder.glob("part-*.parquet")
        part.rename(path)
        shutil.rmtree(folder)

    def _spark_sql(self, query: exp.Expression) -> str:
        """`query` (parsed as DuckDB) in Spark SQL."""
        query = query.copy()
        dates = set().union(*(self.dates.get(t.name, ()) for t in query.find_all(exp.Table)))
        dates |= {a.alias for a in query.find_all(exp.Alias) if _is_date(a.this, dates)}  # CAST(ts AS DATE) AS day
        for node in list(query.walk()):
            if isinstance(node, exp.CTE):
                node.set("materialized", None)
            elif isinstance(node, exp.Sub) and _is_date(node.this, dates) and _is_date(node.expression, dates):
                node.replace(exp.Anonymous(this="datediff", expressions=[node.this, node.expression]))
            elif isinstance(node, exp.First) and isinstance(node.this, exp.Order):
                keys = []
                for o in node.this.expressions:  # NULLs first or last as asked (DuckDB: last), then the value
                    null = exp.Is(this=o.this.copy(), expression=exp.Null())
                    keys += [exp.Not(this=null) if o.args.get("nulls_first") else null,
                             exp.Neg(this=o.this) if o.args.get("desc") else o.this]
                node.replace(exp.Anonymous(this="min_by", expressions=[
                    node.this.this, exp.Anonymous(this="struct", expressions=keys)]))
            elif isinstance(node, exp.DataType) and node.this == exp.DataType.Type.UBIGINT:
                node.replace(exp.DataType.build("BIGINT"))  # the change hashes: Spark's are signed
            elif isinstance(node, exp.Anonymous) and node.name.lower() == "hash":
                # xxhash64 skips NULLs: an IS NULL beside each value keeps (NULL, x) and (x, NULL) apart
                node.replace(exp.Anonymous(this="xxhash64", expressions=[
                    v for e in node.expressions for v in (e, exp.Is(this=e.copy(), expression=exp.Null()))]))
            elif isinstance(node, exp.Star) and node.args.get("rename"):
                renamed = node.args["rename"]
                node.set("except_", [*(node.args.get("except_") or []), *(a.this for a in renamed)])
                node.set("rename", None)
                # renamed columns go last (DuckDB keeps their place: the same for the lake's one RENAME, of its last column)
                node.parent.set("expressions", [*node.parent.expressions, *renamed])
            elif isinstance(node, exp.ReadParquet) or (isinstance(node, exp.Anonymous) and node.name == "read_parquet"):
                node.replace(exp.to_identifier(self._read_parquet(node)))
            elif isinstance(node, exp.Table) and node.name.endswith(".parquet"):
                node.set("db", exp.to_identifier("parquet"))
                node.set("this", exp.to_identifier(node.name, quoted=True))
        return query.sql(dialect="spark")

    def _read_parquet(self, node: exp.Expression) -> str:
        """read_parquet(path or [paths], ...) as a temp view of Spark's reading (columns united by name)."""
        first = node.expressions[0] if node.expressions else node.this
        paths = [e.name for e in first.expressions] if isinstance(first, exp.Array) else [first.name]
        name = next(self.names)
        self.spark.read.option("mergeSchema", "true").parquet(*paths).createOrReplaceTempView(name)
        return name


def _is_date(node: exp.Expression, dates: set[str]) -> bool:
    """Whether `node` is a DATE: a cast to DATE, a DATE column of the tables read, or an aggregate or window of
    one (`T - max(day)`, `day - lag(day)`)."""
    if isinstance(node, exp.Paren):
        return _is_date(node.this, dates)
    if isinstance(node, exp.Cast):
        return node.to.is_type(exp.DataType.Type.DATE)
    if isinstance(node, exp.Column):
        return node.name in dates
    if isinstance(node, exp.Window):
        return _is_date(node.this, dates)
    if isinstance(node, (exp.Max, exp.Min, exp.Lag, exp.Lead, exp.Filter)):
        return _is_date(node.this, dates)
    return False


def _duckdb_type(spark_type: str) -> str:
    return spark_type.upper() if spark_type.startswith("decimal") else DUCKDB_TYPES.get(spark_type, spark_type.upper())


def connect(lake: Lake) -> SparkConnection:
    """The lake's views on a Spark session (the active one, else one on `[spark] master`)."""
    return lake.register(SparkConnection(session(lake.ws.settings().spark.master, "propel-features")))
