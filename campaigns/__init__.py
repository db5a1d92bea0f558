"""Disparo's domain: models, services, queries, rate limits, providers and views."""
