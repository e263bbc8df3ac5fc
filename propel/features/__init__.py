"""Ingestion, identity resolution and feature computation (raw -> lake -> features)."""
