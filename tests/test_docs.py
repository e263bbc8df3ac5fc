"""Docs generated from code or records must be committed up to date (`make docs`, `python bench/report.py`)."""

import copy

from bench import report
from propel.docs import DOCS, SECTIONS, render


def test_generated_doc_sections_are_current():
    for doc, sections in SECTIONS.items():
        text = (DOCS / doc).read_text()
        assert render(text, sections) == text, f"docs/{doc} is stale: run `make docs`"


def test_benchmarks_doc_is_what_the_reference_records_render():
    text = report.DOC.read_text()
    assert report.render(report.load(), text) == text, "docs/benchmarks.md is stale: run `python bench/report.py`"


def test_reference_records_of_bench_rows_describe_them_as_the_bench_does():
    """A row `make bench` measures keeps the bench's wording and target, so a run replaces it in place."""
    metrics = {m.key: m for m in report.METRICS}
    recs = report.load()
    assert all(set(r) == set(report.FIELDS) and r["stage"] in report.STAGES for r in recs)
    assert len({r["key"] for r in recs}) == len(recs)
    drifted = [r["key"] for r in recs if r["key"] in metrics
               and (r["stage"], r["what"], r["target"]) != (metrics[r["key"]].stage, metrics[r["key"]].what,
                                                            metrics[r["key"]].target)]
    assert drifted == []
    assert set(metrics) <= {r["key"] for r in recs}, "every row the bench measures has a reference figure"


def test_a_bench_run_replaces_its_rows_newest_first_and_the_tables_show_it():
    machine = {"cores": 8, "memory_gib": 31.2, "cpu": "Some CPU", "virtualised": False, "python": "3.11.9"}
    wrk = {"p50_ms": 1.0, "p95_ms": 2.0, "max_ms": 9.0, "non_2xx": 0, "socket_errors": 0}
    run = {"when": "2030-01-02T03:04:05+00:00", "machine": machine, "rows": [
        {"stage": "ingest-10m ingest", "seconds": 71.234, "peak_rss_gib": 3.2, "events": 9_288_915,
         "events_per_s": 130_400},
        {"stage": "features-1m materialize sqlite", "seconds": 150.0, "peak_rss_gib": 2.9, "entities": 1_500_000},
        *[{"stage": f"serve /recommend c={c}", "rps": rps, "p99_ms": p99, **wrk}
          for c, rps, p99 in ((1, 1500, 1.5), (8, 2500, 7.25), (32, 900, 30.0))],
        {"stage": "not a row of the reference", "seconds": 1.0, "peak_rss_gib": 0.1}]}
    new = {r["key"]: r for r in report.records(run)}
    assert set(new) == {"ingest-10m ingest", "features-1m materialize sqlite", "serve /recommend closed loop"}
    ingest = new["ingest-10m ingest"]
    assert (ingest["figure"], ingest["met"]) == ("71.2 s (130k events/s), peak 3.20 GiB", "no (time)")
    assert (ingest["date"], ingest["machine"]) == ("2030-01-02", "8 cores (Some CPU), 31.2 GiB")
    assert ingest["command"] == "`BENCH=ingest-10m make bench`"
    assert new["features-1m materialize sqlite"]["figure"].startswith("150 s for 1.50M entities = 100 s per 1M")
    assert new["features-1m materialize sqlite"]["met"] == "yes"
    assert new["serve /recommend closed loop"]["figure"] == "RPS 1,500 / 2,500 / 900; p99 1.50 / 7.25 / 30.0 ms; 0 errors"
    assert new["serve /recommend closed loop"]["met"] == "no (RPS)"

    old = report.load()
    merged = report.merge(old, list(new.values()))
    assert [r["key"] for r in merged] == [r["key"] for r in old]  # rows keep their place
    assert {r["key"]: r for r in merged}["ingest-10m ingest"] == ingest
    stale = copy.deepcopy(ingest) | {"date": "2001-01-01", "figure": "1 s"}
    assert report.merge(merged, [stale]) == merged  # an older figure never replaces a newer one

    text = report.render(merged, report.DOC.read_text())
    assert "| 71.2 s (130k events/s), peak 3.20 GiB | no (time) | 2030-01-02 | 8 cores (Some CPU), 31.2 GiB |" in text
    assert "33.1 / 50.6 / 44.8 s" not in text
    assert text.count("| ingest ~9.3M events") == 1
