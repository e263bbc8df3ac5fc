"""Feast's private helpers that the fast online writer and reader use: looked up here, lazily, and only here.

A Feast release may rename or drop any of them. Nothing imports them at module import, so a missing one
breaks no command: `lookup` warns once and returns None, and the caller takes Feast's public path instead
(stock materialization, `FeatureStore.get_online_features`): slower, same answers.
"""

from __future__ import annotations

import functools
import importlib
import logging

log = logging.getLogger(__name__)

# name -> "module:attribute" in Feast 0.67
SYMBOLS = {
    "mmh3": "feast.infra.online_stores.helpers:_mmh3",  # Redis field of a feature
    "compute_table_id": "feast.infra.online_stores.helpers:compute_table_id",  # SQLite table of a view
    "extract_text_and_num": "feast.infra.online_stores.helpers:extract_text_and_num",  # SQLite value_text
    "coerce_datetime": "feast.utils:_coerce_datetime",  # event timestamps as Feast stores them
    "sqlite_db_path": "feast.infra.online_stores.sqlite:SqliteOnlineStore._get_db_path",
    "redis_client": "feast.infra.online_stores.redis:RedisOnlineStore._get_client",
    "provider": "feast.feature_store:FeatureStore._get_provider",  # the store's online store object
}
WRITER = ("mmh3", "compute_table_id", "extract_text_and_num", "coerce_datetime", "sqlite_db_path", "redis_client")
READER = ("mmh3", "compute_table_id", "sqlite_db_path", "redis_client", "provider")


@functools.cache
def lookup(name: str):
    """The symbol, or None (warned once per symbol) when this Feast lacks it."""
    module, _, path = SYMBOLS[name].partition(":")
    try:
        obj = importlib.import_module(module)
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError) as exc:
        from feast import __version__

        log.warning("Feast %s has no %s (%s): Propel uses Feast's public API instead (slower, same results)",
                    __version__, SYMBOLS[name], exc)
        return None


def missing(names: tuple[str, ...]) -> list[str]:
    return [n for n in names if lookup(n) is None]
