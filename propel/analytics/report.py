"""`propel report`: one self-contained HTML page of everything analytics knows (also served at `/report`).

Sections: KPIs over time and by channel (with retention cohorts and CLTV), segments, attribution, A/B
tests, recommendation impact, model cards (the champions' test metrics and plots from MLflow) and
monitoring. Filters for period, channel, city tier and segment (a bar at the top) re-draw the KPI,
attribution and campaign views in the page: their additive facts (drilldown.py) are inlined as JSON and
re-added by drilldown.js, drawn with Plotly (its JS inlined from the plotly package). The other charts are
matplotlib SVG, MLflow's plots base64 PNG: nothing is fetched from anywhere, so the file can be mailed or
opened offline. A section whose inputs do not exist yet (no features, no champion) says what to run
instead. A small inline script marks every chart that the browser laid out with a non-empty size
(`data-drawn`), which the browser test checks.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from plotly.offline import get_plotlyjs  # noqa: E402
from scipy import stats  # noqa: E402

from propel.analytics import attribution, cltv, drilldown, experiments, kpis, monitor, recommendations, segments  # noqa: E402
from propel.lake.tables import Lake  # noqa: E402
from propel.config import Workspace  # noqa: E402

SECTIONS = {"kpis": "KPIs", "segments": "Segments", "attribution": "Attribution", "experiments": "Campaign A/B tests",
            "recommendations": "Recommendation impact", "models": "Model cards", "monitoring": "Monitoring"}
PREREQUISITES = (FileNotFoundError, LookupError, ValueError)  # a section that cannot be computed yet says why
COLORS = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#718096", "#d69e2e", "#319795", "#e53e3e"]
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1a202c;background:#f7fafc}
header{background:#1a365d;color:#fff;padding:18px 32px}header h1{margin:0 0 4px;font-size:22px}
nav{padding:8px 32px;background:#e2e8f0;position:sticky;top:0}nav a{margin-right:16px;color:#1a365d;text-decoration:none}
main{padding:8px 32px 40px;max-width:1280px}section{background:#fff;border-radius:6px;padding:8px 20px 16px;margin:18px 0;
box-shadow:0 1px 2px #0002}h2{border-bottom:2px solid #e2e8f0;padding-bottom:4px}h3{margin:18px 0 6px;font-size:15px}
table.t{border-collapse:collapse;font-size:12.5px;margin:6px 0}table.t th,table.t td{padding:3px 8px;border-bottom:1px solid #e2e8f0;
text-align:right}table.t th:first-child,table.t td:first-child{text-align:left}table.t thead th{background:#edf2f7}
.grid{display:flex;flex-wrap:wrap;gap:12px}figure.chart{margin:6px 0;padding:0}figure.chart svg,figure.chart img{max-width:100%;height:auto}
figcaption{font-size:12px;color:#4a5568}.note{color:#4a5568;font-size:12.5px}.missing{color:#975a16;background:#fffaf0;padding:8px;border-radius:4px}
.alert{color:#9b2c2c;background:#fff5f5;padding:4px 8px;margin:3px 0;border-radius:4px}.ok{color:#276749}
.kpi{display:inline-block;min-width:130px;margin:4px 12px 4px 0}.kpi b{display:block;font-size:20px}
#filters{padding:8px 32px;background:#fff;border-bottom:1px solid #e2e8f0;position:sticky;top:36px;z-index:5;font-size:13px}
#filters label{margin-right:12px}#filters select{margin-left:4px}.plot{width:100%;min-height:300px}.half{flex:1 1 480px}
"""
SCRIPT = """
(window.propelReady || Promise.resolve()).then(function () {
  document.querySelectorAll('figure.chart').forEach(function (f) {
    var g = f.querySelector('svg, img'), r = g ? g.getBoundingClientRect() : {width: 0, height: 0};
    var marks = g && g.tagName.toLowerCase() === 'svg' ? f.querySelectorAll('svg path, svg rect, svg use').length : (g && g.naturalWidth) || 0;
    f.dataset.drawn = (r.width > 20 && r.height > 20 && marks > 0) ? 'yes' : 'no';
  });
  document.body.dataset.chartsDrawn = document.querySelectorAll('figure.chart[data-drawn="yes"]').length;
  document.body.dataset.charts = document.querySelectorAll('figure.chart').length;
});
"""
DRILLDOWN_JS = Path(__file__).with_name("drilldown.js")
FILTERS = """<div id="filters"><label>from <select id="f-from"></select></label><label>to <select id="f-to"></select></label>
<label>channel <select id="f-channel"></select></label><label>city tier <select id="f-tier"></select></label>
<label>segment <select id="f-segment"></select></label><button id="f-reset" type="button">reset</button>
<span class="note">Showing <span id="f-summary"></span>: the KPI, attribution and campaign views marked
"filtered" follow these filters (channel = the channel an order was placed on for KPIs, the marketing channel
for attribution and campaigns); the other tables cover all data.</span></div>"""


# ---- building blocks -----------------------------------------------------------------------------------
def _esc(value) -> str:
    return html.escape(str(value))


def _fmt(value) -> str:
    if value is None or (pd.api.types.is_scalar(value) and not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    if isinstance(value, (float, np.floating)):
        if value == 0:
            return "0"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3f}"
    if isinstance(value, (pd.Timestamp, datetime)):
        return value.strftime("%Y-%m-%d")
    return str(value)


def table(df: pd.DataFrame, percent: tuple[str, ...] = (), index: bool = True) -> str:
    """A DataFrame as an HTML table; columns in `percent` shown as percentages."""
    frame = df.reset_index() if index else df
    head = "".join(f"<th>{_esc(c)}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):
        cells = [f"{v:.1%}" if c in percent and isinstance(v, (float, np.floating)) and not np.isnan(v) else _fmt(v)
                 for c, v in zip(frame.columns, row)]
        rows.append("<tr>" + "".join(f"<td>{_esc(x)}</td>" for x in cells) + "</tr>")
    return f'<table class="t"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def chart(fig, name: str, caption: str = "") -> str:
    """A matplotlib figure as inline SVG inside a figure element."""
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f'<figure class="chart" data-chart="{_esc(name)}">{svg}{cap}</figure>'


def image(png: bytes, name: str, caption: str = "") -> str:
    data = base64.b64encode(png).decode()
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f'<figure class="chart" data-chart="{_esc(name)}"><img alt="{_esc(name)}" src="data:image/png;base64,{data}">{cap}</figure>'


def plot(name: str, element: str, css: str = "") -> str:
    """A figure that drilldown.js draws into (div `element`)."""
    return f'<figure class="chart{" " + css if css else ""}" data-chart="{_esc(name)}"><div class="plot" id="{element}"></div></figure>'


def _figure(width: float = 6.4, height: float = 3.0):
    fig, ax = plt.subplots(figsize=(width, height))
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)
    return fig, ax


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


# ---- sections ------------------------------------------------------------------------------------------
def kpi_section(ws: Workspace, con) -> str:
    freq = kpis.period_for(con)
    series = kpis.over_time(con, freq)
    out = [_note(f"Per {freq}. An order is the purchases of one session; conversion rate = sessions with an order / "
                 "sessions; active customers = customers with an order; repeat rate = share of them who had bought "
                 "before; CAC = campaign cost of the period / new customers. The last period may be partial.")]
    tiles = [("revenue", "revenue"), ("orders", "orders"), ("AOV", "aov"), ("conversion", "conversion_rate"),
             ("sessions", "sessions"), ("new customers", "new_customers")]
    out.append("<h3>Selection (filtered)</h3><div>" + "".join(
        f'<span class="kpi">{_esc(label)}<b data-kpi="{key}"></b></span>' for label, key in tiles) + "</div>")
    out.append(f'<div class="grid">{plot("revenue_orders", "plot-kpi", "half")}{plot("revenue_by_channel", "plot-kpi-channel", "half")}</div>')
    x = pd.to_datetime(series["period"])
    fig, ax = _figure()
    ax.plot(x, series["conversion_rate"], color=COLORS[2], marker="o", ms=3, label="conversion rate")
    ax.plot(x, series["repeat_rate"], color=COLORS[3], marker="o", ms=3, label="repeat rate")
    ax.set_title(f"Conversion and repeat rate per {freq} (all data)", fontsize=10)
    ax.legend(fontsize=8)
    out.append(chart(fig, "rates"))
    out.append(f"<h3>KPIs per {freq}</h3>" + table(series.set_index("period"), ("conversion_rate", "repeat_rate")))
    out.append("<h3>By channel</h3>" + table(kpis.by_channel(con).set_index("channel"), ("conversion_rate", "repeat_rate")))
    cohorts = kpis.retention(con, freq)
    if not cohorts.empty:
        fig, ax = _figure(6.4, 0.25 * len(cohorts) + 1.2)
        shares = cohorts.drop(columns="customers").to_numpy(dtype=float)
        img = ax.imshow(shares, aspect="auto", cmap="Blues", vmin=0)
        ax.set_yticks(range(len(cohorts)), [_fmt(c) for c in cohorts.index], fontsize=7)
        ax.set_xticks(range(shares.shape[1]), [str(c) for c in cohorts.columns[1:]], fontsize=7)
        ax.set_xlabel(f"{freq}s after the first order", fontsize=8)
        fig.colorbar(img, ax=ax, fraction=0.03)
        ax.set_title("Retention: share of each cohort ordering again", fontsize=10)
        out.append("<h3>Retention cohorts</h3>" + chart(fig, "retention"))
    out.append(cltv_block(ws, con))
    return "".join(out)


def cltv_block(ws: Workspace, con) -> str:
    cfg = ws.settings().analytics
    try:
        check = cltv.check(con, cfg.cltv_holdout_days)
        _, values = cltv.estimate(con, cfg.cltv_days)
    except ValueError as exc:
        return f"<h3>Customer lifetime value</h3>{_note(str(exc))}"
    freq = check.by_frequency
    fig, ax = _figure(5.0, 3.0)
    w = 0.38
    ax.bar(freq["x"] - w / 2, freq["predicted"], w, color=COLORS[0], label="predicted")
    ax.bar(freq["x"] + w / 2, freq["actual"], w, color=COLORS[1], label="actual")
    ax.set_xticks(freq["x"], [f"{x}{'+' if x == 5 else ''}" for x in freq["x"]])
    ax.set_xlabel("repeat purchase days before the holdout", fontsize=8)
    ax.set_ylabel("purchase days per customer", fontsize=8)
    ax.set_title(f"Holdout check: the last {check.holdout_days} days", fontsize=10)
    ax.legend(fontsize=8)
    top = values["cltv"].sort_values(ascending=False)
    summary = pd.DataFrame({"value": [len(values), values["cltv"].mean(), values["cltv"].median(),
                                      top.head(max(1, len(top) // 10)).sum() / max(top.sum(), 1e-9),
                                      values["p_alive"].mean(), check.predicted_purchases, check.actual_purchases,
                                      check.correlation]},
                           index=["customers who bought", f"mean CLTV ({cfg.cltv_days} days)", "median CLTV",
                                  "share of CLTV in the top 10%", "mean P(alive)", "holdout: predicted purchase days",
                                  "holdout: actual purchase days", "holdout: correlation per customer"]).rename_axis("measure")
    return (f"<h3>Customer lifetime value (BG/NBD x Gamma-Gamma)</h3>"
            + _note(f"Expected revenue over the next {cfg.cltv_days} days = expected purchase days (BG/NBD) x expected "
                    f"value per purchase day (Gamma-Gamma), fitted by maximum likelihood. Check: fitted on the history "
                    f"before {check.calibration_end}, predicting the {check.holdout_days} days after: predicted / actual "
                    f"purchase days = {check.ratio:.2f}. BG/NBD assumes each customer buys at a constant rate while active; "
                    "where customers buy less as they age it over-predicts, the more the longer the horizon.")
            + f'<div class="grid">{chart(fig, "cltv_holdout")}<div>{table(summary)}</div></div>'
            + "<h4>By acquisition channel (first order)</h4>" + table(cltv.by_acquisition_channel(con, values)))


def segment_section(ws: Workspace, con, latest: tuple[pd.DataFrame, list[dict]]) -> str:
    seg, profiles = latest
    consent = con.execute("SELECT customer_id, true AS consent FROM contactable").df()
    seg = seg.merge(consent, on="customer_id", how="left")
    seg["consent"] = seg["consent"].astype("boolean").fillna(False).astype(bool)
    snapshot = _fmt(seg["event_timestamp"].iloc[0]) if len(seg) else ""
    stored = "" if (ws.segments / f"{snapshot}.parquet").exists() else " (computed for this report; run `propel segments` to store them in Feast)"
    out = [_note(f"Snapshot {snapshot}{stored}. Rules: docs/features.md (customer_segments). Reachable = marketing "
                 "consent given; only they may be exported for contact.")]
    grid = []
    for col, name in (("rfm_segment", "RFM segment"), ("lifecycle_stage", "Lifecycle stage"), ("value_tier", "Value tier")):
        counts = seg.groupby(col).agg(customers=("customer_id", "size"), reachable=("consent", "sum")).sort_values("customers")
        fig, ax = _figure(4.2, 0.28 * len(counts) + 1.0)
        ax.barh(counts.index, counts["customers"], color=COLORS[0], label="customers")
        ax.barh(counts.index, counts["reachable"], color=COLORS[2], label="reachable", height=0.4)
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=7)
        grid.append(f"<div>{chart(fig, col)}{table(counts.sort_values('customers', ascending=False))}</div>")
    out.append(f'<div class="grid">{"".join(grid)}</div>')
    if profiles:
        rows = pd.DataFrame([{"cluster": p["cluster"], "customers": p["customers"], "share": p["share"],
                              "what distinguishes it": p["label"], **{k: v for k, v in p["means"].items()}}
                             for p in profiles]).set_index("cluster")
        out.append("<h3>Behavioural clusters</h3>" + _note("k-means on standardised 90-day behaviour of active customers; "
                   "the label names the three features furthest from the average (in standard deviations); means below.")
                   + table(rows, ("share",)))
    return "".join(out)


def attribution_section(result: attribution.Attribution) -> str:
    errors = ", ".join(f"{level} {e:.3f}" for level, e in result.shapley_error.items() if e > 0)
    return (_note(f"{result.converting_paths:,} converting paths out of {result.paths:,} paths with touches; "
                  f"{result.organic_orders:,} orders had no touch in the {result.lookback_days}-day lookback (organic). "
                  f"Time decay half-life {result.half_life_days:g} days. linear_distinct splits a path equally among its "
                  "distinct channels; shapley is data-driven (Shapley values of the channels' coalition conversion "
                  "rates over converting and non-converting paths; exact up to "
                  f"{attribution.EXACT_PLAYERS} channels per path, sampled above"
                  + (f", largest standard error of a sampled share: {errors}" if errors else "") + "). "
                  "Rule-based models, Shapley and the classic Markov removal effect credit every touched conversion, "
                  "including those that would have happened anyway; markov_incremental uses the campaigns' control "
                  "groups as the counterfactual and estimates conversions the channel caused. The filtered view "
                  "re-adds the per-path models; the Markov models value the whole chain and are in the tables below.")
            + "<h3>Conversions by channel (filtered)</h3>" + plot("attribution", "plot-attribution")
            + '<table class="t" id="attr-table"></table>'
            + "<h3>Conversions by model (all data)</h3>" + table(result.side_by_side())
            + "<h3>Money</h3>" + table(result.money()) + "<h3>By campaign</h3>" + table(result.side_by_side("campaign")))


def experiment_section(ws: Workspace) -> str:
    ab = experiments.ab_tests(ws)
    if ab.empty or "lift" not in ab:
        return _note("No campaign with both a treatment and a control group whose response window has ended.")
    cfg = ws.settings()
    camp = ab[ab["level"] == "campaign"].sort_values("start")
    cols = ["channel", "treated", "control", "srm_p", "srm", "rate_control", "lift", "lift_low", "lift_high",
            "lift_cuped", "lift_cuped_low", "lift_cuped_high", "lift_variance_reduction", "lift_p_adjusted", "mde",
            "verdict", "rpc_lift", "rpc_cuped", "rpc_variance_reduction", "rpc_p_adjusted", "incremental_revenue", "cost", "net"]
    pct = ("rate_control", "lift", "lift_low", "lift_high", "lift_cuped", "lift_cuped_low", "lift_cuped_high",
           "lift_variance_reduction", "rpc_variance_reduction", "mde")
    srm = camp[camp["srm"]]
    warning = "".join(f'<p class="alert">Sample-ratio mismatch in {_esc(k)}: {int(t):,} treated vs {int(c):,} control '
                      f"(p = {p:.2g}); its results are not trustworthy until the split is explained.</p>"
                      for k, t, c, p in zip(srm["key"], srm["treated"], srm["control"], srm["srm_p"]))
    reduction = camp["lift_variance_reduction"].median(), camp["rpc_variance_reduction"].median()
    return (_note(f"A touch converts when the customer orders within {cfg.train.response_window_days} days of the send. "
                  f"Lift: difference of proportions with Newcombe's {cfg.analytics.confidence:.0%} interval (Wilson "
                  "score intervals combined). CUPED adjusts each outcome by the customer's orders and revenue in the "
                  f"{experiments.PRE_DAYS} days before the send (median variance reduction {reduction[0]:.0%} for "
                  f"conversion, {reduction[1]:.0%} for revenue per customer); its p-values are Benjamini-Hochberg adjusted "
                  f"across the {len(camp)} campaigns (and separately across channels), and the verdict uses them. MDE: "
                  f"the smallest lift detected with {experiments.POWER:.0%} power. Revenue per customer (rpc): Welch's "
                  f"t-test; SRM: chi-square against a {cfg.analytics.control_share:.0%} control share. Net = incremental "
                  "revenue - campaign cost.") + warning
            + "<h3>Campaign lift (filtered)</h3>" + _note("Raw difference of the selected touches, Newcombe interval; "
                                                          "verdicts, CUPED and adjusted p-values are for all touches (tables below).")
            + '<p class="note" id="ab-count"></p>' + plot("ab_lift", "plot-ab") + '<table class="t" id="ab-table"></table>'
            + "<h3>By campaign (all touches)</h3>" + table(camp.set_index("key")[cols], pct)
            + "<h3>By channel (campaigns pooled)</h3>" + table(ab[ab["level"] == "channel"].set_index("key")[cols[1:]], pct))


def recommendation_section(ws: Workspace, con) -> str:
    served = recommendations.served_log(ws)
    impact = recommendations.impact(con, served)
    if impact.empty:
        return _note("No event carries a recommendation_id yet: send the id that /recommend returns back with the "
                     "events that follow (recommendation_click, purchase, ...) to measure click-through and conversion.")
    rates = ("ctr", "conversion_rate", "conversion_per_click")
    groups = [c for c in recommendations.GROUPS if c in impact.columns]
    if served is None:
        return (_note("Served recommendations: ids seen on any event (the service has logged nothing here, so lists "
                      "nobody reacted to are missing and rates are overstated).")
                + table(impact.set_index(groups).drop(columns="impressions"), rates))
    positions = recommendations.by_position(con, served)
    return (_note(f"Served recommendations: the service's log ({len(served):,} answers of /recommend, "
                  f"{served['served_at'].min():%Y-%m-%d} to {served['served_at'].max():%Y-%m-%d}), matched with the "
                  "events that carry their recommendation_id. CTR: share of recommendations clicked.")
            + table(impact.set_index(groups), rates)
            + "<h3>By position in the list</h3>" + table(positions.set_index("position"), ("ctr", "purchase_rate")))


def _split_metrics(metrics: dict) -> tuple[pd.DataFrame, dict]:
    """The model's own test metrics next to its baselines' (logistic_roc_auc -> row logistic, column roc_auc)."""
    bases = {k for k in metrics if any(o != k and o.endswith("_" + k) for o in metrics)}
    rows, other = {}, {}
    for key, value in metrics.items():
        base = max((b for b in bases if key == b or key.endswith("_" + b)), key=len, default=None)
        if base is None:
            other[key] = value
            continue
        rows.setdefault(key[: -len(base)].rstrip("_") or "champion", {})[base] = value
    frame = pd.DataFrame(rows).T.rename_axis("model")
    order = ["champion", *sorted(r for r in frame.index if r != "champion")]
    return frame.loc[order], other


def model_section(ws: Workspace) -> str:
    from propel.training import registry

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in a service's log
    client = registry.tracking(ws)
    cards = []
    for model in sorted(client.search_registered_models(), key=lambda m: m.name):
        version = registry.champion_version(client, model.name)
        if version is None:
            continue
        run = client.get_run(version.run_id)
        tags, metrics = run.data.tags, run.data.metrics
        compare, other = _split_metrics(metrics)
        created = datetime.fromtimestamp(version.creation_timestamp / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")
        head = (f"<h3>{_esc(model.name)} v{_esc(version.version)}</h3>"
                + _note(f"Created {created} UTC, run {run.info.run_id[:8]}, feature "
                        f"service {tags.get('feast.feature_service', tags.get('propel.feature_service', '?'))}, labels {tags.get('propel.label_source', '?')}, "
                        f"selection metric {tags.get('propel.selection_metric', '?')}. Metrics on the out-of-time test "
                        f"split; rows below the champion are its baselines on the same rows."))
        plots = []
        with tempfile.TemporaryDirectory() as tmp:
            names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "plots")}
            for name in ("gains.png", "calibration.png", "qini.png"):
                if name in names:
                    path = client.download_artifacts(run.info.run_id, f"plots/{name}", tmp)
                    plots.append(image(Path(path).read_bytes(), f"{model.name}_{name[:-4]}", name[:-4]))
        extra = table(pd.DataFrame({"value": other}).rename_axis("metric")) if other else ""
        cards.append(head + table(compare) + extra + f'<div class="grid">{"".join(plots)}</div>')
    return "".join(cards) or _note("No champion model yet: run `propel train all`.")


def monitoring_section(result: dict) -> str:
    alerts = result["alerts"]
    out = ["".join(f'<p class="alert">{_esc(a["kind"])}: {_esc(a["message"])}</p>' for a in alerts)
           or '<p class="ok">No alerts.</p>']
    fresh = result["freshness"]
    out.append("<h3>Freshness</h3>")
    out.append(_note(f"Newest event {fresh['newest_event']} ({fresh['data_age_days']} days before {fresh['now']}); "
                     f"online store loaded up to {fresh['online_store'].get('loaded_until')}."))
    out.append(table(pd.DataFrame(fresh["channels"]).set_index("channel")))
    drift = result["drift"]
    if "features" in drift:
        top = pd.DataFrame(drift["features"]).head(15).iloc[::-1]
        fig, ax = _figure(6.0, 0.24 * len(top) + 1.2)
        ax.barh(top["feature"], top["psi"], color=[COLORS[8] if t else COLORS[0] for t in top["top"]])
        ax.axvline(0.1, color="#d69e2e", lw=1, ls="--")
        ax.axvline(0.25, color="#e53e3e", lw=1, ls="--")
        ax.set_title(f"Feature drift (PSI), {drift['model']}: training rows vs snapshot {drift['snapshot']}", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        out.append("<h3>Drift</h3>" + _note(f"Score PSI {drift['score_psi']:.3f} (mean score {drift['score_mean_reference']:.3f} "
                                            f"in training, {drift['score_mean_current']:.3f} now). Red bars: the champion's "
                                            "most important features, which can alert. 0.1 = moderate, 0.25 = large shift.")
                   + chart(fig, "psi"))
    else:
        out.append("<h3>Drift</h3>" + _note(drift.get("skipped", "")))
    checks = pd.DataFrame(result["daily_checks"])
    if not checks.empty:
        out.append("<h3>Daily checks</h3>" + table(checks.set_index(["day", "channel"]), ("conversion_rate", "baseline_conversion_rate")))
    return "".join(out)


# ---- page ----------------------------------------------------------------------------------------------
def _attempt(build):
    """(value, None), or (None, the reason) when its inputs do not exist yet; computed once for two sections."""
    try:
        return build(), None
    except PREREQUISITES as exc:
        return None, exc


def _given(attempt):
    value, reason = attempt
    if reason is not None:
        raise reason
    return value


def render(ws: Workspace, now: datetime | None = None) -> str:
    """The whole report as one HTML string."""
    started = time.perf_counter()
    con = Lake(ws).connect()
    span = con.execute("SELECT CAST(min(ts) AS DATE), CAST(max(ts) AS DATE), count(*) FROM events").fetchone()
    if not span[2]:
        raise FileNotFoundError(f"{Lake(ws).root}: the lake has no events yet. Run `propel ingest RAW_DIR` first.")
    monitored = None
    freq = kpis.period_for(con)
    latest, attributed = _attempt(lambda: segments.latest(ws)), _attempt(lambda: attribution.attribute(ws))
    facts = drilldown.facts(ws, con, freq, latest[0][0] if latest[0] else None, attributed[0])
    facts["z"] = float(stats.norm.ppf(0.5 + facts["confidence"] / 2))

    def monitoring() -> str:
        nonlocal monitored
        monitored = monitor.check(ws, now)
        return monitoring_section(monitored)

    builders = {"kpis": lambda: kpi_section(ws, con),
                "segments": lambda: segment_section(ws, con, _given(latest)),
                "attribution": lambda: attribution_section(_given(attributed)),
                "experiments": lambda: experiment_section(ws),
                "recommendations": lambda: recommendation_section(ws, con), "models": lambda: model_section(ws),
                "monitoring": monitoring}
    body = []
    for key, title in SECTIONS.items():
        try:
            content = builders[key]()
        except PREREQUISITES as exc:
            content = f'<p class="missing">Not available yet: {_esc(exc)}</p>'
        body.append(f'<section id="{key}"><h2>{_esc(title)}</h2>{content}</section>')
    alerts = len(monitored["alerts"]) if monitored else 0
    nav = "".join(f'<a href="#{k}">{_esc(t)}</a>' for k, t in SECTIONS.items())
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    data = json.dumps(facts, separators=(",", ":"), default=str).replace("</", "<\\/")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Propel report</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head><body>'
            f"<header><h1>Propel marketing report</h1>Data {span[0]} to {span[1]} ({span[2]:,} events); generated {stamp} "
            f"in {time.perf_counter() - started:.0f}s; {alerts} monitoring alert(s).</header><nav>{nav}</nav>{FILTERS}"
            f'<main>{"".join(body)}</main><script type="application/json" id="facts">{data}</script>'
            f"<script>{get_plotlyjs()}</script><script>{DRILLDOWN_JS.read_text()}</script><script>{SCRIPT}</script></body></html>")


def write_report(ws: Workspace, path: Path | None = None, now: datetime | None = None) -> Path:
    """Render the report to `path` (default data/reports/report.html)."""
    path = Path(path or ws.reports / "report.html")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(ws, now), encoding="utf-8")
    return path
