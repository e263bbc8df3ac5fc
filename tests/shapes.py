"""Raw data of the shapes real customers bring (issue 16), small and seeded, built by the tests themselves.

Each builder writes CSVs into a raw folder and returns what the test needs to know about it. The signal is
planted (a known driver of the label) with noise, so a sound protocol finds it and beats its baselines:

  crm_snapshot      1: a CRM extract with explicit churn labels for ~80% of the customers, one as_of for all,
                       categorical strings, holes, values as exported (yes/no, Y/N, YYYYMMDD, money and numbers
                       as text, blank cells), ids with leading zeros, no events
  transactions      2: purchases only (date, quantity, revenue), one channel, 1997-1998, no CRM, no campaigns
  attributes_only   3: CRM columns plus one trivial signup event per customer, explicit response labels
  small_imbalanced  5: a few thousand customers, ~5.5% positives, 85 numeric socio-demographic columns
  no_crm_no_campaigns 6: customers.csv with only id and signup, multi-channel behaviour, no campaigns
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Shape:
    name: str
    task: str  # the training task the shape supports
    raw: Path
    as_of: pd.Timestamp | None  # explicit labels' single as_of (None: labels are derived)
    unlabelled: list[str]  # customers without a label (to be scored), when labels are explicit


def _logistic(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _labels(raw: Path, ids: pd.Series, y: np.ndarray, task: str, as_of: pd.Timestamp, keep: np.ndarray,
            date_format: str = "%Y-%m-%d") -> None:
    pd.DataFrame({"customer_id": ids[keep], "as_of": as_of.strftime(date_format), "task": task,
                  "label": y[keep]}).to_csv(raw / "labels.csv", index=False)


def crm_snapshot(raw: Path, n: int = 1500, seed: int = 1) -> Shape:
    """Telco-style: contract, payment and service columns drive churn; 20% of customers are unlabelled."""
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    as_of = pd.Timestamp("2024-06-30")
    tenure = rng.integers(0, 72, n)
    contract = rng.choice(["Month-to-month", "One year", "Two year"], n, p=[0.55, 0.25, 0.2])
    internet = rng.choice(["DSL", "Fiber optic", "No"], n, p=[0.35, 0.45, 0.2])
    payment = rng.choice(["Electronic check", "Mailed check", "Bank transfer", "Credit card"], n)
    monthly = np.round(20 + 50 * (internet == "Fiber optic") + 25 * (internet == "DSL") + rng.gamma(2, 8, n), 2)
    support = np.where(internet == "No", "No internet service", rng.choice(["Yes", "No"], n))
    logit = (-1.2 + 1.6 * (contract == "Month-to-month") - 0.9 * (contract == "Two year") + 0.8 * (internet == "Fiber optic")
             + 0.6 * (payment == "Electronic check") - 0.035 * tenure + 0.5 * (support == "No") + rng.normal(0, 0.6, n))
    y = (rng.random(n) < _logistic(logit)).astype(int)
    ids = pd.Series([f"{i:06d}" for i in rng.permutation(n) + 7])  # leading zeros must survive
    yes_no = np.array(["No", "Yes"])
    crm = pd.DataFrame({  # as a CRM exports it: YYYYMMDD dates, Y/N and Yes/No flags, money and numbers as text
        "customer_id": ids, "signup_at": (as_of - pd.to_timedelta(tenure * 30 + 1, "D")).strftime("%Y%m%d"),
        "marketing_consent": np.where(rng.random(n) < 0.8, "Y", "N"), "gender": rng.choice(["Female", "Male"], n),
        "senior_citizen": (rng.random(n) < 0.16).astype(int), "partner": yes_no[(rng.random(n) < 0.5).astype(int)],
        "tenure_months": tenure, "contract": contract, "internet_service": internet, "payment_method": payment,
        "tech_support": support, "paperless_billing": yes_no[(rng.random(n) < 0.6).astype(int)],
        "monthly_charges": [f"${m:,.2f}" for m in monthly],
        # a number stored as text, a blank cell for brand-new customers
        "total_charges": [" " if t == 0 else f"{m * t:.2f}" for m, t in zip(monthly, tenure)],
        "region": pd.Series(rng.choice(["north", "south", "east", "west"], n)).where(rng.random(n) > 0.15, ""),
    })
    for j in range(8):  # filler categoricals with holes, as wide exports have
        crm[f"service_{j}"] = pd.Series(rng.choice(["Yes", "No", "No phone service"], n)).where(rng.random(n) > 0.1)
    crm.to_csv(raw / "customers.csv", index=False)
    keep = rng.random(n) < 0.8
    _labels(raw, ids, y, "churn", as_of, keep, "%Y%m%d")
    return Shape("crm_snapshot", "churn", raw, as_of, ids[~keep].tolist())


def transactions(raw: Path, n: int = 1200, seed: int = 2) -> Shape:
    """CDNOW-style: every customer's first purchase in Q1 1997, then purchases at a personal rate until an
    unobserved dropout; 18 months of history, purchases only, one channel, nothing else."""
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    start, end = pd.Timestamp("1997-01-01"), pd.Timestamp("1998-06-30")
    rows = []
    for i in range(n):
        first = start + pd.Timedelta(days=int(rng.integers(0, 90)))
        rate = rng.gamma(0.8, 1 / 25)  # purchases per day
        life = rng.exponential(240)  # days until the customer silently drops out
        t, k = first, 0
        while t <= end and (t - first).days <= life:
            qty = int(rng.integers(1, 4))
            rows.append((f"e{i}_{k}", t + pd.Timedelta(hours=int(rng.integers(9, 20))), f"{i:05d}", qty,
                         round(qty * float(rng.gamma(3, 5)), 2)))
            k += 1
            t = t + pd.Timedelta(days=max(1, int(rng.exponential(1 / max(rate, 1e-3)))))
    ev = pd.DataFrame(rows, columns=["event_id", "ts", "customer_id", "quantity", "revenue"])
    ev["ts"] = ev["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    ev.assign(channel="store", event_type="purchase").to_csv(raw / "events.csv", index=False)
    return Shape("transactions", "churn", raw, None, [])


def attributes_only(raw: Path, n: int = 1500, seed: int = 3) -> Shape:
    """Bank-marketing style: demographics and products decide a response; each customer has one signup event."""
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    as_of = pd.Timestamp("2023-05-31")
    age = rng.integers(18, 90, n)
    job = rng.choice(["admin", "blue-collar", "technician", "services", "management", "retired", "student"], n)
    balance = np.round(rng.lognormal(6.5, 1.3, n) - 300, 0)
    housing = rng.random(n) < 0.55
    logit = (-2.0 + 1.3 * np.isin(job, ["retired", "student"]) - 0.8 * housing + 0.0006 * np.clip(balance, -500, 4000)
             + 0.02 * np.abs(age - 45) + rng.normal(0, 0.7, n))
    y = (rng.random(n) < _logistic(logit)).astype(int)
    ids = pd.Series([f"B{i:05d}" for i in range(n)])
    signup = as_of - pd.to_timedelta(rng.integers(30, 3000, n), "D")
    pd.DataFrame({"customer_id": ids, "signup_at": signup.strftime("%Y-%m-%d"), "marketing_consent": True, "age": age,
                  "job": job, "marital": rng.choice(["married", "single", "divorced"], n),
                  "education": pd.Series(rng.choice(["primary", "secondary", "tertiary"], n)).where(rng.random(n) > 0.05),
                  "balance": balance, "housing_loan": housing, "personal_loan": rng.random(n) < 0.15,
                  }).to_csv(raw / "customers.csv", index=False)
    pd.DataFrame({"event_id": [f"s{i}" for i in range(n)], "ts": signup.strftime("%Y-%m-%dT10:00:00Z"), "customer_id": ids,
                  "channel": "web", "event_type": "signup"}).to_csv(raw / "events.csv", index=False)
    _labels(raw, ids, y, "response", as_of, np.ones(n, dtype=bool))
    return Shape("attributes_only", "propensity", raw, as_of, [])


def small_imbalanced(raw: Path, n: int = 3000, seed: int = 5, columns: int = 85) -> Shape:
    """CoIL-style: 85 small-integer socio-demographic columns, a few of which raise a rare response (~5.5%)."""
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    as_of = pd.Timestamp("2000-01-01")
    x = rng.integers(0, 10, size=(n, columns))
    logit = -3.6 + 0.35 * (x[:, 0] - 4.5) + 0.3 * (x[:, 1] - 4.5) - 0.25 * (x[:, 2] - 4.5) + rng.normal(0, 0.5, n)
    y = (rng.random(n) < _logistic(logit)).astype(int)
    ids = pd.Series([f"{i:05d}" for i in range(1, n + 1)])
    crm = pd.DataFrame(x, columns=[f"m{j:02d}" for j in range(columns)])
    crm.insert(0, "signup_at", "1999-01-01")
    crm.insert(0, "customer_id", ids)
    crm["marketing_consent"] = True
    crm.to_csv(raw / "customers.csv", index=False)
    _labels(raw, ids, y, "response", as_of, np.ones(n, dtype=bool))
    return Shape("small_imbalanced", "propensity", raw, as_of, [])


def no_crm_no_campaigns(raw: Path, n: int = 800, seed: int = 6, days: int = 300) -> Shape:
    """Web, app and store behaviour (views, carts, purchases with items) of customers known only by id and
    signup date; no campaigns, no CRM attributes. Engaged customers (many sessions) keep buying."""
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    end = pd.Timestamp("2025-03-31")
    start = end - pd.Timedelta(days=days)
    ids = [f"C{i:04d}" for i in range(n)]
    signup = start + pd.to_timedelta(rng.integers(0, days // 3, n), "D")
    pd.DataFrame({"customer_id": ids, "signup_at": signup.strftime("%Y-%m-%d")}).to_csv(raw / "customers.csv", index=False)
    items = pd.DataFrame({"item_id": [f"I{j:03d}" for j in range(60)], "category": [f"cat{j % 6}" for j in range(60)],
                          "price": np.round(rng.gamma(3, 10, 60), 2)})
    items.to_csv(raw / "items.csv", index=False)
    rows = []
    for i, cid in enumerate(ids):
        rate = rng.gamma(1.0, 1 / 12)  # sessions per day
        life = rng.exponential(150)
        t, s = signup[i], 0
        while t <= end and (t - signup[i]).days <= life:
            channel = rng.choice(["web", "app", "store"], p=[0.5, 0.3, 0.2])
            item = items.sample(1, random_state=int(rng.integers(1 << 30))).iloc[0]
            session = f"s{i}_{s}"
            kinds = ["page_view", "product_view"] + (["add_to_cart"] if rng.random() < 0.4 else [])
            kinds += ["purchase"] if rng.random() < 0.35 else []
            for k, kind in enumerate(kinds):
                buy = kind == "purchase"
                rows.append((f"e{i}_{s}_{k}", t + pd.Timedelta(minutes=3 * k), cid, channel, kind, item["item_id"],
                             1 if buy else None, item["price"] if buy else None, session))
            s += 1
            t = t + pd.Timedelta(hours=max(1, int(rng.exponential(24 / max(rate, 1e-3)))))
    ev = pd.DataFrame(rows, columns=["event_id", "ts", "customer_id", "channel", "event_type", "item_id", "quantity",
                                     "revenue", "session_id"])
    ev["ts"] = ev["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    ev.to_csv(raw / "events.csv", index=False)
    return Shape("no_crm_no_campaigns", "churn", raw, None, [])


BUILDERS = {"crm_snapshot": crm_snapshot, "transactions": transactions, "attributes_only": attributes_only,
            "small_imbalanced": small_imbalanced, "no_crm_no_campaigns": no_crm_no_campaigns}
