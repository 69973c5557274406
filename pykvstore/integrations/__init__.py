"""Serving-engine integrations: each module imports its engine only when used."""
