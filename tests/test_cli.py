"""The CLI: help everywhere, clear errors with exit code 2 instead of tracebacks, summaries."""

from __future__ import annotations

import click
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from propel.cli import app
from tests.helpers import write

runner = CliRunner()


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


@pytest.mark.parametrize("path", list(_commands(get_command(app))))
def test_every_command_has_help(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_missing_column_is_a_clear_error(tmp_path, raw):
    write(raw, "customers.csv", "customer_id\nC1")
    result = runner.invoke(app, ["--workspace", str(tmp_path / "ws"), "ingest", str(raw)])
    assert result.exit_code == 2
    assert "customers.csv: missing required column 'signup_at'" in result.output
    assert "Traceback" not in result.output


def test_features_before_ingest_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["--workspace", str(tmp_path / "ws"), "features", "build"])
    assert result.exit_code == 2 and "Run `propel ingest RAW_DIR` first" in result.output


def test_ingest_prints_counts_and_summary(tmp_path, raw):
    write(raw, "customers.csv", "customer_id,signup_at\nC1,2025-01-01\nC2,bad")
    result = runner.invoke(app, ["--workspace", str(tmp_path / "ws"), "ingest", str(raw), "--now", "2025-06-01"])
    assert result.exit_code == 0, result.output
    assert "load L000001: accepted customers 1/2" in result.output and "quarantined 1" in result.output


def test_out_of_memory_is_a_clear_error(tmp_path, generated):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "propel.toml").write_text('duckdb_memory_limit = "2MB"\n')
    result = runner.invoke(app, ["--workspace", str(ws), "ingest", str(generated)])
    assert result.exit_code == 2, result.output
    assert "ran out of its 2MB working memory" in result.output and "duckdb_memory_limit" in result.output
    assert "Traceback" not in result.output
