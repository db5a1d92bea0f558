"""Message templates: list, create and edit with a live preview, submit for review, sync,
import from WhatsApp."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, render_template, request, url_for
from flask_login import current_user
from werkzeug.wrappers import Response

from app import db
from campaigns import queries, rendering, template_parts
from campaigns.auth import requires
from campaigns.edge import validates_fields
from campaigns.htmx import STOP_POLLING, is_htmx, redirect_to
from campaigns.i18n import _
from campaigns.labels import label, label_for
from campaigns.models import (
    HeaderFormat,
    MediaFile,
    MessageTemplate,
    ParameterFormat,
    Role,
    TemplateStatus,
)
from campaigns.services import ServiceError, template_import
from campaigns.services.templates import (
    create_template,
    submit_template,
    sync_template_status,
    update_template,
)
from campaigns.validation import (
    LOCATION_KEYS,
    Invalid,
    form_buttons,
    header_kind,
    parse_template,
    row_id,
)

bp = Blueprint("templates", __name__, url_prefix="/templates")


def _index_page(**import_outcome) -> str:
    filters = queries.TemplateFilters.from_args(request.args)
    return render_template(
        "templates/index.html",
        templates=queries.list_templates(filters),
        filters=filters,
        languages=queries.template_languages(),
        import_senders=[s for s in queries.list_senders() if s.waba_id],
        **import_outcome,
    )


@bp.get("/")
def template_index() -> str:
    """The template list with its filters."""
    return _index_page()


@bp.post("/import")
@requires(Role.SUPERVISOR)
def template_import_run():
    """Import the chosen sender's templates from WhatsApp now (inline: at most 60 Graph
    pages) and show what happened, in place (htmx) or on the list page."""
    sender_id = row_id(request.form.get("sender_id"))
    result, error = None, None
    try:
        if sender_id is None:
            raise ServiceError(_("Choose a sender."))
        result = template_import.import_templates(sender_id, current_user.id)
    except ServiceError as refused:
        error = refused.message
    outcome = {"import_result": result, "import_error": error, "import_sender_id": sender_id}
    status = 422 if error else 200
    if is_htmx():
        return render_template("templates/_import_result.html", **outcome), status
    return _index_page(**outcome), status


@bp.get("/rows")
def template_rows() -> str:
    """The list's rows alone, re-rendered by htmx as the filters change."""
    return render_template(
        "templates/_rows.html",
        templates=queries.list_templates(queries.TemplateFilters.from_args(request.args)),
    )


def _bubble(template: MessageTemplate, body: str) -> dict[str, Any]:
    """What the message bubble shows for a template (saved, or as the form has it): the
    header by its kind, the body (``body``, its variables already filled), the footer and
    each button's kind and words."""
    fmt = template.parameter_format
    header: dict[str, Any] | None = None
    if header_format := template_parts.header_format(template):
        header = {"format": header_format.value, "location": template.header_location}
        if header_format is HeaderFormat.TEXT:
            names = rendering.variables(template.header_text, fmt)
            samples = rendering.sample_values(names, fmt)
            header["text"] = rendering.render(template.header_text, fmt, samples)
        elif template.header_media_file_id:
            header["src"] = url_for("media.media_file", media_file_id=template.header_media_file_id)
        elif link := template.header_media_link:
            header["link"], header["filename"] = link, template_parts.link_filename(link)
    buttons = [
        {"kind": b.get("type"), "text": b.get("text") or label_for("button_kind", b.get("type"))}
        for b in template.buttons or []
    ]
    return {"header": header, "body": body, "footer": template.footer_text, "buttons": buttons}


def _typed(form) -> MessageTemplate:
    """The form as typed, as an unsaved template (for the preview; nothing is checked)."""
    fmt = (
        ParameterFormat.POSITIONAL
        if form.get("parameter_format") == "positional"
        else ParameterFormat.NAMED
    )
    header_text = form.get("header_text", "").strip()
    kind = header_kind(form)
    header_format = kind if kind in HeaderFormat.__members__ else None
    buttons = form_buttons(form.get("buttons", ""), form.get("copy_code", ""))
    location = {key: form.get(f"header_location.{key}", "").strip() for key in LOCATION_KEYS}
    return MessageTemplate(
        parameter_format=fmt,
        header_format=header_format,
        header_text=header_text[: rendering.HEADER_MAX_CHARS],
        header_media_link=form.get("header_media_link", "").strip() or None,
        header_media_file_id=row_id(form.get("header_media_file_id")),
        header_location=location,
        footer_text=form.get("footer_text", ""),
        buttons=buttons,
    )


def _preview(form) -> dict:
    """What the preview shows for the form as typed: rendered text, variables, problems."""
    typed = _typed(form)
    fmt = typed.parameter_format
    # Stripped as parse_template stores it, so the preview counts what will be saved.
    text = form.get("body_text", "").strip()
    problems = rendering.validate(text, fmt)
    # Over the limit, only what fits is parsed and shown; the problem says why.
    body = text[: rendering.BODY_MAX_CHARS]
    typed.body_text = body
    names = rendering.variables(body, fmt)
    samples = rendering.sample_values(names, fmt)
    return {
        "bubble": _bubble(typed, rendering.render(body, fmt, samples)),
        "variables": [variable.key for variable in template_parts.variables(typed)],
        "problems": problems,
        "length": len(text),
    }


def _edit_form(template: MessageTemplate) -> dict[str, str]:
    """The form's fields for a saved template."""
    location = template.header_location or {}
    buttons = [b for b in template.buttons if b.get("type") != "COPY_CODE"]
    return {
        "name": template.name,
        "language": template.language,
        "category": template.category.value,
        "parameter_format": template.parameter_format.value,
        "header_format": template.header_format or "",
        "header_text": template.header_text or "",
        "header_media_link": template.header_media_link or "",
        "header_media_file_id": str(template.header_media_file_id or ""),
        **{f"header_location.{key}": str(location.get(key, "")) for key in LOCATION_KEYS},
        "body_text": template.body_text,
        "footer_text": template.footer_text or "",
        "buttons": "\n".join(
            f"{b['text']} | {b.get('url') or b.get('phone_number')}"
            if b.get("url") or b.get("phone_number")
            else b["text"]
            for b in buttons
        ),
        "copy_code": next(
            (b["example"] for b in template.buttons if b.get("type") == "COPY_CODE"), ""
        ),
        "sender_id": str(template.sender_id),
    }


def _media_file(form) -> MediaFile | None:
    """The uploaded file the form's media header names, if there is one."""
    file_id = row_id(form.get("header_media_file_id"))
    return db.session.get(MediaFile, file_id) if file_id else None


def _form_page(form, errors, template=None, status: int = 200):
    return (
        render_template(
            "templates/form.html",
            form=form,
            errors=errors,
            template=template,
            preview=_preview(form),
            senders=queries.list_senders(),
            media_file=_media_file(form),
            header_kind=header_kind(form),
        ),
        status,
    )


@bp.get("/new")
@requires(Role.SUPERVISOR)
def template_new():
    """An empty template form."""
    return _form_page(
        {"parameter_format": "named", "language": "pt_BR", "category": "MARKETING"}, {}
    )


@bp.post("/")
@requires(Role.SUPERVISOR)
@validates_fields
def template_create():
    """Create a draft, or re-render the form (422) with a message at each bad field."""
    try:
        fields = parse_template(request.form)
        raw_sender = request.form.get("sender_id")
        sender_id = row_id(raw_sender) if raw_sender else None
        if raw_sender and sender_id is None:
            raise Invalid({"sender_id": _("Choose a sender.")})
        template = create_template(fields, current_user.id, sender_id)
    except (Invalid, ServiceError) as error:
        return _form_page(request.form, error.errors, status=422)
    flash(_("Template saved as a draft. Submit it for review when ready."), "success")
    return redirect_to(url_for("templates.template_show", template_id=template.id))


@bp.post("/header")
@requires(Role.SUPERVISOR)
def template_header_fields() -> str:
    """The header's fields for the kind chosen (htmx, when the header's kind changes)."""
    return render_template(
        "templates/_header_fields.html",
        form=request.form,
        errors={},
        media_file=_media_file(request.form),
        header_kind=header_kind(request.form),
    )


@bp.post("/preview")
@requires(Role.SUPERVISOR)
def template_preview() -> str:
    """The live preview beside the form (htmx, as the user types)."""
    return render_template("templates/_preview.html", preview=_preview(request.form))


def _template_or_404(template_id: int):
    template = queries.get_template(template_id)
    if template is None:
        abort(404)
    return template


@bp.get("/<int:template_id>")
def template_show(template_id: int) -> str:
    """One template: its text, status and the actions its status allows."""
    template = _template_or_404(template_id)
    fmt = template.parameter_format
    names = rendering.variables(template.body_text, fmt)
    samples = rendering.sample_values(names, fmt)
    return render_template(
        "templates/show.html",
        template=template,
        variables=[variable.key for variable in template_parts.variables(template)],
        bubble=_bubble(template, rendering.render(template.body_text, fmt, samples)),
    )


@bp.get("/<int:template_id>/edit")
@requires(Role.SUPERVISOR)
def template_edit(template_id: int):
    """The form, filled with the template."""
    template = _template_or_404(template_id)
    form = _edit_form(template)
    return _form_page(form, {}, template)


@bp.post("/<int:template_id>")
@requires(Role.SUPERVISOR)
@validates_fields
def template_update(template_id: int):
    """Save changes (the template returns to draft), or 422 with the reasons."""
    template = _template_or_404(template_id)
    try:
        update_template(template_id, parse_template(request.form))
    except (Invalid, ServiceError) as error:
        return _form_page(request.form, error.errors, template, 422)
    flash(_("Template saved as a draft. Submit it again for review."), "success")
    return redirect_to(url_for("templates.template_show", template_id=template_id))


@bp.post("/<int:template_id>/submit")
@requires(Role.SUPERVISOR)
def template_submit(template_id: int) -> Response:
    """Send the template for review by the sender's provider."""
    _template_or_404(template_id)
    try:
        submit_template(template_id)
        flash(_("Submitted for review. The status updates by itself."), "success")
    except ServiceError as error:
        flash(error.message, "error")
    return redirect_to(url_for("templates.template_show", template_id=template_id))


@bp.post("/<int:template_id>/sync")
@requires(Role.SUPERVISOR)
def template_sync(template_id: int) -> Response:
    """Ask the provider for the review status now."""
    _template_or_404(template_id)
    try:
        template = sync_template_status(template_id)
        flash(_("Status: %(s)s.") % {"s": label(template.status)}, "success")
    except ServiceError as error:
        flash(error.message, "error")
    return redirect_to(url_for("templates.template_show", template_id=template_id))


@bp.get("/<int:template_id>/status")
def template_status(template_id: int):
    """The status badge, polled by the page while the template is under review."""
    template = _template_or_404(template_id)
    body = render_template("templates/_status.html", template=template)
    return body, STOP_POLLING if template.status is not TemplateStatus.PENDING else 200
