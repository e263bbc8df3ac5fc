"""The Feast feature repo, split by object kind. `definitions(ws)` lists every object to apply.

Objects are built per workspace because their sources are files inside it. Feature schemas come
from `propel.features.definitions` (one place), CRM attributes from the built feature catalog.
"""

from __future__ import annotations

from propel.featurestore.repo.entities import customer, item
from propel.featurestore.repo.feature_services import feature_services
from propel.featurestore.repo.feature_views import feature_views, request_context
from propel.config import Workspace


def definitions(ws: Workspace) -> list:
    views = feature_views(ws)
    return [customer, item, *views.values(), request_context, *feature_services(views)]
