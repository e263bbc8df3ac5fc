"""One feature service per model, versioned (`churn_v1`): training and serving ask for it by name."""

from __future__ import annotations

from feast import FeatureService, FeatureView

from propel.featurestore.repo.feature_views import CLOCK_VIEW, request_context
from propel.features.definitions import FEATURE_GROUPS, FEATURE_SERVICES, clock_features, view_features

WITH_REQUEST_CONTEXT = {"propensity_v1"}


def feature_services(views: dict[str, FeatureView]) -> list[FeatureService]:
    """Each service's groups as projections of the views holding them (a whole view when every feature is in);
    the customer features that move with the clock come from the on-demand view `customer_clock`.
    Groups whose view this workspace lacks (no CRM attributes, segments not built yet) are left out; a
    service with none of its views is not registered."""
    clock = {f.name for f in clock_features(view_features("customer_features"))}
    services = []
    for name, all_groups in FEATURE_SERVICES.items():
        groups = [g for g in all_groups if FEATURE_GROUPS[g][0] in views]
        names = {FEATURE_GROUPS[g][0] for g in groups}
        if not names:
            continue
        picked = {f.name for v in names for f in view_features(v) if f.group in groups}
        projections = [views[v] if not view_features(v) or picked >= {f.name for f in views[v].features}
                       else views[v][[f.name for f in views[v].features if f.name in picked]]
                       for v in dict.fromkeys(FEATURE_GROUPS[g][0] for g in groups)]
        timed = [n for n in (f.name for f in views[CLOCK_VIEW].features) if n in picked & clock]
        services.append(FeatureService(name=name, features=projections
                                       + ([views[CLOCK_VIEW][timed]] if timed else [])
                                       + ([request_context] if name in WITH_REQUEST_CONTEXT else [])))
    return services
