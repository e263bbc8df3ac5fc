"""Every feature Propel computes: name, type, description, how it is computed and its default.

This list is the one place features are defined. `propel.features.build` turns it into DuckDB SQL,
`propel/featurestore/repo/` turns it into Feast feature views and services, and `propel.docs` into the table
in docs/features.md. CRM attributes are the exception: they are whatever extra columns the user's
`customers` table has, discovered when features are built.

A feature is either an aggregate over one *source* (a per-customer daily table, see `propel.features.build`)
restricted to days before the snapshot (`T` is the snapshot date in SQL), or *derived*: an
expression over other features of the same row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

FEATURE_CHANNELS = ("web", "app", "store", "email", "sms", "social", "search")
NEVER_DAYS = 9999  # "days since" for something that never happened: large, finite, documented


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: str  # int | float | string | list (of strings)
    description: str
    group: str  # its group in FEATURE_GROUPS (docs and feature services pick features by group)
    sql: str  # aggregate over `source`, or an expression over other features when source == "derived"
    source: str = "daily"
    default: str = "0"  # SQL literal used when there is no history
    # A feature that moves with the clock alone (SQL `T - <a day>`): feature tables store that day instead, in
    # this column (days since 1970-01-01, null if none), and readers count the days from their own T (asof.py)
    counts_from: str = ""


def _windowed(name: str, desc: str, group: str, expr: str, windows: tuple[int, ...], dtype: str = "int",
              source: str = "daily") -> list[Feature]:
    return [Feature(f"{name}_{w}d", dtype, f"{desc} in the {w} days before the snapshot", group,
                    f"{expr} FILTER (WHERE day >= T - {w})", source) for w in windows]


def _ratio(name: str, num: str, den: str, desc: str, group: str) -> Feature:
    return Feature(name, "float", desc, group, f"CASE WHEN {den} > 0 THEN {num} / {den} ELSE 0 END", "derived")


CUSTOMER_FEATURES: tuple[Feature, ...] = (
    # --- RFM -----------------------------------------------------------------------------------
    Feature("days_since_last_purchase", "int", f"days from the last purchase to the snapshot ({NEVER_DAYS} if never)",
            "customer_rfm", "T - max(day) FILTER (WHERE n_purchases > 0)", default=str(NEVER_DAYS),
            counts_from="last_purchase_day"),
    Feature("days_since_last_visit", "int", f"days from the last event of any kind to the snapshot ({NEVER_DAYS} if never)",
            "customer_rfm", "T - max(day)", default=str(NEVER_DAYS), counts_from="last_visit_day"),
    *_windowed("purchases", "purchases", "customer_rfm", "sum(n_purchases)", (7, 30, 90, 365)),
    *_windowed("revenue", "revenue", "customer_rfm", "sum(revenue)", (7, 30, 90, 365), "float"),
    Feature("lifetime_purchases", "int", "purchases ever before the snapshot", "customer_rfm", "sum(n_purchases)"),
    Feature("lifetime_revenue", "float", "revenue ever before the snapshot", "customer_rfm", "sum(revenue)"),
    _ratio("avg_order_value_365d", "revenue_365d", "purchases_365d", "average purchase value over 365 days", "customer_rfm"),
    Feature("tenure_days", "int", "days since signup (or first event) at the snapshot", "customer_rfm",
            "T - CAST(since AS DATE)", "derived", counts_from="first_seen_day"),
    # --- channel behaviour -----------------------------------------------------------------------
    *[f for ch in FEATURE_CHANNELS for f in _windowed(f"events_{ch}", f"events on the {ch} channel", "customer_channels",
                                                        f"sum(n_{ch})", (7, 30, 90))],
    *[_ratio(f"share_{ch}_90d", f"events_{ch}_90d", "events_90d", f"share of the last 90 days' events on {ch}",
             "customer_channels") for ch in FEATURE_CHANNELS],
    *_windowed("events", "events of any kind", "customer_channels", "sum(n_events)", (30, 90)),
    Feature("preferred_channel_90d", "string", "channel with most events in the last 90 days ('none' if no events)",
            "customer_channels",
            "CASE WHEN events_90d = 0 THEN 'none' ELSE " + "".join(
                f"CASE WHEN events_{ch}_90d = greatest({', '.join(f'events_{c}_90d' for c in FEATURE_CHANNELS)}) THEN '{ch}' ELSE "
                for ch in FEATURE_CHANNELS) + "'other'" + " END" * len(FEATURE_CHANNELS) + " END",
            "derived", "'none'"),
    *_windowed("sessions", "distinct sessions", "customer_channels", "sum(n_sessions)", (30, 90)),
    *_windowed("product_views", "product views", "customer_channels", "sum(n_views)", (90,)),
    *_windowed("carts", "add-to-cart events", "customer_channels", "sum(n_carts)", (90,)),
    _ratio("view_to_cart_90d", "carts_90d", "product_views_90d", "add-to-carts per product view, 90 days", "customer_channels"),
    _ratio("cart_to_purchase_90d", "purchases_90d", "carts_90d", "purchases per add-to-cart, 90 days", "customer_channels"),
    # --- campaign engagement ---------------------------------------------------------------------
    *_windowed("touches", "campaign messages received (control group excluded)", "customer_campaigns", "sum(n_touches)",
               (30, 90, 365), source="touches"),
    Feature("days_since_last_touch", "int", f"days since the last campaign message ({NEVER_DAYS} if never)",
            "customer_campaigns", "T - max(day)", "touches", str(NEVER_DAYS), counts_from="last_touch_day"),
    *_windowed("email_opens", "email opens", "customer_campaigns", "sum(n_email_opens)", (90,)),
    *_windowed("email_clicks", "email clicks", "customer_campaigns", "sum(n_email_clicks)", (90,)),
    *_windowed("sms_clicks", "SMS clicks", "customer_campaigns", "sum(n_sms_clicks)", (90,)),
    *_windowed("email_touches", "email messages received", "customer_campaigns", "sum(n_email_touches)", (90,),
               source="touches"),
    *_windowed("sms_touches", "SMS messages received", "customer_campaigns", "sum(n_sms_touches)", (90,), source="touches"),
    _ratio("email_open_rate_90d", "email_opens_90d", "email_touches_90d", "email opens per email received, 90 days",
           "customer_campaigns"),
    _ratio("email_click_rate_90d", "email_clicks_90d", "email_touches_90d", "email clicks per email received, 90 days",
           "customer_campaigns"),
    _ratio("sms_click_rate_90d", "sms_clicks_90d", "sms_touches_90d", "SMS clicks per SMS received, 90 days",
           "customer_campaigns"),
    *_windowed("campaign_purchases", "purchases attributed to a campaign (past responses)", "customer_campaigns",
               "sum(n_campaign_purchases)", (365,)),
    _ratio("response_rate_365d", "campaign_purchases_365d", "touches_365d", "campaign purchases per message, 365 days",
           "customer_campaigns"),
    # --- preferences ------------------------------------------------------------------------------
    Feature("top_category_365d", "string", "category with the most spend (views if no purchase) in 365 days",
            "customer_preferences", "first(category ORDER BY score DESC, category)", "categories", "'none'"),
    Feature("top_category_share_365d", "float", "share of spend (or views) on the top category, 365 days",
            "customer_preferences", "max(score) / nullif(sum(score), 0)", "categories"),
    Feature("n_categories_365d", "int", "distinct categories interacted with, 365 days", "customer_preferences",
            "count(*)", "categories"),
    Feature("category_entropy_365d", "float", "entropy of the category mix (0 = one category), 365 days",
            "customer_preferences", "-sum(score / total * ln(score / total)) FILTER (WHERE score > 0)", "categories"),
    Feature("price_level_365d", "float", "average paid price relative to the category's average price (1 = typical)",
            "customer_preferences", "sum(price_ratio_sum) / nullif(sum(n_bought), 0)", "categories", "1"),
    Feature("brand_concentration_365d", "float", "Herfindahl index of purchase counts over brands (1 = one brand)",
            "customer_preferences", "sum(brand_share * brand_share)", "brands"),
    # --- trend ------------------------------------------------------------------------------------
    Feature("events_prev_30d", "int", "events 31-60 days before the snapshot", "customer_trend",
            "sum(n_events) FILTER (WHERE day >= T - 60 AND day < T - 30)"),
    Feature("activity_trend_30d", "float", "(events last 30 days + 1) / (events the 30 days before + 1)", "customer_trend",
            "(events_30d + 1.0) / (events_prev_30d + 1.0)", "derived", "1"),
    Feature("ipt_mean_days_365d", "float", "mean days between purchase days, 365 days (0 if under two)",
            "customer_trend", "avg(gap)", "gaps"),
    Feature("ipt_std_days_365d", "float", "standard deviation of days between purchase days, 365 days",
            "customer_trend", "stddev_samp(gap)", "gaps"),
    _ratio("overdue_ratio", "days_since_last_purchase", "ipt_mean_days_365d",
           "days since last purchase over the usual gap (> 1 = overdue)", "customer_trend"),
)

ITEM_FEATURES: tuple[Feature, ...] = (
    *_windowed("item_views", "product views", "item_stats", "sum(n_views)", (7, 30), source="item_daily"),
    *_windowed("item_purchases", "purchases", "item_stats", "sum(n_purchases)", (7, 30), source="item_daily"),
    _ratio("item_conversion_rate_30d", "item_purchases_30d", "item_views_30d", "purchases per view, 30 days", "item_stats"),
    Feature("item_price", "float", "list price", "item_stats", "price", "derived"),
    Feature("item_category", "string", "category", "item_stats", "category", "derived", "'unknown'"),
)

# --- segments -----------------------------------------------------------------------------------------
# Written by `propel segments` (propel/analytics/segments.py): one row per customer of every customer snapshot,
# computed from that snapshot alone, so they are as point-in-time correct as the snapshot. Sources:
# "snapshot" = SQL over one snapshot's rows (window functions rank within it), "model" = computed in Python,
# "derived" = SQL over the features above it and the snapshot's. `{name}` is the setting analytics.name.
# Rules are (value, condition, meaning), first match wins; in conditions R, F, M are the RFM scores and
# FM = (F + M) // 2, `recency` is days since the last purchase (the last visit for someone who never bought).
RFM_SEGMENTS: tuple[tuple[str, str, str], ...] = (
    ("prospect", "R = 0", "never bought (RFM needs a purchase)"),
    ("new", "R >= 4 AND lifetime_purchases = 1", "one purchase so far, a recent one"),
    ("champions", "R >= 4 AND FM >= 4", "bought recently, often, and spent the most"),
    ("loyal", "R >= 3 AND FM >= 3", "buy regularly and spend well"),
    ("potential_loyalists", "R >= 3", "recent buyers of modest frequency and spend"),
    ("cant_lose", "R = 1 AND FM >= 4", "were among the best, have not bought for the longest"),
    ("at_risk", "R <= 2 AND FM >= 3", "good customers whose purchases are getting old"),
    ("hibernating", "R = 2", "low value, not bought for a while"),
    ("lost", "true", "low value, not bought for the longest"),
)
LIFECYCLE_STAGES: tuple[tuple[str, str, str], ...] = (
    ("new", "tenure_days <= {new_days}", "first seen (signup or first event) within analytics.new_days"),
    ("reactivated", "purchases_30d > 0 AND purchases_90d = purchases_30d AND lifetime_purchases > purchases_90d",
     "bought in the last 30 days after at least 60 days without buying"),
    ("active", "recency <= {active_days}", "bought (never-buyers: visited) within analytics.active_days"),
    ("lapsing", "recency <= {churned_days}", "last purchase (visit) within analytics.churned_days"),
    ("churned", "true", "nothing for longer than analytics.churned_days"),
)
VALUE_TIERS: tuple[tuple[str, str, str], ...] = (
    ("none", "revenue_365d <= 0", "no revenue in the last 365 days"),
    ("high_at_risk", "M = 5 AND churn_score >= {churn_risk}", "high, and the churn champion predicts churn"),
    ("high", "M = 5", "top fifth of 365-day revenue among customers who ever bought"),
    ("medium_at_risk", "M >= 3 AND churn_score >= {churn_risk}", "medium, and the churn champion predicts churn"),
    ("medium", "M >= 3", "third and fourth fifths of 365-day revenue"),
    ("low", "true", "bottom two fifths of 365-day revenue"),
)
_RULE_TERMS = {"FM": "((rfm_frequency_score + rfm_monetary_score) // 2)", "R": "rfm_recency_score",
               "F": "rfm_frequency_score", "M": "rfm_monetary_score",
               "recency": "(CASE WHEN lifetime_purchases > 0 THEN days_since_last_purchase ELSE days_since_last_visit END)"}


def _first_match(rules: tuple[tuple[str, str, str], ...]) -> str:
    def sql(condition: str) -> str:
        return re.sub(r"\b(FM|R|F|M|recency)\b", lambda m: _RULE_TERMS[m.group(1)], condition)

    return "CASE " + " ".join(f"WHEN {sql(c)} THEN '{v}'" for v, c, _ in rules) + " END"


def _quintile(column: str, low_is_best: bool = False) -> str:
    """1-5 quintile among customers who ever bought (5 = best; ties share their average rank); 0 = never bought."""
    group = "PARTITION BY lifetime_purchases > 0"
    w = f"({group} ORDER BY {column}{' DESC' if low_is_best else ''})"
    n = f"count(*) OVER ({group})"
    avg_rank = f"(rank() OVER {w} + cume_dist() OVER {w} * {n}) / 2"
    return f"CASE WHEN lifetime_purchases = 0 THEN 0 ELSE ceil(round(5 * {avg_rank} / {n}, 9)) END"


SEGMENT_FEATURES: tuple[Feature, ...] = (
    Feature("rfm_recency_score", "int", "RFM recency quintile among customers who ever bought (5 = most recent; "
            "0 = never bought)", "customer_segments", _quintile("days_since_last_purchase", low_is_best=True), "snapshot"),
    Feature("rfm_frequency_score", "int", "RFM frequency quintile (purchases in 365 days; 0 = never bought)",
            "customer_segments", _quintile("purchases_365d"), "snapshot"),
    Feature("rfm_monetary_score", "int", "RFM monetary quintile (revenue in 365 days; 0 = never bought)",
            "customer_segments", _quintile("revenue_365d"), "snapshot"),
    Feature("churn_score", "float", "churn champion's probability for customers who bought within "
            "train.churn_lookback_days, on snapshots after its training window (-1 otherwise)", "customer_segments",
            "", "model", "-1"),
    Feature("behaviour_cluster", "int", "behavioural cluster (k-means on standardised activity, channel mix and "
            "value; profiles in the report); -1 = no events in 90 days", "customer_segments", "", "model", "-1"),
    Feature("rfm_segment", "string", "named RFM segment (rules below)", "customer_segments",
            _first_match(RFM_SEGMENTS), "derived", "'prospect'"),
    Feature("lifecycle_stage", "string", "new, reactivated, active, lapsing or churned (rules below)",
            "customer_segments", _first_match(LIFECYCLE_STAGES), "derived", "'churned'"),
    Feature("value_tier", "string", "365-day revenue tier, `_at_risk` when the churn champion predicts churn "
            "(rules below)", "customer_segments", _first_match(VALUE_TIERS), "derived", "'none'"),
)
SEGMENT_RULES = {"rfm_segment": RFM_SEGMENTS, "lifecycle_stage": LIFECYCLE_STAGES, "value_tier": VALUE_TIERS}

# --- real time ----------------------------------------------------------------------------------------
# Folded from the event log (POST /events) by the stream consumer (propel/featurestore/realtime.py) and pushed to
# the online store, one row per profile (an anonymous device's profile too). Windows end at the profile's newest
# event (the row's timestamp), so a fold is the same whenever it runs; see docs/realtime.md.
REALTIME_FEATURES: tuple[Feature, ...] = (
    Feature("last_event_ts", "float", "time of the newest event (Unix seconds, UTC)", "customer_realtime", "", "stream",
            "NULL"),
    Feature("last_purchase_ts", "float", "time of the newest purchase (Unix seconds; null if none logged)",
            "customer_realtime", "", "stream", "NULL"),
    *(Feature(f"{name}_{w}h", "int", f"{desc} in the {w} h up to the newest event", "customer_realtime", "", "stream")
      for name, desc in (("events", "events"), ("sessions", "distinct sessions"), ("purchases", "purchases"),
                         ("carts", "add-to-cart events")) for w in (1, 24)),
    Feature("recent_views", "list", "items of the newest product views, newest first (stream.recent_items of them)",
            "customer_realtime", "", "stream", "[]"),
    Feature("recent_purchases", "list", "items of the newest purchases, newest first (stream.recent_items of them)",
            "customer_realtime", "", "stream", "[]"),
)

# Feature groups: (the Feast feature view holding them, description). A Feast view is one feature table:
# the behaviour groups all live in the weekly customer snapshots, so training reads those files in one
# point-in-time join instead of one per group (5x fewer scans of the snapshots).
FEATURE_GROUPS: dict[str, tuple[str, str]] = {
    "customer_rfm": ("customer_features", "Recency, frequency, monetary value and tenure"),
    "customer_channels": ("customer_features", "Activity per channel, sessions and funnel rates"),
    "customer_campaigns": ("customer_features", "Campaign messages received and how the customer engaged"),
    "customer_preferences": ("customer_features", "Category, price and brand preferences"),
    "customer_trend": ("customer_features", "Activity trend and purchase rhythm"),
    "customer_profile": ("customer_profile", "CRM attributes passed through from the customers table"),
    "item_stats": ("item_stats", "Item popularity, conversion, price and category"),
    "customer_segments": ("customer_segments", "RFM scores and segments, lifecycle stage, value tier and behavioural "
                                               "cluster"),
    "customer_realtime": ("customer_realtime", "Recency, activity windows and recent items from the event stream"),
}

# One feature service per model, versioned: bump the suffix when the feature list of a model changes.
FEATURE_SERVICES: dict[str, tuple[str, ...]] = {
    "churn_v1": ("customer_rfm", "customer_channels", "customer_campaigns", "customer_preferences", "customer_trend",
                 "customer_profile"),
    "propensity_v1": ("customer_rfm", "customer_channels", "customer_campaigns", "customer_preferences",
                      "customer_trend", "customer_profile"),
    # not a model: audiences read a customer's segments by this name (registered once `propel segments` ran)
    "segments_v1": ("customer_segments",),
    # not a model: serving reads the stream's features by this name (days since, recent items)
    "realtime_v1": ("customer_realtime",),
}


def clock_features(features) -> list[Feature]:
    """The features that move with the clock alone: those counting days from a stored day (`counts_from`) and
    derived ones over them (overdue_ratio). Feature tables do not store them; readers compute them (asof.py)."""
    out: list[Feature] = []
    for f in features:
        if f.counts_from or f.source == "derived" and any(re.search(rf"\b{c.name}\b", f.sql) for c in out):
            out.append(f)
    return out


def stored_features(features) -> list[Feature]:
    """The columns a feature table holds, in definition order: a clock feature's place holds the day it counts
    from, and features derived from clock features are left out."""
    clock = clock_features(features)
    return [replace(f, name=f.counts_from, dtype="int", default="NULL", counts_from="",
                    description=f"the day {f.name} counts from (days since 1970-01-01; null if none)")
            if f.counts_from else f for f in features if f.counts_from or f not in clock]


def view_features(view: str) -> list[Feature]:
    """The computed features a Feast view holds, in definition order (CRM attributes are discovered, not here)."""
    return [f for f in (*CUSTOMER_FEATURES, *ITEM_FEATURES, *SEGMENT_FEATURES, *REALTIME_FEATURES)
            if FEATURE_GROUPS[f.group][0] == view]

