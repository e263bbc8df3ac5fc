"""Values as real CRM exports write them: booleans as yes/no, Y/N, 1/0; dates as YYYYMMDD; currency
strings; empty strings and NA for missing; numbers stored as text with blank cells; codes with leading
zeros. Ingest reads them and says, per column, what it coerced."""

from __future__ import annotations

import pandas as pd

from propel.lake.ingest import ingest
from tests.helpers import NOW, lake_frame


def test_crm_export_values_are_coerced_and_logged_per_column(ws, raw):
    # Parquet with every cell a string, as a CRM export to Parquet writes them (empty string = missing).
    pd.DataFrame({
        "customer_id": ["C1", "C2", "C3", "C4", "C5"],
        "signup_at": ["20250101", "2025-01-02", "20250103", "2025-01-04T08:00:00Z", "20250105"],
        "marketing_consent": ["yes", "N", "1", "0", ""],
        "is_vip": ["Y", "n", "yes", "no", "y"],
        "birth_date": ["19800105", "19751231", "", "20000101", "19991111"],
        "income": ["$1,234.50", "€12", "", "1,000", "12.5 USD"],
        "score": ["7", "", "NA", "3", " "],
        "zip": ["00501", "02134", "90210", "10001", "00123"],
        "notes": ["", "n/a", "hello", "x", "y"],
    }).to_parquet(raw / "customers.parquet", index=False)
    report = ingest(raw, ws, now=NOW)
    c = lake_frame(ws, "SELECT * FROM customers ORDER BY customer_id")
    types = dict(lake_frame(ws, "DESCRIBE customers")[["column_name", "column_type"]].values)
    assert {k: types[k] for k in ("signup_at", "marketing_consent", "is_vip", "birth_date", "income", "score", "zip", "notes")} == {
        "signup_at": "TIMESTAMP", "marketing_consent": "BOOLEAN", "is_vip": "BOOLEAN", "birth_date": "TIMESTAMP",
        "income": "DOUBLE", "score": "BIGINT", "zip": "VARCHAR", "notes": "VARCHAR"}
    assert c["signup_at"].astype(str).tolist() == ["2025-01-01 00:00:00", "2025-01-02 00:00:00", "2025-01-03 00:00:00",
                                                   "2025-01-04 08:00:00", "2025-01-05 00:00:00"]
    assert c["marketing_consent"].tolist()[:4] == [True, False, True, False] and pd.isna(c["marketing_consent"][4])
    assert c["is_vip"].tolist() == [True, False, True, False, True]
    assert c["birth_date"].astype(str).tolist() == ["1980-01-05", "1975-12-31", "NaT", "2000-01-01", "1999-11-11"]
    assert c["income"].fillna(-1).tolist() == [1234.5, 12.0, -1, 1000.0, 12.5]
    assert c["score"].fillna(-1).tolist() == [7, -1, -1, 3, -1]
    assert c["zip"].tolist() == ["00501", "02134", "90210", "10001", "00123"], "codes keep their leading zeros"
    assert c["notes"].tolist()[:3] == [None, "n/a", "hello"], "in a text column only an empty string is missing"

    coerced = report.tables["customers"].coercions
    assert coerced["signup_at"] == {"as": "TIMESTAMP", "YYYYMMDD": 3}
    assert coerced["marketing_consent"] == {"as": "BOOLEAN", "yes/no": 2, "1/0": 2, "empty or NA read as missing": 1}
    assert coerced["is_vip"] == {"as": "BOOLEAN", "yes/no": 5}
    assert coerced["birth_date"] == {"as": "TIMESTAMP", "YYYYMMDD": 4, "empty or NA read as missing": 1}
    assert coerced["income"] == {"as": "DOUBLE", "currency or thousands separators": 4, "empty or NA read as missing": 1}
    assert coerced["score"] == {"as": "BIGINT", "empty or NA read as missing": 3}
    assert coerced["zip"] == {"as": "VARCHAR", "digit codes kept as text (leading zeros)": 3}
    assert report.tables["customers"].quarantined == 0


def test_contract_numbers_accept_currency_and_bad_ones_are_quarantined(ws, raw):
    (raw / "items.csv").write_text('item_id,category,price\nI1,shoes,"$1,299.00"\nI2,shoes,12,50\nI3,hats,EUR 5\nI4,hats,\n')
    report = ingest(raw, ws, now=NOW)
    items = lake_frame(ws, "SELECT item_id, price FROM items ORDER BY 1")
    assert items.fillna(-1).values.tolist() == [["I1", 1299.0], ["I3", 5.0], ["I4", -1]]
    assert report.tables["items"].reasons == {"malformed_row": 1}, "an unquoted decimal comma splits the row"
    assert report.tables["items"].coercions["price"] == {"as": "DOUBLE", "currency or thousands separators": 2}
