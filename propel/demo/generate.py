"""Synthetic retailer: the default demo data and the ground truth the tests are built on.

Persons are simulated in independent blocks, each with its own RNG and its own events chunk, so a million
customers fit in bounded memory and the same arguments always give byte-identical files. Raw tables follow
propel/lake/schema.py; what the pipeline should recover (who is who, churn, uplift, injected defects) goes to
`_truth/`, which ingestion skips.

How identifiers link, as ingestion must discover it: `identities` rows tie customer_id, member_id, email, phone and
(at app login) device_id together; a web/app session's cookie_id/device_id is tied to a member only by a `login`
event (identity member_id) with the same session_id. Kiosk devices linked to >50 members and placeholder values
('unknown', '0000000', '') must link nobody.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from rich.progress import Progress

from propel.lake.schema import CHANNELS, EVENT_TYPES, IDENTITY_TYPES, TABLES, TOUCH_GROUPS

BLOCK = 25_000  # persons per block: bounds memory, and one events chunk each
DAY = 86_400
NO_TS = np.iinfo(np.int64).max  # "never", for persons who do not churn
FORMATS = ("csv", "parquet")
CSV_OPTIONS = pacsv.WriteOptions(quoting_style="needed")
DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)

REGISTERED_SHARE, PHONE_SHARE = 0.9, 0.8
CONSENT_SHARE = (0.85, 0.12, 0.03)  # true / false / empty
HISTORY_DAYS = 730  # customers signed up as far back as this before the period
MAX_COOKIES, MAX_DEVICES = 5, 3
HIDDEN_SHARE = 0.1  # a registered person's devices/cookies that are never logged in on
P_LOGIN = 0.85  # a session on a known device/cookie logs in (that is what links it to the member)
SESSION_RATE = 22 / 365  # sessions per day at engagement 1
FLOOR = 0.25  # engagement never decays below this share of its start
HAZARD = 1 / 450  # daily churn hazard once engagement has fully decayed
WEEKDAY = np.array([0.9, 0.88, 0.9, 0.95, 1.05, 1.25, 1.17])  # Monday..Sunday: weekends busier
HOUR_P = np.array([1, 1, 1, 1, 1, 2, 3, 5, 6, 6, 6, 7, 8, 7, 6, 6, 6, 7, 9, 11, 12, 10, 6, 3]) / 131  # evenings
MIN_GAP, MAX_GAP = 5, 180  # seconds between a human's events in one session
PAGES, VIEWS, P_CART, P_BUY = 1.5, 2.0, 0.3, 0.5

CATEGORIES = tuple("apparel shoes beauty home kitchen electronics toys sports books grocery garden jewelry".split())
CATEGORY_PRICE = np.array([35, 60, 18, 45, 30, 150, 20, 40, 12, 6, 25, 90.0])  # median price
MIN_ITEMS, MAX_ITEMS, ZIPF = 200, 50_000, 1.1
BRANDS = tuple(a + b for a in "Nor Vel Ast Bri Cal Dun Ely Fen".split() for b in "vik ora ton ique a ex".split())
COLORS = tuple("black white red blue green grey beige pink".split())
FIRST = b"james mary oliver olivia harry amelia jack isla george ava noah emily leo sophie arthur grace".split()
LAST = b"smith jones taylor brown williams wilson johnson davies patel wright khan walker evans roberts hall".split()
DOMAINS = (b"@example.com", b"@example.org", b"@mail.example.net")
PHONE_FORMATS = ("+44 #### ######", "0##########", "+44##########", "0#### ### ###")  # 10 digits each
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
GENDERS, TIERS = ("F", "M", "X"), ("bronze", "silver", "gold")
ACQUISITION = ("search", "social", "affiliate", "store", "referral", "display")

CAMPAIGN_CHANNELS = ("email", "sms", "push", "social")
CAMPAIGN_CHANNEL_SHARE = (0.45, 0.2, 0.25, 0.1)
CHANNEL_EFFECT = {"email": 1.0, "sms": 1.3, "push": 0.7, "social": 0.5}  # relative uplift per channel
PREFERRED_BOOST, OTHER_CHANNEL = 1.5, 0.75  # uplift multiplier when sent on / off the preferred channel
RESPONSE_EVENT = ("email_click", "sms_click", "push_open", "social_click")
OFFERS = ("discount_10", "discount_20", "free_shipping", "bundle", "loyalty_points")
N_DISCOUNTS = 2  # the first offers are discounts: price-sensitive people respond more
CAMPAIGN_EVERY, RESPONSE_DAYS = 14, 7
TARGET_SHARE, CONTROL_SHARE, OPEN_P = 0.3, 0.2, 0.25
UPLIFT_TYPES = ("persuadable", "sure_thing", "lost_cause", "sleeping_dog")
P_CONTROL = np.array([0.02, 0.30, 0.005, 0.15])  # conversion within the response window, by uplift type
P_TREATED = np.array([0.22, 0.30, 0.005, 0.05])

OFFSETS = (("Z", 0), ("+00:00", 0), ("+01:00", 3600), ("+02:00", 7200), ("-05:00", -18000))
OFFSET_P = (0.6, 0.1, 0.15, 0.1, 0.05)
PLACEHOLDERS = ("unknown", "0000000", "")
BAD_TS, BAD_CHANNEL = "not-a-date", "carrier_pigeon"
FUTURE_SHIFT = 3650 * DAY
BOT_BASE = HUB_BASE = 1 << 36  # cookie/device numbers above every person's
BOT_BURST, HUB_MEMBERS = (20, 51), (60, 121)

EV = {e: i for i, e in enumerate(EVENT_TYPES)}
CH = {c: i for i, c in enumerate((*CHANNELS, BAD_CHANNEL))}
ID = {t: i for i, t in enumerate(IDENTITY_TYPES)}
CUSTOMER_COLUMN = -1  # idtype of rows identified by the customer_id column
BLOCKABLE = np.array([ID["email"], ID["phone"], ID["device_id"]])
_ROW = {"person": -1, "ts": 0, "session": -1, "channel": 0, "etype": 0, "idtype": CUSTOMER_COLUMN, "idnum": 0,
        "item": -1, "qty": np.nan, "revenue": np.nan, "campaign": -1}


@dataclass(frozen=True)
class DirtyRates:
    """Share of each defect injected into the raw data; ingestion must repair or quarantine every kind."""

    exact_duplicates: float = 0.01
    duplicate_event_ids: float = 0.002
    bots: float = 0.005
    malformed: float = 0.003  # split over bad ts, negative revenue, empty event_id, unknown channel
    future: float = 0.001
    blocked_identities: float = 0.01  # registered persons with an extra placeholder identities row
    hubs_per_person: float = 1 / 5000  # shared kiosk devices (at least one when > 0)
    shuffle: bool = True  # rows out of time order

    @classmethod
    def none(cls) -> DirtyRates:
        return cls(0, 0, 0, 0, 0, 0, 0, False)


@dataclass
class GenerateReport:
    out_dir: Path
    counts: dict[str, int]
    dirty: dict[str, int]
    seconds: float

    def summary(self) -> str:
        tables = ", ".join(f"{n:,} {t}" for t, n in self.counts.items())
        return f"{tables}; {sum(self.dirty.values()):,} injected defects; {self.seconds:.1f}s -> {self.out_dir}"


def _scramble(nums, bits: int) -> np.ndarray:
    """Opaque yet collision-free ids: multiplying by an odd constant is a bijection modulo 2**bits."""
    return (np.asarray(nums).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) & np.uint64((1 << bits) - 1)


def _code(prefix: str, nums, width: int, base: int = 10) -> np.ndarray:
    """Fixed-width ids like C0000042 or ck_0a1b2c3d4e as a bytes array, one digit column at a time."""
    nums = np.asarray(nums).astype(np.uint64)
    out = np.empty((len(nums), len(prefix) + width), np.uint8)
    out[:, : len(prefix)] = np.frombuffer(prefix.encode(), np.uint8)
    for col in range(out.shape[1] - 1, len(prefix) - 1, -1):
        out[:, col] = DIGITS[nums % np.uint64(base)]
        nums = nums // np.uint64(base)
    return out.view(f"S{out.shape[1]}").ravel()


def _strings(values: np.ndarray, mask=None) -> pa.Array:
    return pa.array(values, pa.binary(), mask=mask).cast(pa.string())


def _decode(labels, codes) -> pa.Array:
    """Integer codes to their labels; negative codes are null."""
    codes = np.asarray(codes)
    return pa.array(labels, pa.string()).take(pa.array(codes, mask=codes < 0))


def _offsets(n: int, rng) -> np.ndarray:
    return rng.choice(len(OFFSETS), n, p=OFFSET_P)


def _iso(secs: np.ndarray, rng, k: np.ndarray | None = None) -> pa.Array:
    """ISO-8601 strings with a mix of UTC offsets `k` (same instants), as exported by different systems."""
    k = _offsets(len(secs), rng) if k is None else k
    local = pa.array(secs + np.array([o for _, o in OFFSETS])[k], pa.timestamp("s"))
    text = pc.replace_substring(local.cast(pa.string()), " ", "T", max_replacements=1)  # much faster than strftime
    return pc.binary_join_element_wise(text, _decode([s for s, _ in OFFSETS], k), "")


def _utc(secs: np.ndarray) -> pa.Array:
    return pa.array(secs, pa.timestamp("s", tz="UTC"), mask=secs == NO_TS)


def _table(name: str, cols: dict[str, pa.Array]) -> pa.Table:
    """Columns in the contract's order; extra columns only where the contract lets them through."""
    table = TABLES[name]
    order = [c.name for c in table.columns if c.name in cols]
    extra = [k for k in cols if k not in order]
    assert table.passthrough or not extra, f"{name}: columns {extra} are not in the contract"
    return pa.table({k: cols[k] for k in order + extra})


class _Writer:
    """Appends per-block tables to one file, so no table is ever held in memory whole."""

    def __init__(self, path: Path):
        self.path, self.rows, self._writer = path, 0, None

    def write(self, table: pa.Table) -> _Writer:
        if self._writer is None:
            self._writer = (pq.ParquetWriter(self.path, table.schema) if self.path.suffix == ".parquet"
                            else pacsv.CSVWriter(self.path, table.schema, write_options=CSV_OPTIONS))
        self._writer.write_table(table)
        self.rows += table.num_rows
        return self

    def close(self) -> None:
        self._writer.close()


def _rows(n: int, **cols) -> dict[str, np.ndarray]:
    """Event rows as parallel numpy columns; strings are made only once, when a chunk is written."""
    return {k: np.broadcast_to(cols.get(k, d), n).astype(float if isinstance(d, float) else np.int64)
            for k, d in _ROW.items()}


def _concat(*parts: dict) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _take(rows: dict, idx) -> dict:
    return {k: v[idx] for k, v in rows.items()}


def _rank(counts: np.ndarray) -> np.ndarray:
    """Position of each element within its group after np.repeat(..., counts)."""
    return np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)


def _catalog(customers: int, rng) -> SimpleNamespace:
    """Items with per-category lognormal prices and Zipf-like popularity (a few items sell most)."""
    n = min(MAX_ITEMS, max(MIN_ITEMS, customers // 20))
    cat = np.r_[np.arange(len(CATEGORIES)), rng.integers(0, len(CATEGORIES), n - len(CATEGORIES))]
    price = np.maximum(0.99, np.round(np.exp(rng.normal(np.log(CATEGORY_PRICE[cat]), 0.5)), 2))
    weight = (1.0 / (1 + rng.permutation(n))) ** ZIPF
    order = np.argsort(cat, kind="stable")
    w, c = weight[order], cat[order]
    total = np.bincount(c, w)
    cum = c + (np.cumsum(w) - np.r_[0, np.cumsum(total)][c]) / total[c]  # category + share so far
    last = np.r_[c[1:] != c[:-1], True]
    cum[last] = c[last] + 1
    table = _table("items", {
        "item_id": _strings(_code("I", np.arange(1, n + 1), 5)), "category": _decode(CATEGORIES, cat),
        "brand": _decode(BRANDS, (cat * 7 + rng.integers(0, 6, n)) % len(BRANDS)), "price": pa.array(price),
        "color": _decode(COLORS, rng.integers(0, len(COLORS), n)), "in_stock": pa.array(rng.random(n) < 0.92)})
    return SimpleNamespace(table=table, price=price, rel_price=price / CATEGORY_PRICE[cat], cum=cum, order=order)


def _campaigns(t0: int, t_end: int, rng) -> SimpleNamespace:
    """One campaign a fortnight, each starting early enough for a full response window."""
    start = np.arange(t0 + DAY, t_end - RESPONSE_DAYS * DAY, CAMPAIGN_EVERY * DAY, dtype=np.int64)
    n = len(start)
    start += rng.integers(8 * 3600, 12 * 3600, n)
    channel = rng.choice(len(CAMPAIGN_CHANNELS), n, p=CAMPAIGN_CHANNEL_SHARE)
    offer = rng.integers(0, len(OFFERS), n)
    ids = _strings(_code("CMP", np.arange(1, n + 1), 4))
    table = _table("campaigns", {
        "campaign_id": ids, "channel": _decode(CAMPAIGN_CHANNELS, channel), "start_at": _iso(start, rng),
        "end_at": _iso(start + RESPONSE_DAYS * DAY, rng), "cost": pa.array(np.round(rng.uniform(500, 5000, n), 2)),
        "offer_type": _decode(OFFERS, offer)})
    return SimpleNamespace(start=start, channel=channel, discount=offer < N_DISCOUNTS, ids=ids, table=table)


def _persons(lo: int, hi: int, t0: int, t_end: int, rng) -> SimpleNamespace:
    """Latent traits that drive everything a person does; written to _truth/persons."""
    n = hi - lo
    p = SimpleNamespace(n=n, pid=np.arange(lo, hi), churn_at=np.full(n, NO_TS))
    p.registered = rng.random(n) < REGISTERED_SHARE
    p.signup = rng.integers(t0 - HISTORY_DAYS * DAY, t_end, n)  # first seen, for anonymous visitors
    p.engagement = rng.gamma(1.5, 1 / 1.5, n)
    p.half_life = np.exp(rng.normal(np.log(240), 0.8, n))  # days until engagement has halved
    p.price_sensitivity, p.loyalty = rng.beta(2, 2, n), rng.beta(2, 5, n)
    prefs = rng.dirichlet(np.full(len(CATEGORIES), 0.4), n)
    p.category = prefs.argmax(1)
    prefs = np.cumsum(prefs, 1)
    prefs[:, -1] = 1
    p.category_cum = (np.arange(n)[:, None] + prefs).ravel()  # one searchsorted draws everyone's categories
    p.channel = rng.choice(len(CAMPAIGN_CHANNELS), n, p=CAMPAIGN_CHANNEL_SHARE)
    platform = np.cumsum(rng.dirichlet((5, 3, 1.5), n) * np.where(p.registered[:, None], 1, (1, 1, 0)), 1)
    p.platform_cum = platform / platform[:, -1:]  # web, app, store (visitors have no card to show in store)
    p.n_cookies, p.n_devices = rng.integers(1, MAX_COOKIES + 1, n), rng.integers(1, MAX_DEVICES + 1, n)
    p.hidden_cookie = rng.random((n, MAX_COOKIES)) < HIDDEN_SHARE
    p.hidden_device = rng.random((n, MAX_DEVICES)) < HIDDEN_SHARE
    logits = np.stack([2.5 * p.price_sensitivity + (p.channel == 1) - 1.45,  # persuadable: deal seekers, sms fans
                       1.5 * p.engagement + 3 * p.loyalty - 2.9, 1.6 - p.engagement, 2 * (1 - p.loyalty) - 1.9], 1)
    p.uplift = np.argmax(logits + rng.gumbel(size=logits.shape), 1)
    p.consent = rng.choice(3, n, p=CONSENT_SHARE)
    p.has_phone = rng.random(n) < PHONE_SHARE
    p.ids = _person_ids(p.pid, rng)
    return p


def _person_ids(pid: np.ndarray, rng) -> dict[str, pa.Array]:
    """Each person's customer/member id, email and phone, unique by construction and formatted as people type them."""
    n = len(pid)
    first, last = np.array(FIRST)[rng.integers(0, len(FIRST), n)], np.array(LAST)[rng.integers(0, len(LAST), n)]
    email = np.char.add(np.char.add(np.char.add(first, b"."), last), (pid + 1).astype("S"))
    email = np.char.add(email, np.array(DOMAINS)[rng.integers(0, len(DOMAINS), n)])
    email = np.where(rng.random(n) < 0.1, np.char.capitalize(email), email)
    digits = _code("7", (pid * 387_420_489 + 123_456_789) % 10**9, 9).view(np.uint8).reshape(n, 10)  # a bijection
    phones = []
    for fmt in PHONE_FORMATS:
        out = np.tile(np.frombuffer(fmt.encode(), np.uint8), (n, 1))
        out[:, [i for i, ch in enumerate(fmt) if ch == "#"]] = digits
        phones.append(_strings(out.view(f"S{len(fmt)}").ravel()))
    phone = pa.concat_arrays(phones).take(rng.integers(0, len(PHONE_FORMATS), n) * n + np.arange(n))
    return {"customer_id": _strings(_code("C", pid + 1, 7)), "email": _strings(email), "phone": phone,
            "member_id": _strings(_code("M", _scramble(pid + 1, 26), 8))}


def _decay(p, idx, t) -> np.ndarray:
    return 0.5 ** (np.maximum(t - p.signup[idx], 0) / DAY / p.half_life[idx])


def _engagement(p, idx, t) -> np.ndarray:
    return p.engagement[idx] * (FLOOR + (1 - FLOOR) * _decay(p, idx, t))


def _simulate(p, t0: int, days: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Day by day: churn hazard grows as engagement decays; persons still active start sessions."""
    threshold, hazard, alive = rng.exponential(size=p.n), np.zeros(p.n), np.ones(p.n, bool)
    weekday0 = datetime.fromtimestamp(t0, timezone.utc).weekday()
    persons, starts = [], []
    for d in range(days):
        t = t0 + d * DAY
        born = p.signup < t + DAY
        decay = _decay(p, slice(None), t)
        hazard += born * HAZARD * (1 - decay) * (1.5 - p.loyalty)
        dies = alive & (hazard > threshold)
        p.churn_at[dies] = t + rng.integers(0, DAY, dies.sum())
        rate = SESSION_RATE * WEEKDAY[(weekday0 + d) % 7] * _engagement(p, slice(None), t) * born * alive
        alive &= ~dies
        who = np.repeat(np.arange(p.n), rng.poisson(rate))
        persons.append(who)
        starts.append(t + rng.choice(24, len(who), p=HOUR_P) * 3600 + rng.integers(0, 3600, len(who)))
    return np.concatenate(persons), np.concatenate(starts)


def _draw_items(p, persons: np.ndarray, catalog, rng) -> np.ndarray:
    """Category from the person's preferences, then an item by popularity within it."""
    cat = np.searchsorted(p.category_cum, persons + rng.random(len(persons)), side="right")
    cat -= persons * len(CATEGORIES)
    return catalog.order[np.searchsorted(catalog.cum, cat + rng.random(len(cat)), side="right")]


def _purchases(catalog, item: np.ndarray, rng) -> dict:
    qty = 1 + rng.poisson(0.25, len(item))
    return {"item": item, "qty": qty, "revenue": np.round(catalog.price[item] * qty, 2), "etype": EV["purchase"]}


def _session_events(p, sp: np.ndarray, start: np.ndarray, catalog, rng) -> dict:
    """Browsing funnels on web/app (cookie/device; a login names the member) and card purchases in store."""
    n = len(sp)
    plat = (rng.random(n)[:, None] > p.platform_cum[sp]).sum(1)  # 0 web, 1 app, 2 store
    web, store = plat == 0, plat == 2
    k = (rng.random(n) * np.where(web, p.n_cookies[sp], p.n_devices[sp])).astype(np.int64)
    hidden = np.where(web, p.hidden_cookie[sp, k], p.hidden_device[sp, np.minimum(k, MAX_DEVICES - 1)])
    idtype = np.select([web, store], [ID["cookie_id"], ID["member_id"]], ID["device_id"])
    idtype[store & (rng.random(n) < 0.3)] = CUSTOMER_COLUMN
    idnum = np.select([web, store], [p.pid[sp] * MAX_COOKIES + k, 0], p.pid[sp] * MAX_DEVICES + k)
    login = p.registered[sp] & ~store & ~hidden & (rng.random(n) < P_LOGIN)
    n_pages = np.where(store, 0, 1 + rng.poisson(PAGES, n))
    n_views = np.where(store, 0, rng.poisson(VIEWS, n))
    n_store = np.where(store, 1 + rng.poisson(0.6, n), 0)
    vs, view_rank = np.repeat(np.arange(n), n_views), _rank(n_views)
    item = _draw_items(p, sp[vs], catalog, rng)
    carted = rng.random(len(vs)) < P_CART / (1 + p.price_sensitivity[sp[vs]] * catalog.rel_price[item])
    bought = carted & (rng.random(len(vs)) < P_BUY * (0.7 + 0.6 * p.loyalty[sp[vs]]))
    ss = np.repeat(np.arange(n), n_store)
    buy_s = np.r_[vs[bought], ss]
    buy = _purchases(catalog, np.r_[item[bought], _draw_items(p, sp[ss], catalog, rng)], rng)
    parts = [  # (session, order key within session, event type, item)
        (np.repeat(np.arange(n), n_pages), _rank(n_pages), "page_view", -1),
        (np.flatnonzero(login), 0.5, "login", -1),
        (vs, 100 + 2 * view_rank, "product_view", item),
        (vs[carted], 101 + 2 * view_rank[carted], "add_to_cart", item[carted]),
        (np.unique(vs[bought]), 10_000, "checkout", -1),
        (buy_s, 10_001, "purchase", buy["item"]),
    ]
    sess = np.concatenate([s for s, *_ in parts])
    key = np.concatenate([np.broadcast_to(o, len(s)) for s, o, *_ in parts])
    order = np.lexsort((key, sess))
    etype = np.concatenate([np.full(len(s), EV[e]) for s, _, e, _ in parts])[order]
    item_col = np.concatenate([np.broadcast_to(i, len(s)) for s, *_, i in parts])[order]
    qty, revenue = (np.r_[np.full(len(sess) - len(buy_s), np.nan), buy[c]][order] for c in ("qty", "revenue"))
    sess = sess[order]
    first = np.r_[True, sess[1:] != sess[:-1]]
    gaps = np.where(first, 0, rng.integers(MIN_GAP, MAX_GAP + 1, len(sess)))
    elapsed = np.cumsum(gaps)
    is_login = etype == EV["login"]
    in_session = elapsed - np.maximum.accumulate(np.where(first, elapsed, 0))
    return _rows(len(sess), person=sp[sess], ts=start[sess] + in_session, session=sess, etype=etype,
                 channel=np.array([CH["web"], CH["app"], CH["store"]])[plat[sess]],
                 idtype=np.where(is_login, ID["member_id"], idtype[sess]), idnum=np.where(is_login, 0, idnum[sess]),
                 item=item_col, qty=qty, revenue=revenue)


def activity(engagement: np.ndarray) -> np.ndarray:
    """How much of a person's response potential is live at their current engagement (0 once churned)."""
    return np.clip(0.5 + 0.5 * engagement, 0, 1.5)


def response_probabilities(uplift, channel, preferred, discount, price_sensitivity, act) -> tuple[np.ndarray, np.ndarray]:
    """(control, treated) probability that a touch converts within the response window: the uplift type's
    base rates scaled by `act`, the lift by the channel, the person's preferred channel and, for discount
    offers, price sensitivity. Also the oracle's (propel/demo/oracle.py) notion of the truth."""
    lift = ((P_TREATED - P_CONTROL)[uplift] * np.array([CHANNEL_EFFECT[c] for c in CAMPAIGN_CHANNELS])[channel]
            * np.where(channel == preferred, PREFERRED_BOOST, OTHER_CHANNEL)
            * np.where(discount, 0.6 + 0.8 * price_sensitivity, 1))
    p_control = P_CONTROL[uplift] * act
    return p_control, np.clip(p_control + lift * act, 0, 1)


def _campaign_events(p, camps, catalog, rng, t_end: int) -> tuple[dict, pa.Table, pa.Table]:
    """Targeting with a random hold-out, and responses whose size depends on uplift type, traits and channel."""
    eligible = p.registered & (p.consent == 0)
    target = rng.random((p.n, len(camps.start))) < TARGET_SHARE
    pi, ci = np.nonzero(target & eligible[:, None] & (p.signup[:, None] < camps.start))
    m = len(pi)
    sent = camps.start[ci] + rng.integers(0, 6 * 3600, m)
    control = rng.random(m) < CONTROL_SHARE
    act = activity(_engagement(p, pi, sent)) * (p.churn_at[pi] > sent)
    ch = camps.channel[ci]
    p_control, p_treated = response_probabilities(p.uplift[pi], ch, p.channel[pi], camps.discount[ci],
                                                  p.price_sensitivity[pi], act)
    horizon = np.minimum(np.minimum(sent + RESPONSE_DAYS * DAY, p.churn_at[pi]), t_end)
    buy_ts = sent + 2 + (rng.random(m) * (horizon - sent - 2)).astype(np.int64)
    converted = (rng.random(m) < np.where(control, p_control, p_treated)) & (buy_ts < horizon)
    click = ~control & (converted | (rng.random(m) < OPEN_P * act))
    click_ts = sent + (rng.random(m) * (np.where(converted, buy_ts, horizon) - sent)).astype(np.int64)
    opened = ~control & (ch == 0) & (click | (rng.random(m) < OPEN_P * act))
    open_ts = sent + (rng.random(m) * (np.where(click, click_ts, horizon) - sent)).astype(np.int64)
    b, c, o = np.flatnonzero(converted), np.flatnonzero(click), np.flatnonzero(opened)
    app = rng.random(len(b)) > p.platform_cum[pi[b], 0] / p.platform_cum[pi[b], 1]
    bought = _purchases(catalog, _draw_items(p, pi[b], catalog, rng), rng)
    rows = _concat(
        _rows(len(b), person=pi[b], ts=buy_ts[b], channel=np.where(app, CH["app"], CH["web"]),
              campaign=np.where(control[b], -1, ci[b]), **bought),
        _rows(len(c), person=pi[c], ts=click_ts[c], channel=np.array([CH[x] for x in CAMPAIGN_CHANNELS])[ch[c]],
              etype=np.array([EV[x] for x in RESPONSE_EVENT])[ch[c]], campaign=ci[c],
              idtype=np.where(ch[c] == 0, ID["email"], CUSTOMER_COLUMN)),
        _rows(len(o), person=pi[o], ts=open_ts[o], channel=CH["email"], etype=EV["email_open"], campaign=ci[o],
              idtype=ID["email"]))
    common = {"campaign_id": camps.ids.take(ci), "customer_id": p.ids["customer_id"].take(pi),
              "group": _decode(TOUCH_GROUPS, control.astype(np.int64))}
    touches = _table("campaign_touches", {**common, "identity_type": pa.nulls(m, pa.string()),
                                          "identity_value": pa.nulls(m, pa.string()), "sent_at": _iso(sent, rng)})
    effects = pa.table({**common, "p_control": p_control, "p_treated": p_treated,
                        "converted": converted.astype(np.int8)})
    return rows, touches, effects


def _bots(n_events: int, rate: float, block: int, first_session: int, t0: int, t_end: int, rng) -> dict:
    """A few bot cookies firing 20-50 page views within a second; humans never click faster than MIN_GAP."""
    sizes = rng.integers(*BOT_BURST, int(np.ceil(rate * n_events / np.mean(BOT_BURST))))
    burst = np.repeat(np.arange(len(sizes)), sizes)
    start = rng.integers(t0, t_end - 1, len(sizes))
    cookie = BOT_BASE + block * 1000 + rng.integers(0, len(sizes) // 4 + 1, len(sizes))
    return _rows(len(burst), ts=start[burst] + (rng.random(len(burst)) < 0.5), session=first_session + burst,
                 channel=CH["web"], etype=EV["page_view"], idtype=ID["cookie_id"], idnum=cookie[burst])


def _identifier(p, kind: str, persons: np.ndarray, nums: np.ndarray) -> pa.Array:
    if kind == "cookie_id":
        return _strings(_code("ck_", _scramble(nums, 40), 10, 16))
    if kind == "device_id":
        return _strings(_code("dev-", _scramble(nums, 44), 11, 16))
    return p.ids[kind].take(persons)


def _identity_column(p, types: np.ndarray, persons: np.ndarray, nums: np.ndarray) -> pa.Array:
    """Raw identifier strings for rows of mixed identifier types (null where a row has none)."""
    pos, pieces, offset = np.full(len(types), -1), [pa.array([], pa.string())], 0
    for t in np.unique(types[types >= 0]):
        rows = np.flatnonzero(types == t)
        pieces.append(_identifier(p, IDENTITY_TYPES[t], persons[rows], nums[rows]))
        pos[rows] = offset + np.arange(len(rows))
        offset += len(rows)
    return pa.concat_arrays(pieces).take(pa.array(pos, mask=pos < 0))


def _identities(p, ev: dict, hubs: np.ndarray, rng, t0: int, t_end: int, blocked: float
                ) -> tuple[pa.Table, pa.Table, int]:
    """Raw link rows (signup, contact details, app logins, kiosks, placeholders), plus their truth."""
    with_login = np.zeros(ev["session"].max(initial=-1) + 2, bool)  # index -1 (no session) stays False
    with_login[ev["session"][ev["etype"] == EV["login"]]] = True
    in_login = with_login[ev["session"]]
    device = np.flatnonzero(in_login & (ev["idtype"] == ID["device_id"]))  # an app login records the device
    device = device[np.lexsort((ev["ts"][device], ev["idnum"][device]))]
    device = device[np.unique(ev["idnum"][device], return_index=True)[1]]
    reg = np.flatnonzero(p.registered)
    phone, placeholder = reg[p.has_phone[reg]], reg[rng.random(len(reg)) < blocked]
    members = [rng.choice(reg, min(len(reg), rng.integers(*HUB_MEMBERS)), replace=False) for _ in hubs]
    hub_members = np.concatenate([np.empty(0, np.int64), *members])
    hub_num = np.repeat(HUB_BASE + hubs, [len(m) for m in members])
    M = ID["member_id"]

    def soon(who: np.ndarray) -> np.ndarray:  # contact details are confirmed within a day of signup
        return np.minimum(p.signup[who] + rng.integers(0, DAY, len(who)), t_end - 1)

    segments = [  # (type, person, linked type, linked person, linked number, observed_at)
        (ID["customer_id"], reg, M, reg, reg, p.signup[reg]),
        (M, reg, ID["email"], reg, reg, soon(reg)),
        (M, phone, ID["phone"], phone, phone, soon(phone)),
        (M, ev["person"][device], ID["device_id"], ev["person"][device], ev["idnum"][device], ev["ts"][device]),
        (M, hub_members, ID["device_id"], hub_members, hub_num, rng.integers(t0, t_end, len(hub_members))),
        (M, placeholder, rng.choice(BLOCKABLE, len(placeholder)), placeholder, placeholder,
         rng.integers(t0, t_end, len(placeholder))),
    ]
    lt, lp, rt, rp, rn, ts = (np.concatenate([np.broadcast_to(s[i], len(s[1])) for s in segments]) for i in range(6))
    real = len(lt) - len(placeholder)
    raw = _table("identities", {
        "identity_type": _decode(IDENTITY_TYPES, lt), "identity_value": _identity_column(p, lt, lp, lp),
        "linked_type": _decode(IDENTITY_TYPES, rt),
        "linked_value": pa.concat_arrays([_identity_column(p, rt[:real], rp[:real], rn[:real]),
                                          _decode(PLACEHOLDERS, rng.integers(0, len(PLACEHOLDERS), len(placeholder)))]),
        "observed_at": _iso(ts, rng)})
    return raw, _identity_truth(p, ev, in_login, phone, hubs), len(placeholder)


def _identity_truth(p, ev: dict, in_login: np.ndarray, phone: np.ndarray, hubs: np.ndarray) -> pa.Table:
    """Whose each raw identifier is; a cookie/device is linkable iff a login shares one of its sessions."""
    reg, M = np.flatnonzero(p.registered), ID["member_id"]
    r = np.flatnonzero(np.isin(ev["idtype"], (ID["cookie_id"], ID["device_id"])))
    _, first, inv = np.unique(ev["idnum"][r] * 2 + (ev["idtype"][r] == ID["cookie_id"]), return_index=True,
                              return_inverse=True)
    seen = r[first]
    kinds = [(ID["customer_id"], reg), (M, reg), (ID["email"], reg), (ID["phone"], phone)]
    types = np.concatenate([np.full(len(w), t) for t, w in kinds]
                           + [ev["idtype"][seen], np.full(len(hubs), ID["device_id"])])
    persons = np.concatenate([w for _, w in kinds] + [ev["person"][seen], np.full(len(hubs), -1)])
    nums = np.concatenate([w for _, w in kinds] + [ev["idnum"][seen], HUB_BASE + hubs])
    linkable = np.r_[np.ones(len(types) - len(seen) - len(hubs), bool),
                     np.bincount(inv.ravel(), in_login[r].astype(float), len(seen)) > 0, np.zeros(len(hubs), bool)]
    return pa.table({"identity_type": _decode(IDENTITY_TYPES, types),
                     "identity_value": _identity_column(p, types, persons, nums),
                     "person_id": pa.array(p.pid[0] + persons, mask=persons < 0), "linkable": linkable})


def _inject(ev: dict, rates: DirtyRates, rng) -> tuple[np.ndarray, dict[str, int]]:
    """Corrupt disjoint random sets of ordinary rows, so every defect is counted exactly once in dirty.json."""
    n = len(ev["ts"])
    pool = rng.permutation(np.flatnonzero((ev["person"] >= 0) & (ev["etype"] != EV["login"]) & (ev["campaign"] < 0)))
    bad = round(rates.malformed * n)
    negative = pool[ev["etype"][pool] == EV["purchase"]][: bad // 4]
    pool = pool[~np.isin(pool, negative)]
    want = {"bad_timestamps": bad // 4, "empty_event_id": bad // 4, "unknown_channel": bad - 3 * (bad // 4),
            "future_timestamps": round(rates.future * n), "exact_duplicate_rows": round(rates.exact_duplicates * n),
            "duplicate_event_ids": 2 * round(rates.duplicate_event_ids * n)}  # an id's first and second use
    parts = dict(zip(want, np.split(pool, np.cumsum(list(want.values())))))
    ev["revenue"][negative] *= -1
    ev["bad_ts"], ev["empty_id"] = np.zeros(n, bool), np.zeros(n, bool)
    ev["bad_ts"][parts["bad_timestamps"]] = ev["empty_id"][parts["empty_event_id"]] = True
    ev["channel"][parts["unknown_channel"]] = CH[BAD_CHANNEL]
    ev["ts"][parts["future_timestamps"]] += FUTURE_SHIFT
    half = len(parts["duplicate_event_ids"]) // 2
    ev["eid"][parts["duplicate_event_ids"][half:2 * half]] = ev["eid"][parts["duplicate_event_ids"][:half]]
    counts = {k: len(v) for k, v in parts.items()} | {"duplicate_event_ids": half, "negative_revenue": len(negative)}
    return np.r_[np.arange(n), parts["exact_duplicate_rows"]], counts


def _events_table(p, ev: dict, block: int, camps) -> pa.Table:
    """Format the numeric rows as the contract's events table."""
    by_customer = ev["idtype"] == CUSTOMER_COLUMN
    session = np.maximum(ev["session"], 0)
    event_id = _strings(_code("ev_", _scramble((block << 32) | ev["eid"], 48), 12, 16))
    return _table("events", {
        "event_id": pc.if_else(pa.array(ev["empty_id"]), "", event_id),
        "ts": pc.if_else(pa.array(ev["bad_ts"]), BAD_TS, _iso(ev["ts"], None, ev["offset"])),
        "identity_type": _decode(IDENTITY_TYPES, ev["idtype"]),
        "identity_value": _identity_column(p, ev["idtype"], ev["person"], ev["idnum"]),
        "customer_id": p.ids["customer_id"].take(pa.array(np.maximum(ev["person"], 0), mask=~by_customer)),
        "channel": _decode((*CHANNELS, BAD_CHANNEL), ev["channel"]), "event_type": _decode(EVENT_TYPES, ev["etype"]),
        "item_id": _strings(_code("I", ev["item"] + 1, 5), mask=ev["item"] < 0),
        "quantity": pa.array(ev["qty"], from_pandas=True), "revenue": pa.array(ev["revenue"], from_pandas=True),
        "campaign_id": camps.ids.take(pa.array(ev["campaign"], mask=ev["campaign"] < 0)),
        "session_id": _strings(_code("s_", _scramble((block << 32) | session, 48), 12, 16), mask=ev["session"] < 0)})


def _customers_table(p, rng) -> pa.Table:
    """CRM rows for registered persons; attributes loosely follow the traits, with gaps like a real CRM."""
    r = np.flatnonzero(p.registered)
    m = len(r)

    def gap(share: float, codes: np.ndarray) -> np.ndarray:  # CRM fields left empty
        return np.where(rng.random(m) < share, -1, codes)

    young = np.isin(p.channel[r], (2, 3))  # push/social lovers skew young
    age = np.clip(np.round(rng.normal(2.6 - 1.2 * young, 1.1)), 0, len(AGE_BANDS) - 1).astype(np.int64)
    tier = np.digitize(2 * p.loyalty[r] + 0.4 * p.engagement[r] + rng.normal(0, 0.3, m), (0.8, 1.3))
    return _table("customers", {
        "customer_id": p.ids["customer_id"].take(r), "signup_at": _iso(p.signup[r], rng),
        "marketing_consent": pa.array(p.consent[r] == 0, mask=p.consent[r] == 2),
        "age_band": _decode(AGE_BANDS, gap(0.05, age)),
        "city_tier": pa.array(rng.integers(1, 4, m), mask=rng.random(m) < 0.04),
        "gender": _decode(GENDERS, gap(0.08, rng.choice(3, m, p=(0.51, 0.47, 0.02)))),
        "membership_tier": _decode(TIERS, tier),
        "acquisition_channel": _decode(ACQUISITION, gap(0.06, rng.integers(0, len(ACQUISITION), m))),
        "email": p.ids["email"].take(r), "phone": p.ids["phone"].take(pa.array(r, mask=~p.has_phone[r]))})


def _persons_truth(p) -> pa.Table:
    return pa.table({
        "person_id": p.pid, "customer_id": p.ids["customer_id"].take(pa.array(np.arange(p.n), mask=~p.registered)),
        "first_seen_at": _utc(p.signup), "engagement": p.engagement, "engagement_half_life_days": p.half_life,
        "price_sensitivity": p.price_sensitivity, "preferred_category": _decode(CATEGORIES, p.category),
        "preferred_channel": _decode(CAMPAIGN_CHANNELS, p.channel), "brand_loyalty": p.loyalty,
        "churn_at": _utc(p.churn_at), "uplift_type": _decode(UPLIFT_TYPES, p.uplift)})


def _block(b: int, lo: int, hi: int, g: SimpleNamespace, raw: dict, truth: dict) -> tuple[int, dict[str, int]]:
    """Simulate one block of persons end to end and append its rows to every output."""
    rng = np.random.default_rng([g.seed, 1, b])
    p = _persons(lo, hi, g.t0, g.t_end, rng)
    sp, start = _simulate(p, g.t0, g.days, rng)
    camp_rows, touches, effects = _campaign_events(p, g.camps, g.catalog, rng, g.t_end)
    ev = _concat(_session_events(p, sp, start, g.catalog, rng), camp_rows)
    who = ev["person"]
    ev = _take(ev, (ev["ts"] >= p.signup[who]) & (ev["ts"] < p.churn_at[who]) & (ev["ts"] < g.t_end))
    bots = _bots(len(ev["ts"]), g.dirty.bots, b, len(sp), g.t0, g.t_end, rng)
    ev = _concat(ev, bots)
    hubs = g.hubs[g.hubs % g.n_blocks == b]
    ids, id_truth, blocked = _identities(p, ev, hubs, rng, g.t0, g.t_end, g.dirty.blocked_identities)
    ev["eid"], ev["offset"] = np.arange(len(ev["ts"])), _offsets(len(ev["ts"]), rng)
    rows, counts = _inject(ev, g.dirty, rng)
    rows = rng.permutation(rows) if g.dirty.shuffle else rows[np.argsort(ev["ts"][rows], kind="stable")]
    ev = _take(ev, rows)  # exact copies are made here, before the strings, so they stay exact
    events = _events_table(p, ev, b, g.camps)
    _Writer(g.out_dir / f"events_part-{b:05d}.{g.fmt}").write(events).close()
    for name, table in (("customers", _customers_table(p, rng)), ("identities", ids), ("campaign_touches", touches)):
        raw[name].write(table)
    for name, table in (("persons", _persons_truth(p)), ("identities", id_truth), ("treatment_effects", effects)):
        truth[name].write(table)
    return events.num_rows, counts | {"bot_events": len(bots["ts"]), "blocked_identity_values": blocked}


def generate(out_dir: Path, customers: int = 20_000, days: int = 180, seed: int = 7, fmt: str = "csv",
             end: date = date(2026, 10, 31), dirty: DirtyRates = DirtyRates(), progress: bool = False
             ) -> GenerateReport:
    """Write a synthetic retailer's raw tables to out_dir and its ground truth to out_dir/_truth.

    `end` is the last day with events; `days` days end there. Same arguments, same bytes.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, not {fmt!r}")
    if not 0 < customers < 10**7 or days < 1:
        raise ValueError("need 0 < customers < 10,000,000 and days >= 1")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    (out_dir / "_truth").mkdir(parents=True, exist_ok=True)
    t_end = int(datetime(end.year, end.month, end.day, tzinfo=timezone.utc).timestamp()) + DAY
    n_blocks = -(-customers // BLOCK)
    n_hubs = max(1, round(customers * dirty.hubs_per_person)) if dirty.hubs_per_person else 0
    g = SimpleNamespace(seed=seed, days=days, t_end=t_end, t0=t_end - days * DAY, fmt=fmt, out_dir=out_dir,
                        dirty=dirty, n_blocks=n_blocks, hubs=np.arange(n_hubs))
    g.catalog = _catalog(customers, np.random.default_rng([seed, 0, 0]))
    g.camps = _campaigns(g.t0, t_end, np.random.default_rng([seed, 0, 1]))
    raw = {t: _Writer(out_dir / f"{t}.{fmt}")
           for t in ("items", "campaigns", "customers", "identities", "campaign_touches")}
    truth = {t: _Writer(out_dir / "_truth" / f"{t}.parquet") for t in ("persons", "identities", "treatment_effects")}
    raw["items"].write(g.catalog.table)
    raw["campaigns"].write(g.camps.table)
    events, defects = 0, Counter({"hub_devices": n_hubs})
    with Progress(disable=not progress) as bar:
        task = bar.add_task("generating", total=n_blocks)
        for b in range(n_blocks):
            n, counts = _block(b, b * BLOCK, min(customers, (b + 1) * BLOCK), g, raw, truth)
            events += n
            defects.update(counts)
            bar.advance(task)
    for w in (*raw.values(), *truth.values()):
        w.close()
    (out_dir / "_truth" / "dirty.json").write_text(json.dumps(dict(sorted(defects.items())), indent=2))
    (out_dir / "_truth" / "channel_effects.json").write_text(json.dumps(CHANNEL_EFFECT, indent=2))
    counts = {t: w.rows for t, w in raw.items()} | {"events": events}
    return GenerateReport(out_dir, counts, dict(sorted(defects.items())), time.perf_counter() - started)
