"""WhatsApp senders (admin): numbers, provider credentials, pace, and a connection test."""

from __future__ import annotations

from flask import Blueprint, abort, flash, render_template, request, url_for

from app import db
from campaigns import counters, progress, queries, slowdown
from campaigns.auth import requires
from campaigns.edge import validates_fields
from campaigns.htmx import is_htmx, redirect_to
from campaigns.i18n import _
from campaigns.models import Role, Sender
from campaigns.services import ServiceError
from campaigns.services.senders import (
    check_sender_connection,
    clear_messaging_limit_override,
    override_messaging_limit,
    save_sender,
)
from campaigns.validation import (
    SENDER_SETTINGS,
    Invalid,
    parse_messaging_limit_form,
    parse_sender,
)

bp = Blueprint("senders", __name__, url_prefix="/senders")


def _sender_or_404(sender_id: int) -> Sender:
    sender = queries.get_sender(sender_id)
    if sender is None:
        abort(404)
    return sender


def _form_page(form, errors, sender=None, status: int = 200):
    return render_template("senders/form.html", form=form, errors=errors, sender=sender), status


@bp.get("/")
@requires(Role.ADMIN)
def sender_index() -> str:
    """Every sender with its pace."""
    senders = queries.list_senders()
    return render_template(
        "senders/index.html", senders=senders, usage=progress.sender_usage(senders)
    )


@bp.get("/<int:sender_id>")
@requires(Role.ADMIN)
def sender_show(sender_id: int) -> str:
    """One sender: its limits and this minute's use, its health and connection, its campaigns."""
    return _show_page(_sender_or_404(sender_id), {}, {})


def _show_page(sender: Sender, limit_form, limit_errors) -> str:
    campaigns, campaign_count = queries.sender_campaigns(sender.id)
    return render_template(
        "senders/show.html",
        sender=sender,
        usage=progress.sender_usage([sender])[sender.id],
        health=queries.sender_health(sender.id),
        campaigns=campaigns,
        campaign_count=campaign_count,
        totals=counters.totals_of(db.session, [c.id for c in campaigns]),
        recovery_minutes=slowdown.RECOVERY_MINUTES,
        limit_form=limit_form,
        limit_errors=limit_errors,
    )


@bp.post("/<int:sender_id>/messaging-limit")
@requires(Role.ADMIN)
@validates_fields
def sender_messaging_limit(sender_id: int):
    """Override the messaging limit of the sender's business portfolio until Meta reports a
    new one, or (``action=clear``) go back to Meta's; as the API's PATCH, audited. htmx gets
    the account panel again; a plain form the page."""
    sender = _sender_or_404(sender_id)
    try:
        if request.form.get("action") == "clear":
            clear_messaging_limit_override(sender_id)
            done = _("The messaging limit is Meta's again.")
        else:
            override_messaging_limit(sender_id, parse_messaging_limit_form(request.form))
            done = _("Messaging limit set for the business portfolio until Meta reports a new one.")
    except (Invalid, ServiceError) as error:
        if is_htmx():
            panel = render_template(
                "senders/_account_panel.html",
                sender=sender,
                limit_form=request.form,
                limit_errors=error.errors,
            )
            return panel, 422
        return _show_page(sender, request.form, error.errors), 422
    if not is_htmx():
        flash(done, "success")
        return redirect_to(url_for("senders.sender_show", sender_id=sender_id))
    db.session.expire_all()
    return render_template(
        "senders/_account_panel.html",
        sender=_sender_or_404(sender_id),
        limit_form={},
        limit_errors={},
        limit_done=done,
    )


@bp.get("/new")
@requires(Role.ADMIN)
def sender_new():
    """An empty sender form with the source documents' defaults."""
    return _form_page(
        {"provider": "mock", "rate_limit_per_minute": 20, "min_interval_ms": 1000}, {}
    )


@bp.post("/")
@requires(Role.ADMIN)
@validates_fields
def sender_create():
    """Create a sender, or 422 with a message at each bad field."""
    try:
        save_sender(parse_sender(request.form))
    except (Invalid, ServiceError) as error:
        return _form_page(request.form, error.errors, status=422)
    flash(_("Sender saved."), "success")
    return redirect_to(url_for("senders.sender_index"))


@bp.get("/<int:sender_id>/edit")
@requires(Role.ADMIN)
def sender_edit(sender_id: int):
    """The form, filled in (secrets are never shown back)."""
    sender = _sender_or_404(sender_id)
    form = {name: getattr(sender, name) or "" for name in SENDER_SETTINGS}
    form["provider"] = sender.provider.value
    return _form_page(form, {}, sender)


@bp.post("/<int:sender_id>")
@requires(Role.ADMIN)
@validates_fields
def sender_update(sender_id: int):
    """Save a sender; blank secret fields keep the stored secrets."""
    sender = _sender_or_404(sender_id)
    try:
        save_sender(parse_sender(request.form), sender_id)
    except (Invalid, ServiceError) as error:
        return _form_page(request.form, error.errors, sender, 422)
    flash(_("Sender saved."), "success")
    return redirect_to(url_for("senders.sender_index"))


@bp.post("/<int:sender_id>/test")
@requires(Role.ADMIN)
def sender_test(sender_id: int) -> str:
    """Ask the provider about this sender and show what it said (an htmx fragment)."""
    _sender_or_404(sender_id)
    ok, message = check_sender_connection(sender_id)
    return render_template("senders/_connection.html", sender_id=sender_id, ok=ok, message=message)
