"""Stand-ins for the outside systems, for development, tests and benchmarks: never loaded in
production.

``erp`` serves a deterministic customer base over HTTP as a real ERP would;
``whatsapp`` answers the Cloud API's send endpoint and posts signed status
webhooks back (its job: ``tasks``; its tables: ``models``), ``waba_templates``
its template listing and ``whatsapp_media`` its Media API; ``provider`` is the
sender-side client that talks to it. :func:`init_app` mounts them when
``MOCKS_ENABLED`` (on by default in development), and ``jobs.app`` registers the
mock's task only then.
"""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Mount the mock ERP and the mock WhatsApp (remote systems' APIs: no CSRF, no login)."""
    from app import csrf
    from mocks import erp, waba_templates, whatsapp, whatsapp_media

    # Imported for their routes on that blueprint.
    assert waba_templates.bp is whatsapp.bp and whatsapp_media.bp is whatsapp.bp

    # Called by our own workers and by the mock's poster, never from a form.
    for blueprint in (erp.bp, whatsapp.bp):
        csrf.exempt(blueprint)
        app.register_blueprint(blueprint)
    # The …0429 numbers' tries, counted per app (each test's app starts from none).
    app.extensions[whatsapp.TRIES_EXTENSION] = whatsapp.ThrottleTries()
    # And the sends the throughput cap has seen (MOCK_WHATSAPP_THROUGHPUT_CAP).
    app.extensions[whatsapp.CAP_EXTENSION] = whatsapp.ThroughputCap()
