"""The raw-data contract: every input table, its columns, types and allowed values.

This module is the one place the contract lives. Ingestion enforces it, the generator writes it,
and `docs/data-contract.md` describes it (a test keeps the two in step).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Identifier types, strongest first. The order is the priority used by identity resolution:
# a person's id comes from the strongest identifier they have, and only the "proof" types may
# merge two known customers into one.
IDENTITY_TYPES: tuple[str, ...] = ("customer_id", "member_id", "email", "phone", "device_id", "cookie_id")
PROOF_TYPES: frozenset[str] = frozenset({"customer_id", "member_id", "email", "phone"})
PII_TYPES: frozenset[str] = frozenset({"email", "phone"})
# Column names that carry PII wherever they appear (e.g. in a wide CRM table); hashed at ingest.
PII_COLUMNS: frozenset[str] = frozenset(
    {"email", "email_address", "phone", "phone_number", "mobile", "mobile_number", "msisdn"}
)
# ... and any (normalised) name ending in a PII word: `contact_email`, `telephone`, `home_phone`;
# not `email_consent` or `phone_verified`, which hold flags.
PII_NAME_RE = re.compile(r"(^|_)(e_?mail|email_address|phone|phone_num|phone_number|telephone|tel|mobile|"
                         r"mobile_number|cell|cellphone|cell_phone|msisdn|fax)$")
# Identifier types written other ways (normalised like column names), read as the canonical type.
IDENTITY_TYPE_ALIASES: dict[str, str] = {
    **dict.fromkeys(("e_mail", "mail", "email_address", "emailaddress"), "email"),
    **dict.fromkeys(("phone_num", "phone_number", "telephone", "tel", "mobile", "mobile_number", "msisdn", "cell",
                     "cellphone", "cell_phone"), "phone"),
}
# Values that are PII whatever their column or type is called: hashed at ingest. A phone is 10-15
# digits written with a leading `+` or separators; a bare run of digits is a number, not a phone.
EMAIL_PATTERN = r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
PHONE_PATTERN = r"\+?\(?[0-9][0-9 ().-]{6,}[0-9]"
# Cell values read as missing in typed (number, date, flag) columns, compared lower-case and trimmed.
MISSING_TOKENS: tuple[str, ...] = ("", "na", "n/a", "null", "none", "nan", "-")

CHANNELS: tuple[str, ...] = (
    "web", "app", "store", "email", "sms", "push", "social", "search", "display", "affiliate", "call_center",
)
EVENT_TYPES: tuple[str, ...] = (
    "page_view", "product_view", "search", "add_to_cart", "remove_from_cart", "checkout", "purchase",
    "refund", "login", "signup", "email_open", "email_click", "sms_click", "push_open", "ad_click",
    "social_click", "recommendation_click",
)
# Events a bot burst consists of: fast, cheap interactions. Purchases are never flagged as bots.
CLICK_EVENT_TYPES: frozenset[str] = frozenset(
    {"page_view", "product_view", "search", "add_to_cart", "email_click", "sms_click", "ad_click",
     "social_click", "recommendation_click"}
)
TOUCH_GROUPS: tuple[str, ...] = ("treatment", "control")
LABEL_TASKS: tuple[str, ...] = ("churn", "response")


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # id | timestamp | float | int | bool | category | string
    required: bool = True
    doc: str = ""
    allowed: tuple[str, ...] | None = None  # for category columns (compared lower-case)
    nonnegative: bool = False
    default: str | None = None  # SQL literal used when the value is missing


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    doc: str
    key: tuple[str, ...] = ()  # the latest load wins for rows with the same key
    passthrough: bool = False  # extra columns flow through untouched (CRM attributes)
    identified: bool = False  # rows name a person by identity_type/identity_value or customer_id

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]


def _identity_columns() -> tuple[Column, ...]:
    return (
        Column("identity_type", "category", False, "type of the identifier (or use customer_id)", IDENTITY_TYPES),
        Column("identity_value", "id", False, "the identifier; phone/email are hashed at ingest"),
        Column("customer_id", "id", False, "known customer id, instead of identity_type/identity_value"),
    )


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "customers",
            (
                Column("customer_id", "id", doc="the business's own customer id; kept as the person's id"),
                Column("signup_at", "timestamp", doc="when the customer registered"),
                Column("marketing_consent", "bool", False, "may we market to them (missing = not given: never exported for contact)"),
            ),
            "CRM records, one per customer; any extra attribute columns flow through to features.",
            key=("customer_id",),
            passthrough=True,
        ),
        Table(
            "identities",
            (
                Column("identity_type", "category", allowed=IDENTITY_TYPES, doc="type of the first identifier"),
                Column("identity_value", "id", doc="first identifier"),
                Column("linked_type", "category", allowed=IDENTITY_TYPES, doc="type of the second identifier"),
                Column("linked_value", "id", doc="second identifier"),
                Column("observed_at", "timestamp", doc="when the link was seen (a login, a card scan)"),
            ),
            "Observed links between two identifiers of one person.",
        ),
        Table(
            "events",
            (
                Column("event_id", "id", doc="unique event id; duplicates are removed"),
                Column("ts", "timestamp", doc="event time; offsets honoured, no offset means UTC"),
                *_identity_columns(),
                Column("channel", "category", allowed=CHANNELS, doc="where it happened"),
                Column("event_type", "category", allowed=EVENT_TYPES, doc="what happened"),
                Column("item_id", "id", False, "product involved"),
                Column("quantity", "float", False, "units (purchases)", nonnegative=True),
                Column("revenue", "float", False, "money (purchases)", nonnegative=True),
                Column("campaign_id", "id", False, "campaign that caused it (email/sms clicks)"),
                Column("session_id", "id", False, "session; ids seen in one session are linked"),
                Column("recommendation_id", "id", False, "id of a served recommendation this event follows"),
            ),
            "Behaviour across channels. Unknown extra columns are kept as JSON in `extra`.",
            identified=True,
        ),
        Table(
            "items",
            (
                Column("item_id", "id", doc="product id"),
                Column("category", "string", doc="product category"),
                Column("brand", "string", False, "brand"),
                Column("price", "float", False, "list price", nonnegative=True),
            ),
            "The catalogue; extra attribute columns flow through.",
            key=("item_id",),
            passthrough=True,
        ),
        Table(
            "campaigns",
            (
                Column("campaign_id", "id", doc="campaign id"),
                Column("channel", "category", allowed=CHANNELS, doc="channel it is sent on"),
                Column("start_at", "timestamp", doc="first send"),
                Column("end_at", "timestamp", doc="last day it counts"),
                Column("cost", "float", doc="total cost", nonnegative=True),
                Column("offer_type", "string", False, "discount, free shipping, ..."),
            ),
            "Marketing campaigns.",
            key=("campaign_id",),
        ),
        Table(
            "campaign_touches",
            (
                Column("campaign_id", "id", doc="campaign"),
                *_identity_columns(),
                Column("sent_at", "timestamp", doc="when it was sent (or would have been, for control)"),
                Column("group", "category", allowed=TOUCH_GROUPS, doc="treatment, or control = held out"),
            ),
            "Who was targeted by a campaign; control rows were randomly held out and not contacted.",
            identified=True,
        ),
        Table(
            "labels",
            (
                Column("customer_id", "id", doc="customer"),
                Column("as_of", "timestamp", doc="the moment the label refers to"),
                Column("task", "category", allowed=LABEL_TASKS, doc="churn or response"),
                Column("label", "int", doc="0 or 1", allowed=("0", "1")),
            ),
            "Optional explicit labels (e.g. contract cancellations), used instead of derived ones.",
            key=("customer_id", "as_of", "task"),
        ),
    )
}

# Longest names first so that `campaign_touches_2024.csv` is not read as `campaigns`.
_TABLE_ORDER = sorted(TABLES, key=len, reverse=True)
RAW_SUFFIXES = (".csv", ".csv.gz", ".parquet")
# Identifier values that must never link anyone (placeholders, test values).
BLOCKED_VALUE_PATTERN = r"^\s*$|^(0+|-1|null|none|nan|n/?a|unknown|anonymous|undefined|test|guest|x+)$"


def table_for_file(file_name: str) -> str | None:
    """The table a raw file belongs to, by its name prefix (`events_2024-01.csv` -> events)."""
    stem = file_name.lower()
    if not stem.endswith(RAW_SUFFIXES):
        return None
    return next((t for t in _TABLE_ORDER if stem.startswith(t)), None)


def pii_kind(column: str) -> str | None:
    """'email' or 'phone' when a (normalised) column name says it holds one."""
    if column not in PII_COLUMNS and not PII_NAME_RE.search(column):
        return None
    return "email" if "mail" in column else "phone"


def normalize_column(name: str) -> str:
    """Case/space tolerant column names: ' Customer ID ' -> 'customer_id'."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")



def quote_ident(name: str) -> str:
    """A SQL identifier, quoted for DuckDB and SQLite alike (any column name a user's file brings)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A SQL string literal, quoted for DuckDB and SQLite alike."""
    return "'" + text.replace("'", "''") + "'"


def check_settings(settings) -> None:
    """Settings that name identifier or event types must use the contract's (`propel.config` cannot import
    the contract, so the CLI checks a workspace's settings here before any command runs)."""
    for name in ("per_person", "max_links"):
        unknown = set(getattr(settings.identity, name)) - set(IDENTITY_TYPES)
        if unknown:
            raise ValueError(f"identity.{name}: unknown identifier types {sorted(unknown)}; use {list(IDENTITY_TYPES)}")
    rec = settings.recommend
    unknown = (set(rec.event_weights) | set(rec.relevant_events)) - set(EVENT_TYPES)
    if unknown:
        raise ValueError(f"recommend: unknown event types {sorted(unknown)} in event_weights/relevant_events; "
                         f"use {list(EVENT_TYPES)}")
