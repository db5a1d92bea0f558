"""Users (admin) and everyone's own API tokens."""

from __future__ import annotations

from collections.abc import Mapping

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    make_response,
    render_template,
    request,
    url_for,
)
from flask_login import current_user
from werkzeug.wrappers import Response

from campaigns import i18n, queries
from campaigns.auth import keep_session, requires
from campaigns.edge import validates_fields
from campaigns.htmx import redirect_to, replace_page
from campaigns.i18n import _
from campaigns.models import Role, User
from campaigns.services import NotFound, ServiceError, personal_data
from campaigns.services.users import (
    create_api_token,
    create_user,
    generate_password,
    reset_password,
    revoke_api_token,
    set_preferences,
    set_user_disabled,
    update_user,
)
from campaigns.validation import Invalid, parse_user_changes

bp = Blueprint("users", __name__)


def _user_or_404(user_id: int) -> User:
    user = queries.get_user(user_id)
    if user is None:
        abort(404)
    return user


@bp.get("/users/")
@requires(Role.ADMIN)
def user_index() -> str:
    """Every user with role, state and limits."""
    return render_template("users/index.html", users=queries.list_users(), errors={}, form={})


def _role(raw: str) -> Role:
    try:
        return Role(raw)
    except ValueError:
        raise ServiceError(_("Choose a role."), "role") from None


@bp.post("/users/")
@requires(Role.ADMIN)
def user_create():
    """Create a user with a generated password, shown once."""
    email = request.form.get("email", "")
    password = generate_password()
    try:
        user = create_user(email, password, _role(request.form.get("role", "viewer")))
    except ServiceError as error:
        return render_template(
            "users/index.html", users=queries.list_users(), errors=error.errors, form=request.form
        ), 422
    return _with_password_shown_once(
        _("Created %(email)s. Their password, shown once: %(p)s")
        % {"email": user.email, "p": password}
    )


def _with_password_shown_once(message: str) -> Response:
    """The users page with a generated password, in this response only: not flashed,
    as a flash rides in the session cookie, which is signed but readable; and not
    cached (security.py: no-store)."""
    page = render_template(
        "users/index.html", users=queries.list_users(), errors={}, form={}, shown_once=message
    )
    return replace_page(make_response(page))


@bp.get("/users/<int:user_id>")
@requires(Role.ADMIN)
def user_edit(user_id: int) -> str:
    """One user's role and rate limits."""
    return render_template("users/edit.html", user=_user_or_404(user_id), errors={}, form=None)


@bp.post("/users/<int:user_id>")
@requires(Role.ADMIN)
@validates_fields
def user_update(user_id: int):
    """Change role and limits, or 422 with the reasons."""
    user = _user_or_404(user_id)
    try:
        update_user(user_id, parse_user_changes(request.form), current_user.id)
    except (Invalid, ServiceError) as error:
        return render_template(
            "users/edit.html", user=user, errors=error.errors, form=request.form
        ), 422
    flash(_("Saved."), "success")
    return redirect_to(url_for("users.user_index"))


@bp.post("/users/<int:user_id>/disable")
@requires(Role.ADMIN)
def user_disable(user_id: int) -> Response:
    """Disable a user: no sign-in, no API."""
    return _set_disabled(user_id, True)


@bp.post("/users/<int:user_id>/enable")
@requires(Role.ADMIN)
def user_enable(user_id: int) -> Response:
    """Let a disabled user back in."""
    return _set_disabled(user_id, False)


def _set_disabled(user_id: int, disabled: bool) -> Response:
    _user_or_404(user_id)
    try:
        user = set_user_disabled(user_id, disabled, current_user.id)
        flash(
            (_("%(e)s is disabled.") if disabled else _("%(e)s is enabled.")) % {"e": user.email},
            "success",
        )
    except ServiceError as error:
        flash(error.message, "error")
    return redirect_to(url_for("users.user_index"))


@bp.post("/users/<int:user_id>/reset-password")
@requires(Role.ADMIN)
def user_reset_password(user_id: int) -> Response:
    """Give the user a new random password, shown once to the admin; it ends the
    user's sessions."""
    user = _user_or_404(user_id)
    password = reset_password(user_id)
    keep_session(user)  # an admin resetting their own password stays signed in here
    return _with_password_shown_once(
        _("New password for %(e)s, shown once: %(p)s") % {"e": user.email, "p": password}
    )


@bp.get("/me/preferences")
def my_preferences() -> str:
    """The signed-in user's language and time zone."""
    return _preferences_page({})


def _preferences_page(errors: Mapping[str, str], form: Mapping[str, str] | None = None) -> str:
    return render_template(
        "users/preferences.html",
        errors=errors,
        form=form or {"locale": current_user.locale or "", "timezone": current_user.timezone or ""},
        timezones=i18n.timezone_choices(),
    )


@bp.post("/me/preferences")
@requires(Role.VIEWER)
@validates_fields
def my_preferences_update():
    """Save them (empty: the browser's language, the default time zone), or 422."""
    form = request.form
    try:
        set_preferences(current_user.id, form.get("locale") or None, form.get("timezone") or None)
    except ServiceError as error:
        return _preferences_page(error.errors, form), 422
    # Flashed after the commit, so it reads in the language just chosen.
    with i18n.force_locale(i18n.select_locale()):
        flash(_("Preferences saved."), "success")
    return redirect_to(url_for("users.my_preferences"))


@bp.get("/me/tokens")
def my_tokens() -> str:
    """The signed-in user's API tokens."""
    return render_template(
        "users/tokens.html", tokens=queries.api_tokens_of(current_user.id), new_token=None
    )


@bp.post("/me/tokens")
@requires(Role.VIEWER)
def my_token_create() -> str:
    """Create a token and show it this once."""
    name = (request.form.get("name") or "").strip()[:100] or "token"
    _token, raw = create_api_token(current_user.id, name)
    return render_template(
        "users/tokens.html", tokens=queries.api_tokens_of(current_user.id), new_token=raw
    )


@bp.post("/me/tokens/<int:token_id>/revoke")
@requires(Role.VIEWER)
def my_token_revoke(token_id: int) -> Response:
    """Revoke one of my tokens."""
    try:
        revoke_api_token(token_id, current_user.id)
        flash(_("Token revoked."), "success")
    except NotFound:
        abort(404)
    return redirect_to(url_for("users.my_tokens"))


def _personal_data_page(
    form: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
    report: personal_data.ErasureReport | None = None,
    status: int = 200,
) -> tuple[str, int]:
    page = render_template(
        "users/personal_data.html",
        form=form or {},
        errors=errors or {},
        report=report,
        retention_days=current_app.config["DATA_RETENTION_DAYS"],
    )
    return page, status


@bp.get("/users/personal-data")
@requires(Role.ADMIN)
def personal_data_index() -> tuple[str, int]:
    """Erase one person's data: enter the number, see what is stored, confirm."""
    return _personal_data_page()


@bp.post("/users/personal-data/preview")
@requires(Role.ADMIN)
@validates_fields  # the phone's own check refuses a NUL at the field
def personal_data_preview() -> tuple[str, int]:
    """What erasing the number would remove, store by store (a POST: no number in a URL)."""
    try:
        report = personal_data.preview_erasure(request.form.get("phone", ""))
    except ServiceError as error:
        return _personal_data_page(request.form, error.errors, status=422)
    return _personal_data_page(request.form, report=report)


@bp.post("/users/personal-data/erase")
@requires(Role.ADMIN)
@validates_fields
def personal_data_erase():
    """Erase it (the button asks first); the result is shown in this response only."""
    try:
        report = personal_data.erase_person(request.form.get("phone", ""), current_user)
    except ServiceError as error:
        return _personal_data_page(request.form, error.errors, status=422)
    page, _status = _personal_data_page(report=report)
    return replace_page(make_response(page))
