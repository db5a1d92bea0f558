"""HTTP adapters, one blueprint per area: parse, call one service or query, render."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    from campaigns.views import auth, main

    app.register_blueprint(auth.bp)
    app.register_blueprint(main.bp)
