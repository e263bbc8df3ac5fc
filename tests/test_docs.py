"""Docs generated from code must be committed up to date (`make docs`)."""

from propel.docs import DOCS, SECTIONS, render


def test_generated_doc_sections_are_current():
    for doc, sections in SECTIONS.items():
        text = (DOCS / doc).read_text()
        assert render(text, sections) == text, f"docs/{doc} is stale: run `make docs`"
