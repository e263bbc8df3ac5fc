"""Packaging: every third-party module Propel imports is declared in pyproject.toml (not merely brought in by
Feast, MLflow or BentoML), the declared versions are the ones installed, and the CLI offers shell completion."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from typer.testing import CliRunner

from propel.cli import app

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# what an installed Propel may need: its dependencies and its runtime extras (dev is for the tests)
REQUIREMENTS = [Requirement(r) for r in PROJECT["dependencies"]] + [
    Requirement(r) for extra, reqs in PROJECT["optional-dependencies"].items() if extra != "dev" for r in reqs]


def _top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_third_party_import_is_declared():
    declared = {canonicalize_name(r.name) for r in REQUIREMENTS}
    distributions = packages_distributions()
    undeclared = {}
    for path in sorted((ROOT / "propel").rglob("*.py")):
        for name in _top_level_imports(path) - set(sys.stdlib_module_names) - {"propel", "__future__"}:
            # a namespace package (google) maps to several distributions: one of them must be declared
            if not {canonicalize_name(d) for d in distributions.get(name, [name])} & declared:
                undeclared.setdefault(name, str(path.relative_to(ROOT)))
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    assert {"sqlglot", "pyyaml", "ibis-framework", "protobuf", "starlette", "anyio", "prometheus-client"} <= declared


def test_declared_versions_are_the_installed_ones():
    wrong = {}
    for req in REQUIREMENTS:
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            continue  # an extra not installed here
        if not req.specifier.contains(installed, prereleases=True):
            wrong[str(req)] = installed
    assert not wrong, f"pins that the installed versions contradict: {wrong}"
    assert PROJECT["license"] == "Apache-2.0", "an SPDX string: setuptools warns about the table form"


def test_shell_completion_is_available():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and "--install-completion" in result.output
