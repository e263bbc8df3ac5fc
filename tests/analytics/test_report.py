"""The HTML report: every section computed, self-contained, and drawn by a real browser (headless Chromium)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from propel.analytics.report import SECTIONS
from propel.cli import app

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
    charts = re.findall(r'<figure class="chart" data-chart="([^"]+)"', page)
    assert {"revenue_orders", "retention", "cltv_holdout", "rfm_segment", "attribution", "ab_lift", "psi"} <= set(charts)
    assert {"churn_gains", "churn_calibration", "propensity_gains", "uplift_qini"} <= set(charts), "MLflow plots"
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<link" not in page and "@import" not in page, \
        "nothing may be fetched from the network"
    assert "markov_incremental" in page and "champions" in page and "lifecycle_stage" in page


def _chromium() -> str:
    binary = next((b for b in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if b), None)
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium): the browser check needs a real browser")
    return binary


def _browser(binary: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--disable-extensions", *args], capture_output=True, text=True, timeout=120)


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
