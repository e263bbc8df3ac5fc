"""The HTML report: every section computed, self-contained, drawn by a real browser (headless Chromium), and
its filters re-add the same totals that DuckDB computes from the lake."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from propel.analytics.kpis import ORDERS, period_for
from propel.analytics.report import SECTIONS
from propel.cli import app
from propel.lake.tables import Lake

NOW = "2026-11-01T06:00"  # a few hours after the generated data's last day


@pytest.fixture(scope="module")
def report(champions, tmp_path_factory) -> Path:
    """`propel report` on the shared champions workspace (nothing is written into it)."""
    path = tmp_path_factory.mktemp("report") / "report.html"
    out = CliRunner().invoke(app, ["--workspace", str(champions.root), "report", "--out", str(path), "--now", NOW])
    assert out.exit_code == 0, out.output
    return path


def test_every_section_is_computed_and_self_contained(report):
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>"), "render(ws), as /report serves it"
    for key, title in SECTIONS.items():
        assert f'<section id="{key}"><h2>{title}</h2>' in page
    assert "Not available yet" not in page, re.findall(r'class="missing">([^<]*)', page)
    charts = re.findall(r'<figure class="chart[^"]*" data-chart="([^"]+)"', page)
    assert {"revenue_orders", "retention", "cltv_holdout", "rfm_segment", "attribution", "ab_lift", "psi"} <= set(charts)
    assert {"churn_gains", "churn_calibration", "propensity_gains", "uplift_qini"} <= set(charts), "MLflow plots"
    markup = re.sub(r"<script\b[^>]*>.*?</script>", "", page, flags=re.S)  # Plotly's JS names its home page in strings
    assert "<script src" not in page and not re.search(r'(src|href)="(https?:)?//', markup) and "<link" not in markup \
        and "@import" not in markup, "nothing may be fetched from the network"
    assert {"linear_distinct", "shapley", "lift_p_adjusted", "mde", "verdict", "lift_variance_reduction"} <= set(
        re.findall(r"<th>([a-z_]+)</th>", markup)), "the honest names and the A/B statistics"
    assert "markov_incremental" in page and "champions" in page and "lifecycle_stage" in page


def _chromium() -> str:
    binary = next((b for b in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if b), None)
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium): the browser check needs a real browser")
    return binary


FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--disable-extensions",
         "--disable-background-networking")


def _browser(binary: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary, *FLAGS, *args], capture_output=True, text=True, timeout=120)


class DevTools(contextlib.ExitStack):
    """Headless Chromium driven over the Chrome DevTools protocol (a websocket to its one page); a context
    manager that ends the browser."""

    def __init__(self, binary: str, profile: Path):
        import httpx
        from websockets.sync.client import connect

        super().__init__()
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.callback(self._stop)
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            assert time.monotonic() < deadline and self.proc.poll() is None, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        page = next(t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page")
        self.ws, self.next_id, self.events = self.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None)), 0, []

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=120))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]
            self.events.append(message)

    def js(self, expression: str):
        """The value of a JS expression (promises awaited); fails on a JS exception."""
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def _stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def test_the_report_draws_in_a_real_browser(report, tmp_path):
    binary = _chromium()
    dom = _browser(binary, "--virtual-time-budget=5000", "--dump-dom", report.as_uri()).stdout
    for key in SECTIONS:
        assert f'<section id="{key}">' in dom, f"section {key} missing from the rendered page"
    total = int(re.search(r'data-charts="(\d+)"', dom).group(1))
    drawn = int(re.search(r'data-charts-drawn="(\d+)"', dom).group(1))
    assert total >= 15 and drawn == total, f"{drawn} of {total} charts drawn; not drawn: " \
        f"{re.findall(r'data-chart=.([a-z_]+). data-drawn=.no', dom)}"
    shot = tmp_path / "top.png"
    _browser(binary, "--window-size=1280,2400", f"--screenshot={shot}", report.as_uri())
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    inked = (pixels.min(axis=2) < 0.9).mean()  # share of pixels that are not (near) white
    assert pixels.std() > 0.1 and 0.05 < inked < 0.9, f"the screenshot looks blank ({inked:.1%} inked)"
    colours = {tuple(c) for c in np.round(pixels[::7, ::7] * 8).reshape(-1, 3).astype(int)}
    assert len(colours) > 30, "charts bring colour, a blank or text-only page does not"


def _select(chrome: DevTools, **values: str):
    """Set filters as a person would (a change event per select) and wait for the redraw."""
    sets = "".join(f"set('f-{k}', {json.dumps(v)});" for k, v in values.items())
    chrome.js("(() => { const set = (id, v) => { const s = document.getElementById(id); s.value = v; "
              f"s.dispatchEvent(new Event('change')); }}; {sets} return window.propelReady; }})()")


def test_filters_redraw_the_totals_that_duckdb_computes(report, champions, tmp_path):
    from propel.analytics.experiments import ab_tests

    with DevTools(_chromium(), tmp_path / "profile") as chrome:
        chrome.send("Network.enable")
        chrome.send("Runtime.enable")
        chrome.send("Page.navigate", url=report.as_uri())
        deadline = time.monotonic() + 60
        while chrome.js("typeof window.propelReady") != "object":
            assert time.monotonic() < deadline, "the page never started drawing"
            time.sleep(0.2)
        unfiltered = chrome.js("window.propelReady.then(() => window.propelCampaigns)")
        periods = chrome.js("Array.from(document.getElementById('f-from').options).map(o => o.value)")
        start, end = periods[1], periods[-2]
        _select(chrome, **{"from": start, "to": end, "tier": "tier 2", "channel": "web"})
        shown = chrome.js("Object.fromEntries(Array.from(document.querySelectorAll('[data-kpi]'))"
                          ".map(e => [e.dataset.kpi, Number(e.dataset.value)]))")
        assert json.loads(chrome.js("document.body.dataset.filters"))["tier"] == "tier 2"
        assert "tier=tier+2" in chrome.js("location.hash"), "the selection is kept in the URL"
        _select(chrome, channel="email")
        campaign_channels = {r["channel"] for r in chrome.js("window.propelCampaigns")}
        credited = chrome.js("Array.from(document.querySelectorAll('#attr-table tbody tr td:first-child')).map(t => t.textContent)")
        requested = {e["params"]["request"]["url"].split(":")[0] for e in chrome.events
                     if e.get("method") == "Network.requestWillBeSent"}
        errors = [e for e in chrome.events if e.get("method") == "Runtime.exceptionThrown"]
    con = Lake(champions).connect()
    orders, revenue, new = con.execute(f"""
        WITH o AS ({ORDERS})
        SELECT count(*), sum(revenue), count(*) FILTER (WHERE first_order) FROM o JOIN customers c USING (customer_id)
        WHERE c.city_tier = 2 AND o.channel = 'web'
          AND date_trunc('{period_for(con)}', o.ts) BETWEEN DATE '{start}' AND DATE '{end}'""").fetchone()
    assert orders > 0 and shown["orders"] == orders and shown["new_customers"] == new
    assert shown["revenue"] == pytest.approx(revenue, abs=1e-4 * orders), "re-added from cells rounded to 4 decimals"
    assert shown["aov"] == pytest.approx(revenue / orders, rel=1e-6)
    assert campaign_channels == {"email"} and credited == ["email"], "campaigns and attribution follow the filter"
    # unfiltered, the page's Newcombe intervals (JS) are statsmodels' (experiments.py) for every campaign
    expected = ab_tests(champions).query("level == 'campaign'").set_index("key")
    page = pd.DataFrame(unfiltered).set_index("campaign")
    assert len(page) == len(expected.dropna(subset=["lift"]))
    assert page["low"].to_numpy() == pytest.approx(expected.loc[page.index, "lift_low"].to_numpy(), abs=1e-9)
    assert page["high"].to_numpy() == pytest.approx(expected.loc[page.index, "lift_high"].to_numpy(), abs=1e-9)
    assert requested <= {"file", "data"}, f"the page fetched {requested}"
    assert not errors, errors[0]


def test_a_lake_without_campaigns_or_features_still_reports(ws, raw):
    from propel.analytics.report import render
    from propel.lake.ingest import ingest
    from tests.helpers import NOW, write

    write(raw, "customers.csv", "customer_id,signup_at\nC1,2025-01-01\nC2,2025-01-01")  # no city_tier column
    write(raw, "events.csv", "event_id,ts,customer_id,channel,event_type,revenue,quantity,session_id\n"
          "e1,2025-03-03T10:00:00Z,C1,web,page_view,,,s1\ne2,2025-03-03T10:01:00Z,C1,web,purchase,20,1,s1\n"
          "e3,2025-03-12T10:00:00Z,C2,app,purchase,5,1,s5")
    ingest(raw, ws, now=NOW)
    page = render(ws)
    facts = json.loads(re.search(r'<script type="application/json" id="facts">(.*?)</script>', page, re.S).group(1))
    assert facts["values"]["tier"] == ["(unknown)"] and sum(facts["kpi"]["revenue"]) == 25 and facts["kpi"]["orders"] == [1, 1]
    assert "no marketing touch to attribute" in page and 'id="f-segment"' in page
