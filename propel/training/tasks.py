"""The tasks Propel trains and serves, each with the Feast feature service its model reads (one home for both)."""

SERVICES = {"churn": "churn_v1", "propensity": "propensity_v1", "uplift": "propensity_v1"}  # task -> feature service
SCORE_TASKS = tuple(SERVICES)  # scored per customer: probability, decile, reasons
RECOMMENDER = "recommender"  # learns from the lake's item events, not a feature service
TASKS = (*SCORE_TASKS, RECOMMENDER)  # everything `propel train` knows
