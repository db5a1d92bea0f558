"""Settings (admin): Meta's message rates, which the pre-flight check prices a campaign at,
and the campaign defaults new campaigns start with (a frequency cap, exclusions, a window)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, abort, flash, render_template, request, url_for
from flask_login import current_user
from werkzeug.wrappers import Response

from app import db
from campaigns import campaign_defaults, pricing
from campaigns.auth import requires
from campaigns.htmx import redirect_to
from campaigns.i18n import _, format_number, get_locale
from campaigns.labels import weekday_name
from campaigns.models import MessageRate, Role
from campaigns.services import NotFound, ServiceError
from campaigns.services.campaign_defaults import save_defaults
from campaigns.services.pricing import add_rate, change_rate, delete_rate
from campaigns.validation import Invalid

bp = Blueprint("settings", __name__, url_prefix="/settings")


def country_name(code: str) -> str:
    """A country's name in the reader's language (Babel's CLDR data), else its code."""
    locale = get_locale()
    name = locale.territories.get(code) if locale is not None else None
    return str(name) if name else code


def _page(
    errors: Mapping[str, str] | None = None,
    form: Mapping[str, Any] | None = None,
    defaults_errors: Mapping[str, str] | None = None,
    defaults_form: Mapping[str, Any] | None = None,
):
    rates = pricing.rates(db.session)
    defaults = {"currency": pricing.rate_currency(db.session) or pricing.DEFAULT_CURRENCY}
    return render_template(
        "settings/index.html",
        rates=rates,
        errors=errors or {},
        form=form if form is not None else defaults,
        country_name=country_name,
        defaults_errors=defaults_errors or {},
        defaults_form=defaults_form if defaults_form is not None else _defaults_form(),
        weekday_name=weekday_name,
    )


def _defaults_form() -> dict[str, Any]:
    """The campaign defaults as their form's fields."""
    stored = campaign_defaults.defaults(db.session)
    window = stored.send_window or {}
    return {
        "frequency_cap_days": stored.frequency_cap_days or "",
        "exclude_running": stored.exclude_running,
        "window_start": window.get("start", ""),
        "window_end": window.get("end", ""),
        "window_days": [str(day) for day in window.get("days", [])],
    }


def _posted_defaults_form() -> dict[str, Any]:
    """The campaign defaults' form as posted, to show again with its errors."""
    return {
        "frequency_cap_days": request.form.get("frequency_cap_days", ""),
        "exclude_running": request.form.get("exclude_running") == "on",
        "window_start": request.form.get("window_start", ""),
        "window_end": request.form.get("window_end", ""),
        "window_days": request.form.getlist("window_days"),
    }


@bp.get("/")
@requires(Role.ADMIN)
def settings_index() -> str:
    """The Settings page: the campaign defaults, and Meta's message rates with a form to
    add one."""
    return _page()


@bp.post("/campaign-defaults")
@requires(Role.ADMIN)
def campaign_defaults_update():
    """Save the campaign defaults, or 422 with the reasons at their fields."""
    try:
        save_defaults(request.form, current_user.id)
    except Invalid as error:
        return _page(defaults_errors=error.errors, defaults_form=_posted_defaults_form()), 422
    flash(_("Campaign defaults saved. New campaigns start with them."), "success")
    return redirect_to(url_for("settings.settings_index"))


@bp.post("/rates")
@requires(Role.ADMIN)
def rate_create():
    """Add a rate, or 422 with the reasons at their fields."""
    try:
        add_rate(request.form, current_user.id)
    except (Invalid, ServiceError) as error:
        return _page(error.errors, request.form), 422
    flash(_("Rate added."), "success")
    return redirect_to(url_for("settings.settings_index"))


def _rate_or_404(rate_id: int) -> MessageRate:
    rate = db.session.get(MessageRate, rate_id)
    if rate is None:
        abort(404)
    return rate


@bp.get("/rates/<int:rate_id>")
@requires(Role.ADMIN)
def rate_edit(rate_id: int) -> str:
    """One rate's form."""
    rate = _rate_or_404(rate_id)
    values = {
        "category": rate.category.value,
        "country": rate.country,
        "currency": rate.currency,
        "amount": format_number(rate.amount, exact=True),
        "effective_from": rate.effective_from.isoformat(),
    }
    return render_template(
        "settings/edit_rate.html", rate=rate, errors={}, form=values, country_name=country_name
    )


@bp.post("/rates/<int:rate_id>")
@requires(Role.ADMIN)
def rate_update(rate_id: int):
    """Change a rate, or 422 with the reasons at their fields."""
    rate = _rate_or_404(rate_id)
    try:
        change_rate(rate_id, request.form, current_user.id)
    except NotFound:
        abort(404)
    except (Invalid, ServiceError) as error:
        return render_template(
            "settings/edit_rate.html",
            rate=rate,
            errors=error.errors,
            form=request.form,
            country_name=country_name,
        ), 422
    flash(_("Saved."), "success")
    return redirect_to(url_for("settings.settings_index"))


@bp.post("/rates/<int:rate_id>/delete")
@requires(Role.ADMIN)
def rate_delete(rate_id: int) -> Response:
    """Delete a rate (the button asks for confirmation first)."""
    try:
        delete_rate(rate_id)
        flash(_("Rate deleted."), "success")
    except NotFound as error:
        flash(error.message, "error")
    return redirect_to(url_for("settings.settings_index"))
