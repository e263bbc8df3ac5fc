"""One feature service per model, versioned (`churn_v1`): training and serving ask for it by name."""

from __future__ import annotations

from feast import FeatureService, FeatureView

from feature_repo.feature_views import request_context
from features.definitions import FEATURE_SERVICES

WITH_REQUEST_CONTEXT = {"propensity_v1", "recommender_v1"}


def feature_services(views: dict[str, FeatureView]) -> list[FeatureService]:
    return [FeatureService(name=name, features=[views[v] for v in view_names]
                           + ([request_context] if name in WITH_REQUEST_CONTEXT else []))
            for name, view_names in FEATURE_SERVICES.items() if all(v in views for v in view_names)]
