"""HTTP adapters, one blueprint per area: parse, call one service or query, render."""

from __future__ import annotations

from flask import Flask
from werkzeug.routing import IntegerConverter

from campaigns.validation import BIGINT_MAX, INTEGER_MAX


class IdConverter(IntegerConverter):
    """``<int:…>`` in a route: an id of an integer key.

    A larger number reaching the database is refused as out of range: a 500 for what
    is only an id that does not exist. No row can have it, so it becomes 0, which no
    row has either (ids start at 1), and the view answers 404 as for any unknown id.
    (Refusing it here instead would make werkzeug answer 405 on a path that another
    method's route shares.)
    """

    largest = INTEGER_MAX

    def to_python(self, value: str) -> int:
        number = int(value)
        return number if number <= self.largest else 0


class BigIdConverter(IdConverter):
    """``<bigint:…>``: an id of a bigint key."""

    largest = BIGINT_MAX


def init_app(app: Flask) -> None:
    # Before any blueprint: a rule finds its converter when it is added.
    app.url_map.converters["int"] = IdConverter
    app.url_map.converters["bigint"] = BigIdConverter
    from app import csrf
    from campaigns.views import (
        api,
        audiences,
        audit,
        auth,
        campaigns,
        docs,
        filters,
        links,
        main,
        media,
        metrics,
        notifications,
        queue,
        senders,
        settings,
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
    app.register_blueprint(media.bp)
    app.register_blueprint(audiences.bp)
    app.register_blueprint(senders.bp)
    app.register_blueprint(suppressions.bp)
    app.register_blueprint(users.bp)
    app.register_blueprint(queue.bp)
    app.register_blueprint(audit.bp)
    app.register_blueprint(settings.bp)
    app.register_blueprint(links.bp)  # public: a recipient's tap on a tracked link
    # Token-authenticated: no cookie session, so no CSRF to guard against.
    csrf.exempt(api.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(docs.bp)  # public: the API's document and its docs page
    # Signed by WhatsApp (X-Hub-Signature-256), not by a browser session.
    csrf.exempt(webhooks.bp)
    app.register_blueprint(webhooks.bp)
    # Read by Prometheus with a bearer token (views/metrics.py): GET only, no session.
    app.register_blueprint(metrics.bp)
