"""Identity resolution: one stable `customer_id` per person across devices, cookies and channels.

The graph's nodes are identifiers (type, value); its edges are the links in `identities`, a row that
names both an identifier and a customer_id, and identifiers seen in the same session. Safeguards,
as in production CDPs:
- placeholder values never reach the graph (ingestion quarantines them);
- an identifier linked to implausibly many others (a shop's tablet) is *shared* and links nobody;
- a person holds at most `per_person[type]` identifiers of each type, so a link that would give one
  person two customer_ids is refused, unless it is an explicit customer_id <-> customer_id link in
  `identities` (the business says they are one person): that merge is made and recorded.
Ids are stable: an existing customer_id is kept; anonymous people get `anon-<hash>` and keep it
across re-runs; any id that disappears is recorded in `identity_merges` with what it merged into.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone

import duckdb
import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from features.lake import Lake
from features.schema import BLOCKED_VALUE_PATTERN, IDENTITY_TYPES
from propel.config import IdentitySettings

PRIORITY = {t: i for i, t in enumerate(IDENTITY_TYPES)}
_PRIORITY_SQL = "CASE " + " ".join(f"WHEN {{c}} = '{t}' THEN {i}" for t, i in PRIORITY.items()) + " ELSE 99 END"


def _priority(col: str) -> str:
    return _PRIORITY_SQL.format(c=col)


def _edges_sql(max_ids_per_session: int) -> str:
    """All links as (a_type, a_value, b_type, b_value, proof)."""
    strongest = f"arg_min(struct_pack(t := identity_type, v := identity_value), ({_priority('identity_type')}, identity_value))"
    return f"""
      SELECT identity_type AS a_t, identity_value AS a_v, linked_type AS b_t, linked_value AS b_v,
             identity_type = 'customer_id' AND linked_type = 'customer_id' AS proof
      FROM identities_all
      UNION ALL
      SELECT identity_type, identity_value, 'customer_id', source_customer_id, false
      FROM (SELECT identity_type, identity_value, source_customer_id FROM events_all
            UNION ALL SELECT identity_type, identity_value, source_customer_id FROM campaign_touches_all)
      WHERE source_customer_id IS NOT NULL AND NOT (identity_type = 'customer_id' AND identity_value = source_customer_id)
      UNION ALL
      SELECT s.identity_type, s.identity_value, s.top.t, s.top.v, false FROM (
        SELECT e.session_id, e.identity_type, e.identity_value, g.top FROM (
          SELECT DISTINCT session_id, identity_type, identity_value FROM events_all
          WHERE session_id IS NOT NULL AND NOT regexp_matches(session_id, '{BLOCKED_VALUE_PATTERN}', 'i')) e
        JOIN (SELECT session_id, {strongest} AS top FROM (
                SELECT DISTINCT session_id, identity_type, identity_value FROM events_all WHERE session_id IS NOT NULL)
              GROUP BY session_id HAVING count(*) BETWEEN 2 AND {int(max_ids_per_session)}) g USING (session_id)
      ) s WHERE NOT (s.identity_type = s.top.t AND s.identity_value = s.top.v)
    """


class _UnionFind:
    """Union-find that refuses a union exceeding a per-type limit on both sides."""

    def __init__(self, types: np.ndarray, limits: np.ndarray):
        n = len(types)
        self.parent = list(range(n))
        self.counts = [[0] * len(limits) for _ in range(n)]
        for i, t in enumerate(types):
            self.counts[i][t] = 1
        self.limits = limits.tolist()

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int, force: bool) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        ca, cb = self.counts[ra], self.counts[rb]
        if not force and any(x and y and x + y > lim for x, y, lim in zip(ca, cb, self.limits)):
            return False
        self.parent[rb] = ra
        self.counts[ra] = [x + y for x, y in zip(ca, cb)]
        return True


def _mint(key: str) -> str:
    return "anon-" + hashlib.sha1(key.encode()).hexdigest()[:16]


def resolve(lake: Lake, settings: IdentitySettings, load_id: str,
            con: duckdb.DuckDBPyConnection | None = None) -> dict:
    """Recompute the identity map from the whole lake; return counts for the manifest."""
    con = con or lake.connect()
    for name in ("identities", "events", "campaign_touches", "customers"):  # see the files just written
        con.execute(f"CREATE OR REPLACE VIEW {name}_all AS SELECT * FROM {lake.scan(name)}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE id_edges AS {_edges_sql(settings.max_ids_per_session)}")
    con.execute("""
      CREATE OR REPLACE TEMP TABLE id_nodes AS
      SELECT row_number() OVER (ORDER BY t, v) - 1 AS id, t, v FROM (
        SELECT a_t AS t, a_v AS v FROM id_edges UNION SELECT b_t, b_v FROM id_edges
        UNION SELECT 'customer_id', customer_id FROM customers_all
        UNION SELECT identity_type, identity_value FROM events_all
        UNION SELECT identity_type, identity_value FROM campaign_touches_all)""")
    # Shared identifiers: linked to more distinct identifiers than their type allows.
    limits = ", ".join(f"('{t}', {int(n)})" for t, n in settings.max_links.items())
    con.execute(f"""
      CREATE OR REPLACE TEMP TABLE id_shared AS
      SELECT t, v FROM (
        SELECT a_t AS t, a_v AS v, b_t AS ot, b_v AS ov FROM id_edges UNION SELECT b_t, b_v, a_t, a_v FROM id_edges)
      JOIN (VALUES {limits}) lim(lt, n) ON lim.lt = t
      GROUP BY t, v, lim.n HAVING count(DISTINCT (ot, ov)) > lim.n""")
    edges = con.execute(f"""
      SELECT na.id AS a, nb.id AS b, e.proof, least({_priority('e.a_t')}, 99) AS pa, {_priority('e.b_t')} AS pb
      FROM id_edges e JOIN id_nodes na ON na.t = e.a_t AND na.v = e.a_v JOIN id_nodes nb ON nb.t = e.b_t AND nb.v = e.b_v
      WHERE (e.a_t, e.a_v) NOT IN (SELECT (t, v) FROM id_shared) AND (e.b_t, e.b_v) NOT IN (SELECT (t, v) FROM id_shared)
        AND na.id <> nb.id""").df()
    nodes = con.execute("SELECT id, t, v FROM id_nodes ORDER BY id").df()
    n_shared = con.execute("SELECT count(*) FROM id_shared").fetchone()[0]
    n_links = con.execute("SELECT count(*) FROM id_edges").fetchone()[0]
    n = len(nodes)
    types = nodes["t"].map(PRIORITY).to_numpy(dtype=np.int64)
    limit_arr = np.array([settings.per_person[t] for t in IDENTITY_TYPES], dtype=np.int64)

    a, b = edges["a"].to_numpy(np.int64), edges["b"].to_numpy(np.int64)
    _, comp = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    # Components that respect every per-person limit are people as they are; only the others need
    # the careful, ordered union-find (typically a tiny fraction).
    per_type = np.zeros((comp.max() + 1 if n else 0, len(IDENTITY_TYPES)), dtype=np.int64)
    np.add.at(per_type, (comp, types), 1)
    bad_comp = np.flatnonzero((per_type > limit_arr).any(axis=1))
    group = comp.copy()
    refused = 0
    if len(bad_comp):
        in_bad = np.isin(comp, bad_comp)
        sub_nodes = np.flatnonzero(in_bad)
        local = {g: i for i, g in enumerate(sub_nodes)}
        sub = edges[in_bad[a]].assign(strength=lambda d: np.maximum(d.pa, d.pb))
        sub = sub.sort_values(["proof", "strength", "a", "b"], ascending=[False, True, True, True])
        uf = _UnionFind(types[sub_nodes], limit_arr)
        for ea, eb, proof in zip(sub["a"].to_numpy(), sub["b"].to_numpy(), sub["proof"].to_numpy()):
            refused += not uf.union(local[ea], local[eb], bool(proof))
        roots = np.array([uf.find(i) for i in range(len(sub_nodes))])
        group[sub_nodes] = comp.max() + 1 + roots

    nodes["group"] = group
    return _assign_ids(lake, nodes, load_id, n_links=int(n_links), n_shared=int(n_shared), refused=refused)


def _assign_ids(lake: Lake, nodes: pd.DataFrame, load_id: str, **counts) -> dict:
    """Give each group a customer_id: its known id, else its previous id, else a minted one."""
    previous = (pd.read_parquet(lake.identity_map_path)[["identity_type", "identity_value", "customer_id"]]
                .rename(columns={"identity_type": "t", "identity_value": "v", "customer_id": "prev"})
                if lake.identity_map_path.exists() else pd.DataFrame(columns=["t", "v", "prev"]))
    nodes = nodes.merge(previous, on=["t", "v"], how="left")
    nodes["key"] = nodes["t"] + ":" + nodes["v"]
    known = nodes[nodes["t"] == "customer_id"].groupby("group")["v"].min()
    prev = nodes.dropna(subset=["prev"]).groupby("group")["prev"].min()
    first_key = nodes.groupby("group")["key"].min()
    ids = known.reindex(first_key.index)
    taken = set(ids.dropna())
    for g in ids.index[ids.isna()]:  # previous id if still free (a split keeps it for one side only)
        p = prev.get(g)
        ids[g] = p if isinstance(p, str) and p not in taken else _mint(first_key[g])
        taken.add(ids[g])
    nodes["customer_id"] = nodes["group"].map(ids)

    moved = nodes.dropna(subset=["prev"])
    moved = moved[moved["prev"] != moved["customer_id"]][["prev", "customer_id"]].drop_duplicates("prev")
    moved = moved[~moved["prev"].isin(set(ids))]  # an id still in use was split from, not merged away
    merges = pd.DataFrame({"merged_id": moved["prev"], "into_id": moved["customer_id"],
                           "load_id": load_id, "merged_at": datetime.now(timezone.utc).replace(tzinfo=None)})
    # Two known customers joined by a proven link: the smaller id survives, the other is a merge.
    proven = nodes[(nodes["t"] == "customer_id") & (nodes["v"] != nodes["customer_id"])]
    proven = proven[~proven["v"].isin(set(merges["merged_id"]))]
    if lake.merges_path.exists():
        already = set(pd.read_parquet(lake.merges_path)["merged_id"])
        proven = proven[~proven["v"].isin(already)]
    merges = pd.concat([merges, pd.DataFrame({"merged_id": proven["v"], "into_id": proven["customer_id"],
                                              "load_id": load_id,
                                              "merged_at": datetime.now(timezone.utc).replace(tzinfo=None)})])
    if len(merges):
        old = pd.read_parquet(lake.merges_path) if lake.merges_path.exists() else None
        _atomic_parquet(pd.concat([old, merges], ignore_index=True) if old is not None else merges, lake.merges_path)
    out = nodes[["t", "v", "customer_id"]].rename(columns={"t": "identity_type", "v": "identity_value"})
    _atomic_parquet(out, lake.identity_map_path)
    people = out["customer_id"].nunique()
    anon = out.loc[out["customer_id"].str.startswith("anon-"), "customer_id"].nunique()
    return {"identifiers": len(out), "customers": int(people), "anonymous_profiles": int(anon),
            "known_customers": int(people - anon), "merges": len(merges), **counts}


def _atomic_parquet(df: pd.DataFrame, path) -> None:
    tmp = path.with_suffix(".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)
