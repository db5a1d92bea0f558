"""Disparo's application factory. Importing this module creates extension objects only.

``flask --app app …`` and gunicorn's ``"app:create_app()"`` both call
:func:`create_app`; nothing here connects to a database until then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from flask import Flask
from flask_htmx import HTMX
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_sqlalchemy.session import Session as FlaskSession
from flask_wtf import CSRFProtect
from sqlalchemy import CursorResult, Executable, MetaData, delete, func, select
from sqlalchemy.orm import DeclarativeBase, Session, scoped_session


class Base(DeclarativeBase):
    # Stable constraint names, so Alembic can drop and rename what it created.
    metadata = MetaData(
        naming_convention={
            "ix": "%(table_name)s_%(column_0_N_name)s_idx",
            "uq": "%(table_name)s_%(column_0_N_name)s_key",
            "ck": "%(table_name)s_%(constraint_name)s_check",
            "fk": "%(table_name)s_%(column_0_name)s_fkey",
            "pk": "%(table_name)s_pkey",
        }
    )


db = SQLAlchemy(model_class=Base)
# The models' base class. db.Model is made at run time from Base, and a type checker
# cannot subclass an attribute, so it is told Base, whose typing db.Model shares.
if TYPE_CHECKING:
    Model = Base
else:
    Model = db.Model
# What a function given a session accepts: a Session, or the scoped ``db.session``
# (scoped_session is invariant, and db.session scopes Flask-SQLAlchemy's Session).
AnySession = Session | scoped_session[Session] | scoped_session[FlaskSession]


def rows_changed(session: AnySession, statement: Executable) -> int:
    """Run an UPDATE or DELETE without RETURNING; how many rows it changed."""
    # Such a statement returns a CursorResult, which counts the rows; Session.execute
    # is typed to return a plain Result.
    return cast("CursorResult[Any]", session.execute(statement)).rowcount


# Maintenance deletes at most this many rows of a kind a run (every 2 minutes), so a
# backlog (the first run after an upgrade, an attack) is cleared over several short
# transactions rather than one long one.
DELETE_BATCH = 10_000


def delete_oldest(
    session: AnySession,
    model: Any,
    at: Any,
    older_than: Any,
    batch: int = DELETE_BATCH,
) -> int:
    """Delete up to ``batch`` rows of ``model`` whose ``at`` column is before ``now() -
    older_than``, oldest first; how many. The caller commits."""
    oldest = select(model.id).where(at < func.now() - older_than).order_by(at).limit(batch)
    return rows_changed(session, delete(model).where(model.id.in_(oldest)))


migrate = Migrate()
login_manager = LoginManager()
csrf = CSRFProtect()
htmx = HTMX()


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the Flask app: settings from the environment, extensions, blueprints."""
    from campaigns import error_reporting, logs
    from campaigns.config import PROJECT_ROOT, load_settings

    # 12-factor: log to stdout only (LOG_FORMAT: text or json); gunicorn and honcho
    # collect it. Error reporting starts before anything can fail.
    logs.configure()
    error_reporting.init()
    app = Flask(__name__, instance_path=str(PROJECT_ROOT / "instance"))
    app.config.from_mapping(load_settings().flask_config())
    if test_config:
        app.config.update(test_config)

    db.init_app(app)
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"))
    csrf.init_app(app)
    htmx.init_app(app)

    from campaigns import auth, cli, edge, errors, i18n, request_id, security, views

    security.init_app(app)
    request_id.init_app(app)  # after ProxyFix: the outermost layer, around every response
    i18n.init_app(app)
    auth.init_app(app)
    edge.init_app(app)  # after auth: who may ask is decided before what was asked is read
    errors.init_app(app)
    views.init_app(app)
    cli.init_app(app)
    return app
