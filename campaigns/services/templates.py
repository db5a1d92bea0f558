"""Message templates: drafts, edits, review by the provider and its outcome.

What Disparo itself learns or decides about a template's status and category (an edit,
a submission, the review sync's read) is stamped with the database's clock in
``status_event_at`` / ``category_event_at``, as the template webhooks and the import
stamp theirs (``template_webhooks.py``): a late or replayed webhook from before it (a
PAUSED before a newer read, a REJECTED of the submission before an edit) is older and
ignored, and cannot undo it.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import sqlalchemy as sa
from flask import current_app

from app import db
from campaigns import (
    media,
    notifications,
    providers,
    queues,
    template_parts,
    template_webhooks,
)
from campaigns.clock import clock_now, database_now
from campaigns.i18n import _
from campaigns.labels import label
from campaigns.models import (
    Campaign,
    CampaignStatus,
    MediaFile,
    MessageTemplate,
    Sender,
    TemplateStatus,
)
from campaigns.services import Conflict, NotFound, ServiceError
from campaigns.validation import TemplateFields

logger = logging.getLogger(__name__)


EDITABLE_TEMPLATE_STATUSES = frozenset(
    {TemplateStatus.DRAFT, TemplateStatus.REJECTED, TemplateStatus.APPROVED, TemplateStatus.PAUSED}
)


SUBMITTABLE_TEMPLATE_STATUSES = frozenset({TemplateStatus.DRAFT, TemplateStatus.REJECTED})


ACTIVE_CAMPAIGN_STATUSES = frozenset(
    {CampaignStatus.SCHEDULED, CampaignStatus.SENDING, CampaignStatus.PAUSED}
)


def default_sender() -> Sender:
    sender = db.session.scalar(sa.select(Sender).order_by(Sender.id).limit(1))
    if sender is None:
        raise ServiceError(_("Create a sender first: templates live in its WhatsApp account."))
    return sender


def _template_name_taken(fields: TemplateFields, sender_id: int, exclude_id: int | None) -> bool:
    query = sa.select(MessageTemplate.id).where(
        MessageTemplate.sender_id == sender_id,
        MessageTemplate.name == fields.name,
        MessageTemplate.language == fields.language,
    )
    if exclude_id is not None:
        query = query.where(MessageTemplate.id != exclude_id)
    return db.session.scalar(query) is not None


def create_template(
    fields: TemplateFields, user_id: int, sender_id: int | None = None
) -> MessageTemplate:
    """Create a draft template in a sender's WhatsApp Business Account."""
    sender = db.session.get(Sender, sender_id) if sender_id else default_sender()
    if sender is None:
        raise ServiceError(_("There is no such sender."), "sender_id")
    if _template_name_taken(fields, sender.id, None):
        raise ServiceError(
            _("This account already has a template with that name and language."), "name"
        )
    template = MessageTemplate(
        sender_id=sender.id, created_by_id=user_id, status=TemplateStatus.DRAFT
    )
    _apply_template_fields(template, fields)
    db.session.add(template)
    db.session.commit()
    return template


def _apply_template_fields(template: MessageTemplate, fields: TemplateFields) -> None:
    if fields.header_media_file_id is not None:
        media_file = db.session.get(MediaFile, fields.header_media_file_id)
        if media_file is None or media_file.kind != fields.header_format:
            raise ServiceError(
                _("There is no such file for a header of this kind; upload it again."),
                "header_media_file_id",
            )
    for name, value in fields.__dict__.items():
        setattr(template, name, value)


def update_template(template_id: int, fields: TemplateFields) -> MessageTemplate:
    """Edit a template; an approved one goes back to draft and must be resubmitted,
    unless only what its header shows changed (SHOWN_IN_HEADER: Meta does not review it)."""
    template = _get_template_for_update(template_id)
    if template.status not in EDITABLE_TEMPLATE_STATUSES:
        raise ServiceError(
            _("A template with status “%(status)s” cannot be edited.")
            % {"status": label(template.status)}
        )
    in_use = db.session.scalar(
        sa.select(Campaign.name)
        .where(Campaign.template_id == template.id, Campaign.status.in_(ACTIVE_CAMPAIGN_STATUSES))
        .limit(1)
    )
    if in_use:
        raise ServiceError(
            _(
                "Campaign “%(name)s” is scheduled or sending with this template;"
                " create a new template instead."
            )
            % {"name": in_use}
        )
    if _template_name_taken(fields, template.sender_id, template.id):
        raise ServiceError(
            _("This account already has a template with that name and language."), "name"
        )
    reviewed = [
        name
        for name, value in fields.__dict__.items()
        if name not in template_parts.SHOWN_IN_HEADER and getattr(template, name) != value
    ]
    _apply_template_fields(template, fields)
    if not reviewed and template.status is not TemplateStatus.REJECTED:
        # Only what its header shows changed (media, a place): Meta reviewed the rest, so
        # the template keeps its status (an imported media header is given its media so).
        db.session.commit()
        return template
    template.status = TemplateStatus.DRAFT
    template.status_reason = None
    template.provider_template_id = None
    template.submitted_at = None
    # The operator's version from now on: a webhook about the one before is older.
    template.status_event_at = template.category_event_at = clock_now(db.session)
    db.session.commit()
    return template


def _get_template_for_update(template_id: int) -> MessageTemplate:
    template = db.session.scalar(
        sa.select(MessageTemplate)
        .where(MessageTemplate.id == template_id)
        .with_for_update()
        .execution_options(populate_existing=True)  # as locked: a webhook's time included
    )
    if template is None:
        raise NotFound(_("There is no such template."))
    return template


def submit_template(template_id: int) -> MessageTemplate:
    """Send a draft (or rejected) template to the provider for review."""
    # A media header's sample, for Meta's review: read (a link fetched) before the row is
    # locked, so webhooks and edits of the template do not wait on a download.
    unlocked = db.session.get(MessageTemplate, template_id)
    sample = media.review_sample(unlocked) if unlocked is not None else None
    db.session.commit()
    template = _get_template_for_update(template_id)
    if template.status not in SUBMITTABLE_TEMPLATE_STATUSES:
        raise Conflict(
            _("Only draft or rejected templates can be submitted; this one is “%(s)s”.")
            % {"s": label(template.status)}
        )
    provider = providers.for_sender(template.sender, current_app.config)
    # Before the call: whatever WhatsApp says of this submission happens after it, and
    # what it said of the one before (a REJECTED replayed late) happened before it.
    asked_at = clock_now(db.session)
    try:
        submission = provider.submit_template(template, sample)
    except providers.ProviderError as error:
        db.session.rollback()
        raise ServiceError(error.message) from error
    before = template.status
    template.provider_template_id = submission.provider_template_id
    template.status = submission.status
    template.status_reason = None
    template.status_event_at = template.category_event_at = asked_at
    # The clock's time now, after WhatsApp accepted it (not the transaction's start): the
    # template import tells a template submitted during its listing by this time.
    template.submitted_at = sa.func.clock_timestamp()
    # Asked once the sender's provider is likely to have decided, in the same transaction:
    # a submitted template never waits without its check (the periodic sync follows later).
    check_at = database_now(db.session) + timedelta(seconds=provider.review_check_seconds)
    queues.defer_template_sync(db.session, template.id, check_at)
    notifications.record_template_review(db.session, template, before)  # decided at once
    db.session.commit()
    db.session.refresh(template)
    return template


def sync_template_status(template_id: int) -> MessageTemplate:
    """Ask the provider for a submitted template's status and record it."""
    template = _get_template_for_update(template_id)
    if template.provider_template_id is None:
        db.session.rollback()
        return template
    # The read's time, taken before the call as the import takes its listing's (the row
    # is locked meanwhile: no webhook applies until this commits).
    asked_at = clock_now(db.session)
    try:
        report = providers.for_sender(template.sender, current_app.config).template_status(template)
    except providers.ProviderError as error:
        db.session.rollback()
        raise ServiceError(error.message) from error
    told = template.status_event_at
    if told is not None and template_webhooks.may_be_after(told, asked_at):
        # A webhook of the read's own second: it may be the later (the import's rule).
        db.session.rollback()
        logger.info("template %s: a webhook may be newer than its status read", template_id)
        return template
    if report.status != template.status or report.reason != template.status_reason:
        logger.info("template %s: %s → %s", template.id, template.status, report.status)
    before = template.status
    template.status = report.status
    template.status_reason = report.reason
    template.status_event_at = asked_at
    notifications.record_template_review(db.session, template, before)
    db.session.commit()
    return template


def pending_template_ids() -> list[int]:
    return list(
        db.session.scalars(
            sa.select(MessageTemplate.id).where(MessageTemplate.status == TemplateStatus.PENDING)
        )
    )
