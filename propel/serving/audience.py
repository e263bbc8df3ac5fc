"""Audience selection for `propel score`: the `--where` language and `--top`.

`--where` is a SQL boolean expression over the feature table's columns (features, CRM attributes,
segments), e.g. `city_tier = 1 AND days_since_last_purchase < 90 AND membership_tier IN ('gold', 'silver')`.
It is parsed with sqlglot, every node is checked against a whitelist (comparisons, AND/OR/NOT, IN,
BETWEEN, LIKE, IS NULL, arithmetic and a few scalar functions) and every column against the known
columns; the SQL that DuckDB runs is re-generated from that checked tree, never the user's text, so
no subquery, statement or other function can get through.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

ALLOWED = (
    exp.And, exp.Or, exp.Not, exp.Paren, exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.In, exp.Between,
    exp.Is, exp.Like, exp.ILike, exp.Column, exp.Identifier, exp.Literal, exp.Boolean, exp.Null, exp.Neg, exp.Add,
    exp.Sub, exp.Mul, exp.Div, exp.Mod, exp.Tuple,
    exp.Lower, exp.Upper, exp.Abs, exp.Coalesce, exp.Least, exp.Greatest, exp.Round, exp.Length,
)
_OPERATORS = "=, <>, <, <=, >, >=, AND, OR, NOT, IN (...), BETWEEN, LIKE, IS [NOT] NULL, + - * /"


def where_sql(text: str, columns: list[str], dialect: str = "duckdb") -> str:
    """Validated SQL (DuckDB, or another sqlglot dialect such as "spark") for a `--where` expression;
    ValueError naming the problem otherwise."""
    try:
        parsed = [e for e in sqlglot.parse(text, dialect="duckdb") if e is not None]
    except ParseError as exc:
        raise ValueError(f"--where: cannot parse {text!r} ({str(exc).splitlines()[0]}); write a condition such as "
                         "\"city_tier = 1 AND days_since_last_purchase < 90\"") from None
    if len(parsed) != 1:
        raise ValueError(f"--where: expected one condition, got {len(parsed)} statements")
    tree = parsed[0]
    by_lower = {c.lower(): c for c in columns}
    for node in tree.walk():
        if not isinstance(node, ALLOWED):
            what = node.sql(dialect="duckdb")[:60]
            raise ValueError(f"--where: '{what}' is not allowed ({type(node).__name__}); use columns, literals "
                             f"and {_OPERATORS}, and lower/upper/abs/coalesce/least/greatest/round/length")
        if isinstance(node, exp.Column):
            if node.table:
                raise ValueError(f"--where: write plain column names, not '{node.sql()}'")
            name = node.name
            if name.lower() not in by_lower:
                raise ValueError(unknown_column(name, columns, quoted=node.this.quoted))
            node.set("this", exp.to_identifier(by_lower[name.lower()], quoted=True))
    if isinstance(tree, (exp.Column, exp.Literal, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod, exp.Neg)):
        raise ValueError(f"--where: {text!r} is not a condition; compare it, e.g. \"{text} > 0\"")
    return tree.sql(dialect=dialect)


def unknown_column(name: str, columns: list[str], quoted: bool = False) -> str:
    close = difflib.get_close_matches(name.lower(), [c.lower() for c in columns], n=5, cutoff=0.6)
    by_lower = {c.lower(): c for c in columns}
    hint = (f"did you mean {', '.join(by_lower[c] for c in close)}?" if close
            else f"known columns include {', '.join(sorted(columns)[:12])}... (docs/features.md lists all)")
    quote = " (text values take single quotes: 'gold')" if quoted else ""
    return f"--where: unknown column '{name}'{quote}; {hint}"


@dataclass(frozen=True)
class Top:
    """`--top`: a share of the audience (`10%`) or a count (`5000`)."""

    share: float | None = None
    count: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> "Top | None":
        if not text:
            return None
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*", text)
        if m and m.group(2):
            share = float(m.group(1)) / 100
            if 0 < share <= 1:
                return cls(share=share)
        elif m and "." not in m.group(1) and int(m.group(1)) > 0:
            return cls(count=int(m.group(1)))
        raise ValueError(f"--top: expected a share like 10% (0-100%] or a number of customers like 5000, not {text!r}")

    def limit(self, n: int) -> int:
        """How many of `n` ranked customers to keep (a share rounds up: 10% of 15 is 2)."""
        return min(n, self.count) if self.count is not None else min(n, math.ceil(round(n * self.share, 9)))

    def __str__(self) -> str:
        return f"{self.share * 100:g}%" if self.share is not None else str(self.count)
