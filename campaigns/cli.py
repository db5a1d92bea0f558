"""``flask`` commands: user management, the demo data, the rotation of stored secrets and
the erasure of a person's data; the job queue's are in ``queue_cli.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from app import db
from campaigns import encryption
from campaigns.config import INSTANCE_PATH
from campaigns.i18n import _, format_number
from campaigns.labels import label
from campaigns.models import Role
from campaigns.queue_cli import queue_cli
from campaigns.services import ServiceError, demo, personal_data
from campaigns.services.users import create_api_token, create_user

users_cli = AppGroup("users", help="Manage users.")
secrets_cli = AppGroup("secrets", help="Manage the secrets stored encrypted.")
data_cli = AppGroup("data", help="Personal data (LGPD).")
DEMO_CREDENTIALS = INSTANCE_PATH / "demo-admin.txt"


@users_cli.command("create")
@click.argument("email")
@click.option(
    "--role",
    type=click.Choice([role.value for role in Role]),
    default=Role.VIEWER.value,
    show_default=True,
)
@click.option("--api-token", is_flag=True, help="Also create an API token and print it last.")
def users_create(email: str, role: str, api_token: bool) -> None:
    """Create a user. On a non-interactive stdin the password is its first line."""
    if sys.stdin.isatty():
        password = click.prompt(_("Password"), hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        user = create_user(email, password, Role(role))
    except ServiceError as error:
        raise click.ClickException(error.message) from None
    click.echo(
        _("Created %(email)s with role %(role)s.") % {"email": user.email, "role": label(user.role)}
    )
    if api_token:
        _token, raw = create_api_token(user.id, name="cli")
        click.echo(_("API token (shown once):"))
        click.echo(raw)


@click.command("seed-demo")
def seed_demo() -> None:
    """Create the demo admin, a mock sender, approved templates and a draft (only once)."""
    if current_app.config["DISPARO_ENV"] == "production":
        # A known admin and a mock sender have no place in a real deployment.
        raise click.ClickException(
            _("seed-demo is for development only and refuses to run with DISPARO_ENV=production.")
        )
    # The password is generated once and only its hash is stored, so the
    # plain one is kept (git-ignored, 0600) for `make run` to print every time.
    credentials = Path(current_app.config.get("DEMO_CREDENTIALS_FILE", DEMO_CREDENTIALS))
    seed = demo.seed_demo()
    if seed.created:
        # Kept before anything else can fail: only the password's hash is stored.
        credentials.parent.mkdir(exist_ok=True)
        credentials.write_text(f"{seed.admin_email}\n{seed.admin_password}\n")
        credentials.chmod(0o600)
        demo.seed_demo_campaign()
    if credentials.exists():
        email, password = credentials.read_text().split()[:2]
        click.echo(
            _("Demo admin: %(email)s / %(password)s  (kept in %(file)s)")
            % {"email": email, "password": password, "file": credentials}
        )
    else:
        click.echo(
            _("Demo data already present; sign in as %(email)s.") % {"email": seed.admin_email}
        )


@secrets_cli.command("rotate")
def secrets_rotate() -> None:
    """Re-encrypt every stored secret with the first key of DISPARO_ENCRYPTION_KEY."""
    # After prepending a new key: once this has run, the old keys can be dropped.
    count = encryption.rotate_stored_secrets(db.session.connection())
    db.session.commit()
    click.echo(
        _("Re-encrypted %(n)s stored secrets with the first key.") % {"n": format_number(count)}
    )


def _describe(report: personal_data.ErasureReport) -> str:
    if report.nothing_stored:
        return _("Nothing is stored for the number ending %(tail)s.") % {"tail": report.phone_tail}
    kept = report.opt_out or report.opt_out_hashed
    opt_out = _("yes, kept as a one-way hash") if kept else _("no")
    n = format_number
    return "\n".join(
        [
            _("Number ending %(tail)s (hash %(hash)s…):")
            % {"tail": report.phone_tail, "hash": report.fingerprint},
            "  "
            + _(
                "messages: %(m)s in %(c)s campaigns"
                " (%(w)s not sent yet, to be cancelled; %(call)s in a call now)"
            )
            % {
                "m": n(report.messages),
                "c": n(report.campaigns),
                "w": n(report.waiting),
                "call": n(report.in_call),
            },
            "  " + _("opt-out: %(answer)s") % {"answer": opt_out},
            "  "
            + _("undeliverable numbers: %(answer)s")
            % {"answer": _("yes, to be deleted") if report.undeliverable else _("no")},
            "  "
            + _("contact history: %(answer)s")
            % {"answer": _("yes, to be deleted") if report.contacted else _("no")},
            "  " + _("test sends in campaign activity: %(n)s") % {"n": n(report.activity)},
            "  "
            + _("rows of uploaded audiences (CSV), to be deleted: %(n)s")
            % {"n": n(report.audience_rows)},
        ]
    )


@data_cli.command("erase")
@click.argument("phone")
@click.option("--yes", is_flag=True, help="Erase without asking.")
def data_erase(phone: str, yes: bool) -> None:
    """Erase a person's number and data from every store; an opt-out stays, as a hash."""
    try:
        preview = personal_data.preview_erasure(phone)
    except ServiceError as error:
        raise click.BadParameter(error.message, param_hint="PHONE") from None
    click.echo(_describe(preview))
    if preview.nothing_stored:
        return
    if not yes:
        click.confirm(_("Erase it?"), abort=True)
    report = personal_data.erase_person(phone, None)
    click.echo(
        _(
            "Erased: %(m)s messages (%(w)s cancelled), %(a)s activity entries;"
            " an opt-out stays, as a hash only."
        )
        % {
            "m": format_number(report.messages),
            "w": format_number(report.waiting),
            "a": format_number(report.activity),
        }
    )


def init_app(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(queue_cli)
    app.cli.add_command(secrets_cli)
    app.cli.add_command(data_cli)
    app.cli.add_command(seed_demo)
