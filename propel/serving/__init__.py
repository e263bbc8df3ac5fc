"""BentoML service and batch scoring (models -> decisions)."""
