"""Model training, evaluation and the MLflow registry (features -> models)."""
