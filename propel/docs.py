"""Generated sections of the docs, so that docs and code cannot drift apart.

`python -m propel.docs` rewrites the text between `<!-- BEGIN name -->` and `<!-- END name -->`
markers in docs/*.md; tests fail when a committed doc differs from what this renders.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from propel.lake.schema import (
    BLOCKED_VALUE_PATTERN, EMAIL_PATTERN, IDENTITY_TYPE_ALIASES, IDENTITY_TYPES, MISSING_TOKENS, PHONE_PATTERN,
    PII_COLUMNS, PII_NAME_RE, TABLES,
)

DOCS = Path(__file__).resolve().parents[1] / "docs"


def contract_tables() -> str:
    out = []
    for table in TABLES.values():
        flags = []
        if table.passthrough:
            flags.append("extra columns flow through")
        if table.identified:
            flags.append("each row needs `customer_id` or `identity_type` + `identity_value`")
        if table.key:
            flags.append(f"latest load wins per `{', '.join(table.key)}`")
        out += [f"### `{table.name}`", "", table.doc + (f" ({'; '.join(flags)}.)" if flags else ""), "",
                "| column | type | required | allowed / rule | meaning |", "|---|---|---|---|---|"]
        for c in table.columns:
            rule = ", ".join(c.allowed) if c.allowed else (">= 0" if c.nonnegative else "")
            out.append(f"| `{c.name}` | {c.kind} | {'yes' if c.required else 'no'} | {rule} | {c.doc} |")
        out.append("")
    out += ["Identifier types, strongest first: " + ", ".join(f"`{t}`" for t in IDENTITY_TYPES) + ".", "",
            f"Placeholder identifier values (never link anyone, rows quarantined): `{BLOCKED_VALUE_PATTERN}`."]
    return "\n".join(out)


def value_rules() -> str:
    """The value forms ingestion accepts beyond the canonical ones, and the PII rules, from the code."""
    from propel.lake.ingest import COERCIONS, CURRENCY_RE

    kinds: dict[str, list[str]] = {}
    for kind, items in COERCIONS.items():
        for form, _ in items:
            kinds.setdefault(form, []).append(kind)
    forms = [f"`{form}` ({', '.join(k)})" for form, k in kinds.items()]
    aliases: dict[str, list[str]] = {}
    for alias, canonical in IDENTITY_TYPE_ALIASES.items():
        aliases.setdefault(canonical, []).append(f"`{alias}`")
    def cell(regex: str) -> str:  # a regex inside a Markdown table cell
        return "`" + regex.replace("|", "\\|") + "`"

    return "\n".join([
        "| rule | value |", "|---|---|",
        "| missing in typed columns (lower-cased, trimmed) | " + ", ".join(f"`{t}`" for t in MISSING_TOKENS if t) + ", and empty |",
        "| coercions counted per column | " + ", ".join(forms) + " |",
        f"| money (regex) | {cell(CURRENCY_RE)} |",
        *(f"| identity types read as `{t}` | {', '.join(a)} (after normalising like column names) |" for t, a in aliases.items()),
        "| PII column names | " + ", ".join(f"`{c}`" for c in sorted(PII_COLUMNS)) + f", and any name matching {cell(PII_NAME_RE.pattern)} |",
        f"| email by content (regex) | {cell(EMAIL_PATTERN)} |",
        f"| phone by content (regex, 10-15 digits, not a plain number) | {cell(PHONE_PATTERN)} |",
    ])


def feature_tables() -> str:
    from propel.features.definitions import (CUSTOMER_FEATURES, FEATURE_GROUPS, FEATURE_SERVICES, ITEM_FEATURES,
                                             REALTIME_FEATURES, SEGMENT_FEATURES, clock_features)

    clock = {f.name: f.counts_from for f in clock_features(CUSTOMER_FEATURES)}

    out = []
    for group, (view, description) in FEATURE_GROUPS.items():
        feats = [f for f in (*CUSTOMER_FEATURES, *ITEM_FEATURES, *SEGMENT_FEATURES, *REALTIME_FEATURES) if f.group == group]
        out += [f"### `{group}`", "", f"{description}. Feast view `{view}`.", ""]
        if not feats:
            out += ["Every extra column of the `customers` table (minus PII columns), with its type, discovered "
                    "when features are built; timestamp = signup (or first event).", ""]
            continue
        out += ["| feature | type | default | description |", "|---|---|---|---|"]
        out += [f"| `{f.name}` | {f.dtype} | {f.default.strip(chr(39))} | {f.description}"
                + (f" (counted at read time, view `customer_clock`{f'; stored: `{clock[f.name]}`' if clock[f.name] else ''})"
                   if f.name in clock else "") + " |" for f in feats]
        out.append("")
        if group == "customer_segments":
            out += segment_rules()
    out += ["### Feature services", "", "| service | feature groups |", "|---|---|"]
    out += [f"| `{name}` | {', '.join(f'`{g}`' for g in groups)} |" for name, groups in FEATURE_SERVICES.items()]
    return "\n".join(out)


def segment_rules() -> list[str]:
    """The segment rule tables, first match wins, with the settings' default values filled in."""
    from dataclasses import asdict

    from propel.features.definitions import SEGMENT_RULES
    from propel.config import AnalyticsSettings

    values = {k: f"{v} (analytics.{k})" for k, v in asdict(AnalyticsSettings()).items()}
    out = ["In the rules below (first match wins) R, F, M are the RFM scores, FM = (F + M) // 2 and `recency` is "
           "the days since the last purchase (since the last visit for someone who never bought).", ""]
    for feature, rules in SEGMENT_RULES.items():
        out += [f"`{feature}`:", "", "| value | rule | meaning |", "|---|---|---|"]
        out += [f"| `{v}` | `{c.format(**values)}` | {meaning} |" for v, c, meaning in rules]
        out.append("")
    return out


SECTIONS = {"data-contract.md": {"tables": contract_tables, "values": value_rules}, "features.md": {"features": feature_tables}}


def render(text: str, sections: dict) -> str:
    for name, fn in sections.items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"missing <!-- BEGIN {name} --> / <!-- END {name} --> markers")
        text = pattern.sub(lambda m: m.group(1) + fn() + "\n" + m.group(2), text)
    return text


def main() -> int:
    for doc, sections in SECTIONS.items():
        path = DOCS / doc
        path.write_text(render(path.read_text(), sections))
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
