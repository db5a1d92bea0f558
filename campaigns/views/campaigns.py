"""Campaigns: list, build (audience, mapping), dry run, schedule and control."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from babel.dates import get_day_names
from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    make_response,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_login import current_user
from werkzeug.wrappers import Response

from app import db
from campaigns import (
    audiences,
    campaign_defaults,
    counters,
    csvfiles,
    erp,
    exclusions,
    languages,
    preflight,
    queries,
    recipients,
    recurrence,
    template_parts,
    tracked_links,
)
from campaigns.auth import requires
from campaigns.config import ConfigError
from campaigns.edge import validates_fields
from campaigns.htmx import CAMPAIGN_CHANGED, STOP_POLLING, redirect_to, trigger
from campaigns.i18n import (
    _,
    _l,
    current_zone,
    format_number,
    get_locale,
    ngettext,
    timezone_choices,
)
from campaigns.models import (
    AudienceFile,
    Campaign,
    CampaignStatus,
    MessageStatus,
    MessageTemplate,
    Role,
)
from campaigns.progress import Progress, get_progress, throughput_chart
from campaigns.services import Blocked, ConfirmationRequired, ServiceError
from campaigns.services.campaigns import (
    RETRY_FAILED_STATUSES,
    allowed_actions,
    audience_count,
    cancel_campaign,
    create_campaign,
    dry_run,
    duplicate_campaign,
    pause_campaign,
    refusal,
    resume_campaign,
    retry_failed,
    schedule_campaign,
    send_campaign_now,
    send_test_message,
    template_variables_for,
    unschedule_campaign,
    update_campaign,
)
from campaigns.validation import (
    CUSTOMER_FIELDS,
    FIELD_OPTION,
    CampaignFields,
    Checker,
    Invalid,
    bigint,
    campaign_data_from_form,
    parse_audience_file,
    parse_campaign,
    parse_flag,
    parse_frequency_cap,
    parse_segment,
    row_id,
)

logger = logging.getLogger(__name__)
bp = Blueprint("campaigns", __name__, url_prefix="/campaigns")

# The form waits this long for the ERP's tags (connect, read), not a job's 30 s.
ERP_FORM_TIMEOUT = (3.05, 5.0)
# The audience fields as the form labels them, for the ERP's per-field refusals.
SEGMENT_LABELS = {
    "city": _l("City"),
    "state": _l("State"),
    "tags": _l("Tags"),
    "min_total_spent": _l("Minimum total spent"),
    "last_purchase_within_days": _l("Bought within (days)"),
    "max_audience": _l("At most (pilot wave)"),
    "opted_in_only": _l("Only customers who opted in"),
}


def _campaign_or_404(campaign_id: int) -> Campaign:
    campaign = queries.get_campaign(campaign_id)
    if campaign is None:
        abort(404)
    return campaign


def _status_filter() -> CampaignStatus | None:
    try:
        return CampaignStatus(request.args["status"]) if request.args.get("status") else None
    except ValueError:
        return None


def _page_number() -> int:
    try:
        return int(request.args.get("page", 1))
    except ValueError:
        return 1


@bp.get("/")
def campaign_index() -> str:
    """Campaigns with status filter, search and pagination."""
    page = queries.list_campaigns(_status_filter(), request.args.get("q"), _page_number())
    return render_template(
        "campaigns/index.html",
        page=page,
        totals=_totals(page),
        status=_status_filter(),
        q=request.args.get("q", ""),
    )


def _totals(page: queries.CampaignPage) -> dict[int, dict[str, int]]:
    """The page's campaigns' figures (sent, failed, done), in one statement."""
    return counters.totals_of(db.session, [c.id for c in page.campaigns])


@bp.get("/rows")
def campaign_rows() -> str:
    """The list's rows alone: re-rendered by the filters, and polled while any is live."""
    page = queries.list_campaigns(_status_filter(), request.args.get("q"), _page_number())
    return render_template("campaigns/_rows.html", page=page, totals=_totals(page))


def _audience_file(data: dict[str, Any]) -> AudienceFile | None:
    """The CSV file the form's audience is, if it is one (and it exists)."""
    file_id = row_id(data.get("audience_file_id"))
    return audiences.get(file_id) if file_id else None


def _field_choices(data: dict[str, Any]) -> tuple[str, ...]:
    """What a variable or the language may come from: the CSV file's columns, or the ERP's
    customer fields."""
    audience = _audience_file(data)
    return tuple(audience.columns) if audience else CUSTOMER_FIELDS


def _mapping_rows(template_id: Any, form: dict[str, Any]) -> list[dict[str, str]]:
    """Each variable of the chosen template with what it is mapped to on the form.

    A variable the form has not mapped yet, named like a customer field ({{first_name}},
    {{city}}) or, for a CSV audience, like one of its columns, is mapped to it by
    default; one the operator set to "— choose —" (its select was on the form) stays
    unmapped.
    """
    choices = _field_choices(form)
    variables = form.get("variables", {})
    # Without a template, keep showing what was typed, so nothing is lost.
    names = template_variables_for(template_id) or list(variables)
    template_key = row_id(template_id)
    template = db.session.get(MessageTemplate, template_key) if template_key else None
    app_base_url = current_app.config["APP_BASE_URL"]
    rows = []
    for name in names:
        source = variables.get(name, {})
        field = source.get("field", "")
        if not source and name in choices and f"var.{name}.source" not in request.form:
            field = name
        elif field and field not in choices:
            field = ""  # another source's field (the ERP's, or another file's column)
        rows.append(
            {
                "name": name,
                "label": template_parts.describe(template, name),
                "optional": template_parts.is_optional(name),
                "source": "text"
                if "text" in source
                else "track"
                if "track" in source
                else FIELD_OPTION + field
                if field
                else "",
                "text": source.get("text") or source.get("track", ""),
                "trackable": template is not None
                and tracked_links.leads_here(template, name, app_base_url),
            }
        )
    return rows


def _erp_tags() -> list[str] | None:
    """The tags the ERP knows, or None (logged) when it cannot say: the form takes typed ones,
    and the live count then says what the ERP answers."""
    try:
        with erp.client_from_config(current_app.config, timeout=ERP_FORM_TIMEOUT) as client:
            return client.tags()
    except (erp.ErpError, ConfigError) as error:
        logger.warning("the ERP's tags could not be read: %s", error)
        return None


def _chosen_tags(segment: Any) -> list[str]:
    """The segment's tags as a list, whether saved (a list) or as the form sent them."""
    tags = segment.get("tags") if isinstance(segment, dict) else None
    if isinstance(tags, str):
        tags = tags.split(",")
    if not isinstance(tags, list):
        return []
    return [str(tag).strip() for tag in tags if str(tag).strip()]


def _form_page(
    data: dict[str, Any],
    errors: dict[str, str],
    campaign: Campaign | None = None,
    status: int = 200,
):
    known_tags = _erp_tags()
    return (
        render_template(
            "campaigns/form.html",
            data=data,
            errors=errors,
            campaign=campaign,
            known_tags=known_tags,
            chosen_tags=_chosen_tags(data.get("segment")),
            senders=queries.list_senders(),
            templates=queries.approved_templates(),
            mapping=_mapping_rows(data.get("template_id"), data),
            customer_fields=_field_choices(data),
            audience_file=(audience := _audience_file(data)),
            audience_preview=audiences.preview(audience) if audience else [],
            other_languages=languages.also_approved_in(data.get("template_id")),
            # Whose campaign limit paces it: the owner's (the creator's, for a new one).
            owner=campaign.owner if campaign else current_user,
            **_repeat_choices(),
        ),
        status,
    )


def _data_of(campaign: Campaign) -> dict[str, Any]:
    return {
        "name": campaign.name,
        "sender_id": str(campaign.sender_id),
        "template_id": str(campaign.template_id),
        "segment": campaign.segment,
        "variables": campaign.variable_mapping,
        "language_field": campaign.language_field or "",
        "audience_file_id": campaign.audience_file_id,
        "audience_phone_column": campaign.audience_phone_column or "",
        "recurrence": campaign.recurrence,
        "send_window": campaign.send_window,
        "time_zone_field": campaign.time_zone_field or "",
        "frequency_cap_days": campaign.frequency_cap_days or "",
        "exclude_running": campaign.exclude_running,
    }


def _repeat_choices() -> dict[str, Any]:
    """The Repeat fields' choices (templates/campaigns/_recurrence.html): the days of the
    week in the reader's language (0 Monday), the time zones, the reader's first."""
    names = get_day_names("wide", locale=get_locale())
    return {
        "weekdays": [(day, names[day]) for day in range(7)],
        "timezones": timezone_choices(),
        "reader_zone": str(current_zone()),
    }


@bp.get("/new")
@requires(Role.SUPERVISOR)
def campaign_new():
    """An empty campaign form (opted-in customers only, by default), with the admin's
    campaign defaults (its frequency cap, exclusions and sending window)."""
    senders = queries.list_senders()
    defaults = campaign_defaults.defaults(db.session)
    data = {
        "segment": {"opted_in_only": True},
        "variables": {},
        "sender_id": str(senders[0].id) if senders else "",
        "frequency_cap_days": defaults.frequency_cap_days or "",
        "exclude_running": defaults.exclude_running,
        "send_window": defaults.send_window,
    }
    return _form_page(data, {})


def _parse_form() -> tuple[dict[str, Any], CampaignFields]:
    data = campaign_data_from_form(request.form)
    return data, parse_campaign(data, template_variables_for(data["template_id"]))


@bp.post("/")
@requires(Role.SUPERVISOR)
@validates_fields
def campaign_create():
    """Create a draft, or 422 with a message at each bad field."""
    data = campaign_data_from_form(request.form)
    try:
        _data, fields = _parse_form()
        campaign = create_campaign(fields, current_user.id)
    except (Invalid, ServiceError) as error:
        return _form_page(data, error.errors, status=422)
    flash(_("Campaign saved as a draft."), "success")
    return redirect_to(url_for("campaigns.campaign_show", campaign_id=campaign.id))


@bp.get("/<int:campaign_id>/edit")
@requires(Role.SUPERVISOR)
def campaign_edit(campaign_id: int):
    """The form, filled in (draft and scheduled campaigns only)."""
    campaign = _campaign_or_404(campaign_id)
    if "edit" not in _actions(campaign):
        flash(refusal("edit", campaign.status), "error")
        return redirect_to(url_for("campaigns.campaign_show", campaign_id=campaign_id))
    return _form_page(_data_of(campaign), {}, campaign)


@bp.post("/<int:campaign_id>")
@requires(Role.SUPERVISOR)
@validates_fields
def campaign_update(campaign_id: int):
    """Save changes, or 422 with the reasons."""
    campaign = _campaign_or_404(campaign_id)
    data = campaign_data_from_form(request.form)
    try:
        _data, fields = _parse_form()
        update_campaign(campaign_id, fields, current_user.id)
    except (Invalid, ServiceError) as error:
        return _form_page(data, error.errors, campaign, 422)
    flash(_("Campaign saved."), "success")
    return redirect_to(url_for("campaigns.campaign_show", campaign_id=campaign_id))


@bp.post("/mapping")
@requires(Role.SUPERVISOR)
def campaign_mapping() -> str:
    """The variable mapping for the template chosen on the form (htmx)."""
    data = campaign_data_from_form(request.form)
    return render_template(
        "campaigns/_mapping.html",
        mapping=_mapping_rows(data["template_id"], data),
        customer_fields=_field_choices(data),
        audience_file=_audience_file(data),
        errors={},
    )


@bp.post("/languages")
@requires(Role.SUPERVISOR)
def campaign_languages() -> str:
    """The recipient's language choice, with the languages the template chosen on the
    form is also approved in (htmx)."""
    data = campaign_data_from_form(request.form)
    return render_template(
        "campaigns/_languages.html",
        data=data,
        customer_fields=_field_choices(data),
        audience_file=_audience_file(data),
        other_languages=languages.also_approved_in(data["template_id"]),
        errors={},
    )


@bp.post("/time-zone")
@requires(Role.SUPERVISOR)
def campaign_time_zone() -> str:
    """The recipient's time zone choice, with the audience's fields: the CSV file's
    columns or the ERP's (htmx, on the audience's change)."""
    data = campaign_data_from_form(request.form)
    return render_template(
        "campaigns/_time_zone.html",
        data=data,
        customer_fields=_field_choices(data),
        audience_file=_audience_file(data),
        errors={},
    )


@bp.post("/audience")
@requires(Role.SUPERVISOR)
def campaign_audience() -> str:
    """The live audience count from the ERP for the criteria on the form (htmx)."""
    check = Checker()
    segment = parse_segment(campaign_data_from_form(request.form)["segment"], check)
    count, problem = None, None
    field_problems: list[tuple[str, str]] = []
    if check.errors:
        problem = next(iter(check.errors.values()))
    else:
        try:
            count = audience_count(segment, current_app.config)
        except erp.ErpError as error:
            problem, field_problems = _erp_problem(error)
    return render_template(
        "campaigns/_audience.html",
        count=count,
        problem=problem,
        field_problems=field_problems,
        initial=False,
    )


@bp.post("/exclusions")
@requires(Role.SUPERVISOR)
def campaign_exclusions() -> str:
    """The live count of the form's exclusions: how many of the audience each leaves out
    and how many remain (htmx; an ERP segment's is estimated from a sample). On an edit
    form, ``?campaign_id=`` names the campaign, whose own messages and contacts count
    as no other campaign's."""
    data = campaign_data_from_form(request.form)
    check = Checker()
    segment = parse_segment(data["segment"], check)
    file_id, phone_column = parse_audience_file(data, check)
    cap = parse_frequency_cap(data["frequency_cap_days"], check)
    exclude_running = parse_flag(data["exclude_running"], check, "exclude_running")
    campaign_id = request.args.get("campaign_id", type=int)
    counts, problem = None, None
    if check.errors:
        problem = next(iter(check.errors.values()))
    elif file_id is not None:  # a CSV audience: its rows, no ERP
        counts = exclusions.of_file(
            file_id, phone_column or "", cap, exclude_running, campaign_id, current_app.config
        )
        if counts is None:
            problem = _("There is no such audience file; upload it again.")
    else:
        try:
            counts = exclusions.estimate(
                segment, cap, exclude_running, campaign_id, current_app.config, ERP_FORM_TIMEOUT
            )
        except erp.ErpError as error:
            problem, _fields = _erp_problem(error)
        except ConfigError as error:  # no ERP configured: said, not a 500
            problem = str(error)
    return render_template(
        "campaigns/_exclusion_count.html",
        counts=counts,
        problem=problem,
        initial=False,
        exclusions_for=campaign_id,
    )


def _erp_problem(error: erp.ErpError) -> tuple[str, list[tuple[str, str]]]:
    """What an ERP error says to the operator: a refusal of the criteria (a 4xx, with the
    ERP's words at each field it names) is theirs to fix; anything else is an outage."""
    if not error.is_caller_error:
        return _("The ERP did not answer: %(m)s") % {"m": error.message}, []
    if not error.fields:
        return _("The ERP does not accept these criteria: %(m)s") % {"m": error.message}, []
    fields = [(str(SEGMENT_LABELS.get(name, name)), text) for name, text in error.fields.items()]
    return _("The ERP does not accept these criteria; check them:"), fields


@bp.get("/<int:campaign_id>")
def campaign_show(campaign_id: int) -> str:
    """One campaign: what it sends to whom, its actions, progress and history."""
    campaign = _campaign_or_404(campaign_id)
    progress = get_progress(campaign)
    return render_template(
        "campaigns/show.html",
        campaign=campaign,
        actions=_actions(campaign),
        **_series_facts(campaign),
        activity=queries.campaign_activity(campaign_id),
        progress=progress,
        chart=throughput_chart(progress),
        variables=template_parts.keys(campaign.template),
        # The languages its recipients may get, with a language field to choose by.
        languages=languages.languages(campaign.template) if campaign.language_field else [],
    )


def _actions(campaign: Campaign) -> set[str]:
    return allowed_actions(campaign.status, repeating=campaign.recurrence is not None)


def _series_facts(campaign: Campaign) -> dict[str, Any]:
    """A recurring campaign's rule in words, next run and latest runs (with their figures);
    a run's series (templates/campaigns/_series.html)."""
    if campaign.recurrence is None:
        return {"series": campaign.recurrence_of}
    runs, runs_total = queries.series_runs(campaign.id)
    return {
        "repeats": recurrence.describe(campaign.recurrence),
        "next_run_at": queries.next_run_at(campaign),
        "runs": runs,
        "runs_total": runs_total,
        "run_totals": counters.totals_of(db.session, [run.id for run in runs]),
    }


@bp.get("/<int:campaign_id>/progress")
def campaign_progress(campaign_id: int):
    """The polled progress fragment; 286 stops the polling once the campaign is not live.

    ``shown`` is the status the page was drawn with: when it differs, the badge and the
    buttons come along out of band, so the page never offers an action that no longer applies.
    """
    campaign = _campaign_or_404(campaign_id)
    progress = get_progress(campaign)
    changed = request.args.get("shown") != campaign.status.value
    context: dict[str, Any] = {}
    if not changed:  # a change refetches both sections anyway (CAMPAIGN_CHANGED)
        context = _sections_behind(campaign, progress)
    response = make_response(
        render_template(
            "campaigns/_progress.html",
            campaign=campaign,
            progress=progress,
            chart=throughput_chart(progress),
            actions=_actions(campaign),
            oob=changed,
            **context,
        ),
        200 if progress.is_live else STOP_POLLING,
    )
    # The errors and the recipients were drawn for the old state (before the fan-out,
    # say): they fetch themselves again.
    return trigger(response, CAMPAIGN_CHANGED) if changed else response


ERRORS_REFRESH_SECONDS = 10


def _sections_behind(campaign: Campaign, progress: Progress) -> dict[str, Any]:
    """What the progress answer brings out of band besides itself, from what the poll says
    the page shows: the Errors section when the failed and skipped figures moved since it
    was drawn (``errors``); the recipients' count for the table's status filter, or the
    table's first page when it still lists nothing for want of an audience (``listed``,
    ``status``, ``q``: the table's own fields). The counters decide (O(1)); the breakdown
    and the first page are read only when they changed."""
    context: dict[str, Any] = {}
    # The section's figure and when it was drawn ride in the poll's URL: the breakdown
    # (a GROUP BY over the failed and skipped rows) is read again when the figure moved,
    # at most every ERRORS_REFRESH_SECONDS, not on every poll of a failing campaign.
    errors_shown = request.args.get("errors", type=int)
    errors_at = request.args.get("errors_at", type=int)
    now = int((progress.read_at or datetime.now(UTC)).timestamp())
    current = progress.failed + progress.skipped
    context |= {"errors_count": errors_shown, "errors_at": errors_at}
    if (
        errors_shown is not None
        and errors_shown != current
        and (errors_at is None or not 0 <= now - errors_at < ERRORS_REFRESH_SECONDS)
    ):
        context |= {
            "breakdown": recipients.error_breakdown(campaign.id),
            "can_retry": _can_retry(campaign),
            "errors_oob": True,
            "errors_count": current,
            "errors_at": now,
        }
    listed = request.args.get("listed", type=int)
    filters = recipients.RecipientFilters.from_args(request.args)
    if listed is None or filters.q:  # no table yet, or a search (which is not counted)
        return context
    if listed == 0 and not filters.narrowed and progress.total > 0:
        page = recipients.recipient_page(campaign.id, filters)
        context |= {"table_oob": True}
    else:
        total = recipients.rows_in_status(progress.counts, filters.status, replied=filters.replied)
        page = recipients.RecipientPage([], None, total)
        context |= {"count_oob": True}
    return context | {
        "page": page,
        "filters": filters,
        "csv_formats": csvfiles.offered_formats(),
    }


@bp.get("/<int:campaign_id>/receipts")
def campaign_receipts(campaign_id: int):
    """Delivered and read figures after completion, polled slowly for a limited time."""
    progress = get_progress(_campaign_or_404(campaign_id))
    body = render_template("campaigns/_receipts.html", progress=progress, receipts=True)
    return body, 200 if progress.follows_receipts else STOP_POLLING


@bp.get("/<int:campaign_id>/dry-run")
def campaign_dry_run(campaign_id: int) -> str:
    """The first messages exactly as they would go out; nothing is sent."""
    campaign = _campaign_or_404(campaign_id)
    limit = min(max(request.args.get("n", 10, type=int) or 10, 1), 100)
    rows, problem = [], None
    try:
        rows = dry_run(campaign, current_app.config, limit)
    except erp.ErpError as error:
        problem, fields = _erp_problem(error)
        problem = " ".join([problem, *(f"{label}: {text}." for label, text in fields)])
    return render_template("campaigns/_dry_run.html", campaign=campaign, rows=rows, problem=problem)


# The checkbox by Send now and Schedule that confirms the pre-flight check's warnings.
CONFIRM_LABEL = _l("I have read the warnings and want to go ahead")


def _confirmed() -> frozenset[str]:
    """The warnings the operator confirmed by ticking the box (its value names those the
    panel showed; sent only when ticked): one found since, which they never saw, is not."""
    return frozenset(filter(None, request.form.get("confirm", "").split(",")))


@bp.get("/<int:campaign_id>/preflight")
def campaign_preflight(campaign_id: int) -> str:
    """The pre-flight check's panel (htmx, after the page: it asks the ERP), with the
    Send now and Schedule controls out of band: disabled while something blocks, and the
    confirmation checkbox by them while a warning needs it."""
    campaign = _campaign_or_404(campaign_id)
    actions = _actions(campaign)
    if not actions & {"send_now", "schedule"}:
        abort(404)  # started or finished: nothing to check before it goes
    return render_template(
        "campaigns/_preflight.html",
        campaign=campaign,
        check=preflight.check(campaign, current_app.config),
        actions=actions,
    )


def _operator_time(raw: str) -> datetime:
    """A datetime-local value, in the operator's time zone (their preference)."""
    if not raw:
        raise Invalid({"scheduled_at": _("Enter a date and time.")})
    try:
        naive = datetime.fromisoformat(raw)
    except ValueError:
        raise Invalid({"scheduled_at": _("Enter a date and time.")}) from None
    return naive.replace(tzinfo=current_zone()) if naive.tzinfo is None else naive


def _run_action(
    campaign_id: int,
    action,
    *args,
    done: Callable[[Campaign], str] | None = None,
    **options: Any,
) -> Response:
    """Run an operator's action (``options``: its keyword arguments); flash its refusal, or
    what happened (``done``, given the campaign after the action). A redirect follows, also
    for htmx (HX-Redirect), so the flash shows on the page drawn next."""
    _campaign_or_404(campaign_id)
    try:
        campaign = action(campaign_id, *args, current_user.id, **options)
    except Blocked as blocked:
        reasons = " ".join(finding.message for finding in blocked.preflight.blocking)
        flash(
            _("The pre-flight check stops this campaign: %(reasons)s") % {"reasons": reasons},
            "error",
        )
    except ConfirmationRequired as required:
        # The service's words name the API's "confirm"; the page names its checkbox, which
        # the pre-flight panel drawn next shows.
        flash(
            _(
                "Not yet: the pre-flight check has warnings to confirm first. %(warnings)s"
                " Tick “%(confirm)s” by the buttons, then press the button again."
            )
            % {
                "warnings": " ".join(w.message for w in required.preflight.to_confirm),
                "confirm": CONFIRM_LABEL,
            },
            "error",
        )
    except (Invalid, ServiceError) as error:
        flash(next(iter(error.errors.values())), "error")
    else:
        if done is not None and isinstance(campaign, Campaign):
            flash(done(campaign), "success")
    return redirect_to(url_for("campaigns.campaign_show", campaign_id=campaign_id))


def _sending_started(campaign: Campaign) -> str:
    return _("Sending started: the recipients are being loaded, then sent at the pace.")


def _paused(campaign: Campaign) -> str:
    waiting = get_progress(campaign).in_flight
    return ngettext(
        "Paused — %(n)s message waits.",
        "Paused — %(n)s messages wait.",
        waiting,
        n=format_number(waiting),
    )


def _resumed(campaign: Campaign) -> str:
    waiting = get_progress(campaign).in_flight
    return ngettext(
        "Sending resumed — %(n)s message to go.",
        "Sending resumed — %(n)s messages to go.",
        waiting,
        n=format_number(waiting),
    )


def _cancelled(campaign: Campaign) -> str:
    progress = get_progress(campaign)
    return _("Cancelled: %(sent)s sent, %(cancelled)s cancelled.") % {
        "sent": format_number(progress.sent),
        "cancelled": format_number(progress.cancelled),
    }


@bp.post("/<int:campaign_id>/schedule")
@requires(Role.SUPERVISOR)
def campaign_schedule(campaign_id: int) -> Response:
    """Schedule for a date and time in the operator's time zone."""
    raw = request.form.get("scheduled_at", "")
    try:
        # A recurring campaign's time is optional: it starts repeating at its next
        # occurrence (not before the time, if one is given).
        when = None if not raw and _repeats(campaign_id) else _operator_time(raw)
    except Invalid as invalid:
        flash(invalid.errors["scheduled_at"], "error")
        return redirect_to(url_for("campaigns.campaign_show", campaign_id=campaign_id))
    return _run_action(campaign_id, schedule_campaign, when, confirm=_confirmed())


def _repeats(campaign_id: int) -> bool:
    return _campaign_or_404(campaign_id).recurrence is not None


@bp.post("/<int:campaign_id>/unschedule")
@requires(Role.SUPERVISOR)
def campaign_unschedule(campaign_id: int) -> Response:
    """Back to draft."""
    return _run_action(campaign_id, unschedule_campaign)


@bp.post("/<int:campaign_id>/send-now")
@requires(Role.SUPERVISOR)
def campaign_send_now(campaign_id: int) -> Response:
    """Start sending at once."""
    return _run_action(campaign_id, send_campaign_now, done=_sending_started, confirm=_confirmed())


@bp.post("/<int:campaign_id>/pause")
@requires(Role.SUPERVISOR)
def campaign_pause(campaign_id: int) -> Response:
    """Stop sending until resumed."""
    return _run_action(campaign_id, pause_campaign, done=_paused)


@bp.post("/<int:campaign_id>/resume")
@requires(Role.SUPERVISOR)
def campaign_resume(campaign_id: int) -> Response:
    """Carry on where it stopped."""
    return _run_action(campaign_id, resume_campaign, done=_resumed)


@bp.post("/<int:campaign_id>/cancel")
@requires(Role.SUPERVISOR)
def campaign_cancel(campaign_id: int) -> Response:
    """Cancel for good (the page asks to confirm)."""
    return _run_action(campaign_id, cancel_campaign, done=_cancelled)


@bp.post("/<int:campaign_id>/test-send")
@requires(Role.SUPERVISOR)
def campaign_test_send(campaign_id: int):
    """Send this campaign's message to one number (an htmx fragment says what happened)."""
    _campaign_or_404(campaign_id)
    phone = request.form.get("phone", "")
    try:
        message_id = send_test_message(campaign_id, phone, current_user.id)
    except ServiceError as error:
        html = render_template(
            "campaigns/_test_send.html", campaign_id=campaign_id, phone=phone, error=error.message
        )
        return html, 422
    return render_template(
        "campaigns/_test_send.html", campaign_id=campaign_id, phone=phone, message_id=message_id
    )


@bp.post("/<int:campaign_id>/duplicate")
@requires(Role.SUPERVISOR)
def campaign_duplicate(campaign_id: int) -> Response:
    """A new draft like this one."""
    _campaign_or_404(campaign_id)
    copy = duplicate_campaign(campaign_id, current_user.id)
    flash(_("This is a copy; edit it, then schedule it."), "success")
    return redirect_to(url_for("campaigns.campaign_edit", campaign_id=copy.id))


def _recipient_fragment(template: str, campaign_id: int) -> str:
    campaign = _campaign_or_404(campaign_id)
    filters = recipients.RecipientFilters.from_args(request.args)
    page = recipients.recipient_page(campaign_id, filters, request.args.get("after", type=bigint))
    return render_template(
        template,
        campaign=campaign,
        filters=filters,
        page=page,
        statuses=list(MessageStatus),
        csv_formats=csvfiles.offered_formats(),
    )


@bp.get("/<int:campaign_id>/recipients")
def campaign_recipients(campaign_id: int) -> str:
    """The recipients: status filter, search, export link and the first page of the table."""
    return _recipient_fragment("campaigns/_recipients.html", campaign_id)


@bp.get("/<int:campaign_id>/recipients/rows")
def campaign_recipient_rows(campaign_id: int) -> str:
    """The rows after ``after`` (keyset) and the control that loads the ones after them."""
    return _recipient_fragment("campaigns/_recipient_rows.html", campaign_id)


@bp.get("/<int:campaign_id>/recipients.csv")
def campaign_recipients_csv(campaign_id: int) -> Response:
    """Every recipient as CSV, streamed as it is read (a million rows never sit in memory),
    in the reader's spreadsheet format or the one ``?format=`` names (csvfiles)."""
    campaign = _campaign_or_404(campaign_id)
    fmt = csvfiles.chosen_format(request.args.get("format"))
    zone = current_zone()
    chunks = csvfiles.chunks(
        recipients.recipient_csv_header(zone.key),
        recipients.recipient_csv_rows(campaign_id),
        fmt,
        zone,
    )
    # The campaign's name and today's date where the reader is: promocao-de-natal-2026-12-04.csv
    disposition = csvfiles.content_disposition(
        campaign.name, datetime.now(zone).date(), fallback=f"campaign-{campaign_id}"
    )
    return Response(
        stream_with_context(chunks),
        mimetype="text/csv",
        headers={"Content-Disposition": disposition},
    )


@bp.get("/<int:campaign_id>/errors")
def campaign_errors(campaign_id: int) -> str:
    """Failed and skipped messages by error code, what each code means, and "retry failed"."""
    campaign = _campaign_or_404(campaign_id)
    return render_template(
        "campaigns/_errors.html",
        campaign=campaign,
        breakdown=recipients.error_breakdown(campaign_id),
        can_retry=_can_retry(campaign),
    )


def _can_retry(campaign: Campaign) -> bool:
    """Whether "retry failed" applies: to its status, and not once the numbers are erased."""
    return campaign.status in RETRY_FAILED_STATUSES and campaign.data_erased_at is None


@bp.post("/<int:campaign_id>/retry-failed")
@requires(Role.SUPERVISOR)
def campaign_retry_failed(campaign_id: int) -> Response:
    """Send again the failed messages whose errors may pass (the page asks to confirm)."""

    def retry(campaign_id: int, user_id: int) -> None:
        retried = retry_failed(campaign_id, user_id)
        flash(
            ngettext(
                "%(n)s failed message will be sent again.",
                "%(n)s failed messages will be sent again.",
                retried,
                n=format_number(retried),
            ),
            "success",
        )

    return _run_action(campaign_id, retry)
