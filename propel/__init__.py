"""Propel: recommendation and prediction service for data-driven marketing."""

__version__ = "0.1.0"
