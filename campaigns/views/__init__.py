"""HTTP adapters, one blueprint per area: parse, call one service or query, render."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    from app import csrf
    from campaigns.views import (
        api,
        auth,
        campaigns,
        filters,
        main,
        notifications,
        queue,
        senders,
        suppressions,
        templates,
        users,
        webhooks,
    )

    filters.init_app(app)
    app.register_blueprint(auth.bp)
    app.register_blueprint(main.bp)
    app.register_blueprint(notifications.bp)
    if app.config["MOCKS_ENABLED"]:
        import mocks  # imported only here: production never loads the mocks (nor numpy)

        mocks.init_app(app)
    app.register_blueprint(campaigns.bp)
    app.register_blueprint(templates.bp)
    app.register_blueprint(senders.bp)
    app.register_blueprint(suppressions.bp)
    app.register_blueprint(users.bp)
    app.register_blueprint(queue.bp)
    # Token-authenticated: no cookie session, so no CSRF to guard against.
    csrf.exempt(api.bp)
    app.register_blueprint(api.bp)
    # Signed by WhatsApp (X-Hub-Signature-256), not by a browser session.
    csrf.exempt(webhooks.bp)
    app.register_blueprint(webhooks.bp)
