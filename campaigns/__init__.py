"""Disparo's domain: models, services, the sending engine, queues, rate limits, reads and views.

docs/architecture.md says which module holds what.
"""
