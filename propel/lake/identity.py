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
from datetime import datetime, timezone

import duckdb
import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from propel.lake.tables import Lake
from propel.lake.schema import BLOCKED_VALUE_PATTERN, IDENTITY_TYPES
from propel.config import IdentitySettings

PRIORITY = {t: i for i, t in enumerate(IDENTITY_TYPES)}
_PRIORITY_SQL = "CASE " + " ".join(f"WHEN {{c}} = '{t}' THEN {i}" for t, i in PRIORITY.items()) + " ELSE 99 END"


def _priority(col: str) -> str:
    return _PRIORITY_SQL.format(c=col)


def _edges_sql(max_ids_per_session: int) -> str:
    """All links as (a_t, a_v, b_t, b_v, proof); sessions come from `id_seen`."""
    strongest = f"arg_min(struct_pack(t := identity_type, v := identity_value), ({_priority('identity_type')}, identity_value))"
    return f"""
      WITH sessions AS (
        SELECT * FROM id_seen
        WHERE session_id IS NOT NULL AND NOT regexp_matches(session_id, '{BLOCKED_VALUE_PATTERN}', 'i'))
      SELECT identity_type AS a_t, identity_value AS a_v, linked_type AS b_t, linked_value AS b_v,
             identity_type = 'customer_id' AND linked_type = 'customer_id' AS proof
      FROM identities_all
      UNION ALL
      SELECT identity_type, identity_value, 'customer_id', source_customer_id, false
      FROM (SELECT identity_type, identity_value, source_customer_id FROM events_all
            UNION ALL SELECT identity_type, identity_value, source_customer_id FROM campaign_touches_all)
      WHERE source_customer_id IS NOT NULL AND NOT (identity_type = 'customer_id' AND identity_value = source_customer_id)
      UNION ALL
      SELECT s.identity_type, s.identity_value, g.top.t, g.top.v, false
      FROM sessions s JOIN (SELECT session_id, {strongest} AS top FROM sessions GROUP BY session_id
                            HAVING count(*) BETWEEN 2 AND {int(max_ids_per_session)}) g USING (session_id)
      WHERE NOT (s.identity_type = g.top.t AND s.identity_value = g.top.v)
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
    # One pass over the events gives both their identifiers and who shared a session.
    con.execute("CREATE OR REPLACE TEMP TABLE id_seen AS "
                "SELECT DISTINCT session_id, identity_type, identity_value FROM events_all")
    con.execute(f"CREATE OR REPLACE TEMP TABLE id_edges AS {_edges_sql(settings.max_ids_per_session)}")
    con.execute("""
      CREATE OR REPLACE TEMP TABLE id_nodes AS
      SELECT row_number() OVER (ORDER BY t, v) - 1 AS id, t, v FROM (
        SELECT a_t AS t, a_v AS v FROM id_edges UNION SELECT b_t, b_v FROM id_edges
        UNION SELECT 'customer_id', customer_id FROM customers_all
        UNION SELECT identity_type, identity_value FROM id_seen
        UNION SELECT identity_type, identity_value FROM campaign_touches_all)""")
    # From here on a node is its integer id: joins and counts on ids are much cheaper than on strings.
    con.execute("""
      CREATE OR REPLACE TEMP TABLE id_links AS
      SELECT na.id AS a, nb.id AS b, e.proof
      FROM id_edges e JOIN id_nodes na ON na.t = e.a_t AND na.v = e.a_v JOIN id_nodes nb ON nb.t = e.b_t AND nb.v = e.b_v""")
    # Shared identifiers: linked to more distinct identifiers than their type allows.
    limits = ", ".join(f"('{t}', {int(n)})" for t, n in settings.max_links.items())
    con.execute(f"""
      CREATE OR REPLACE TEMP TABLE id_shared AS
      SELECT id FROM (SELECT a AS id, b AS other FROM id_links UNION SELECT b, a FROM id_links)
      JOIN id_nodes USING (id) JOIN (VALUES {limits}) lim(t, n) USING (t)
      GROUP BY id, lim.n HAVING count(*) > lim.n""")
    edges = con.execute("""
      SELECT a, b, proof FROM id_links
      WHERE a <> b AND a NOT IN (SELECT id FROM id_shared) AND b NOT IN (SELECT id FROM id_shared)""").df()
    types = con.execute(f"SELECT {_priority('t')} AS p FROM id_nodes ORDER BY id").fetchnumpy()["p"].astype(np.int64)
    [(n_shared, n_links)] = con.execute("SELECT (SELECT count(*) FROM id_shared), (SELECT count(*) FROM id_edges)").fetchall()
    n = len(types)
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
        sub = edges[in_bad[a]].assign(strength=lambda d: np.maximum(types[d.a], types[d.b]))
        sub = sub.sort_values(["proof", "strength", "a", "b"], ascending=[False, True, True, True])
        uf = _UnionFind(types[sub_nodes], limit_arr)
        for ea, eb, proof in zip(sub["a"].to_numpy(), sub["b"].to_numpy(), sub["proof"].to_numpy()):
            refused += not uf.union(local[ea], local[eb], bool(proof))
        roots = np.array([uf.find(i) for i in range(len(sub_nodes))])
        group[sub_nodes] = comp.max() + 1 + roots

    return _assign_ids(con, lake, group, load_id, n_links=int(n_links), n_shared=int(n_shared), refused=refused)


def _assign_ids(con: duckdb.DuckDBPyConnection, lake: Lake, group: np.ndarray, load_id: str, **counts) -> dict:
    """Give each group (of the node with id i: `group[i]`) a customer_id: its known id, else its
    previous id, else a minted one. The per-node work stays in DuckDB; Python sees one row per group."""
    lake.identity_map_view(con)  # the committed map: the previous ids
    previous = "SELECT identity_type AS t, identity_value AS v, customer_id AS prev FROM identity_map"
    con.register("id_group_frame", pd.DataFrame({"id": np.arange(len(group)), "grp": group}))
    con.execute(f"""
      CREATE OR REPLACE TEMP TABLE id_people AS
      SELECT n.id, n.t, n.v, g.grp, p.prev FROM id_nodes n JOIN id_group_frame g USING (id) LEFT JOIN ({previous}) p USING (t, v)""")
    groups = con.execute("""
      SELECT grp, min(v) FILTER (t = 'customer_id'), min(prev), min(t || ':' || v)
      FROM id_people GROUP BY grp ORDER BY grp""").fetchall()
    taken = {known for _, known, _, _ in groups if known is not None}
    ids = []
    for _, known, prev, first_key in groups:
        if known is None:  # previous id if still free (a split keeps it for one side only)
            known = prev if prev is not None and prev not in taken else _mint(first_key)
            taken.add(known)
        ids.append(known)
    con.register("id_group_frame", pd.DataFrame({"grp": [g for g, *_ in groups], "customer_id": ids}))
    con.execute("CREATE OR REPLACE TEMP TABLE id_people AS "
                "SELECT p.*, CAST(g.customer_id AS VARCHAR) AS customer_id FROM id_people p JOIN id_group_frame g USING (grp)")
    con.unregister("id_group_frame")

    moved = con.execute("SELECT prev, customer_id FROM id_people WHERE prev <> customer_id ORDER BY id").df()
    moved = moved.drop_duplicates("prev")
    moved = moved[~moved["prev"].isin(taken)]  # an id still in use was split from, not merged away
    merges = pd.DataFrame({"merged_id": moved["prev"], "into_id": moved["customer_id"],
                           "load_id": load_id, "merged_at": datetime.now(timezone.utc).replace(tzinfo=None)})
    # Two known customers joined by a proven link: the smaller id survives, the other is a merge.
    proven = con.execute("SELECT v, customer_id FROM id_people WHERE t = 'customer_id' AND v <> customer_id ORDER BY id").df()
    proven = proven[~proven["v"].isin(set(merges["merged_id"]))]
    old = pd.concat([pd.read_parquet(p) for p in lake.files("identity_merges")]) if lake.files("identity_merges") else None
    if old is not None:
        proven = proven[~proven["v"].isin(set(old["merged_id"]))]
    merges = pd.concat([merges, pd.DataFrame({"merged_id": proven["v"], "into_id": proven["customer_id"],
                                              "load_id": load_id,
                                              "merged_at": datetime.now(timezone.utc).replace(tzinfo=None)})])
    # New files of the pending lake version (see Lake.transaction): visible only once it commits.
    name = f"v{lake.version + 1:08d}.parquet"
    if len(merges):
        out = pd.concat([old, merges], ignore_index=True) if old is not None else merges
        path = lake.new_file("identity_merges", name)
        out.to_parquet(path, index=False)
        lake.replace("identity_merges", [path])
    path = lake.new_file("identity_map", name)
    con.execute("COPY (SELECT t AS identity_type, v AS identity_value, customer_id FROM id_people ORDER BY id) "
                f"TO '{path}' (FORMAT parquet)")
    lake.replace("identity_map", [path])
    anon = sum(i.startswith("anon-") for i in taken)
    return {"identifiers": len(group), "customers": len(taken), "anonymous_profiles": anon,
            "known_customers": len(taken) - anon, "merges": len(merges), **counts}


def node_key(identity_type: str, identity_value: str) -> str:
    """An identifier as one string: the event log's link keys, and forget's."""
    return f"{identity_type}:{identity_value}"


def resolve_live(events: list[dict], mapped: list[tuple[str | None, str | None]], links: dict[str, str]) -> dict[str, str]:
    """The person of each event arriving over HTTP, as the batch resolution would name them between two
    loads: sets `profile_id` on each event (and `merged_from` when a login joins an anonymous profile
    to a customer) and returns the new links (identifier key -> profile).

    `mapped[i]` is what the committed identity map says of event i's identifier and of its customer_id;
    `links` holds the links the stream made since, and the profiles it minted (they win: they are newer);
    it is updated in place.
    An unknown identifier gets the id the batch would mint for it alone; a login (an event naming both
    a customer_id and an identifier) moves the identifier, and an anonymous profile it held, to the
    customer. An identifier already held by another known customer is not moved (a shared device);
    sessions do not link in the stream: the next load's resolution links them, as it always does."""
    new: dict[str, str] = {}
    for event, (of_node, of_customer) in zip(events, mapped):
        cid, t, v = event.get("customer_id"), event.get("identity_type"), event.get("identity_value")
        node = node_key(t, v) if t is not None and v is not None else None
        if cid is None:
            person = links.get(node) or of_node
            if person is None and node:  # first seen: remembered, so that its login knows there is a profile
                person = links[node] = new[node] = _mint(node)
        else:
            person = links.get(node_key("customer_id", cid)) or of_customer or cid
            held = (links.get(node) or of_node) if node else None
            if node and held != person and (held is None or held.startswith("anon-")):
                links[node] = new[node] = person
                if held is not None:
                    event["merged_from"] = [held]
        event["profile_id"] = person
    return new
