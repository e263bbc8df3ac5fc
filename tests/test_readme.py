"""The README's claims a newcomer relies on, kept true: the layout table, the docs list, the make targets."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def table(heading: str) -> list[list[str]]:
    """The cells of the first table under `## heading`, header and rule lines left out."""
    section = README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])] for line in lines[2:]]


def paths(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_layout_table_names_paths_that_exist_and_every_part_of_propel():
    named = [p for row in table("Layout") for p in paths(row[0])]
    assert [p for p in named if not (ROOT / p).exists()] == []
    packages = {f"{p.parent.relative_to(ROOT)}/" for p in (ROOT / "propel").rglob("__init__.py")} - {"propel/"}
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "propel").glob("*.py")} - {"propel/__init__.py"}
    assert sorted((packages | modules) - set(named)) == []


def test_layout_table_maps_one_to_one_onto_the_pipeline_table():
    steps = [row[0] for row in table("The pipeline")]
    homes = [s.strip() for row in table("Layout") for s in row[1].split(",") if s.strip() not in ("", "every step")]
    assert sorted(homes) == sorted(steps), f"one layout row per pipeline step: {sorted(steps)} vs {sorted(homes)}"


def test_readme_lists_every_doc():
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"(docs/{p.name})" not in README]
    assert missing == []


def test_make_targets_in_the_readme_exist_and_make_help_lists_every_target():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-zA-Z_-]+):", makefile, re.MULTILINE))
    helped = set(re.findall(r"^([a-zA-Z_-]+):.*?## ", makefile, re.MULTILINE))  # the pattern `make help` greps for
    assert targets - helped == set(), "give every target a `## help` comment"
    named = set(re.findall(r"\bmake ([a-z][a-z-]*)", README))
    assert named - targets == set()
    assert {"test", "test-fast", "bench", "help"} <= named
