"""Personal data (LGPD): recipients' data erased after the retention period, and one
person's data erased on request.

What Disparo stores about a person, and where:

- ``messages``: the phone, the ERP's customer ref, the customer fields the
  template's variables use (``customer_data``), the variables filled in
  (``params``), the provider's error text (which can echo the number), and what the
  person answered (``reply_text``, ``clicked_button``: ``answers.py``), and their
  time zone (``time_zone``: from the number or a customer field). Erased
  (NULL, ``{}``) by both; the status, error code, times (a reply's and a click's
  too) and the campaign's counters stay, so progress, reports and the CSV export
  still add up. An answer arriving after the erasure counts but keeps no words.
- ``suppressions``: an opt-out's number and reason (which can quote the person's
  reply). Kept while the opt-out stands, whatever the retention (the person asked
  not to be contacted; forgetting it would message them again); an erasure keeps
  it only as a one-way hash (``suppressions.keep_only_as_hash``), which the
  fan-out and the test send still match.
- ``undeliverable_numbers``: a number WhatsApp could not deliver to (131026), as its
  keyed hash only, and when; deleted UNDELIVERABLE_DAYS later by
  ``maintenance.reconcile``, or with the person's data on request.
- ``contact_history`` and ``contact_locks``: when each campaign last contacted the
  number (the frequency cap), and the number's lock row, as its keyed hash only;
  deleted CONTACT_HISTORY_DAYS later by ``maintenance.reconcile``, or with the person's
  data on request (``contact_history.forget``).
- ``budget_recipients``: the 24-hour messaging budget's recipients, as keyed hashes, for
  24 hours (``maintenance.reconcile`` deletes older rows); an erasure replaces the
  person's hash with a random token, so they still count until the window leaves them
  (Meta counts them) but nothing links the row to the number.
- ``audience_files`` / ``audience_rows``: an uploaded CSV audience's rows
  (``campaigns/audiences.py``). A file no campaign uses is deleted a day after its
  upload (``maintenance.reconcile``); one used only by campaigns the retention erased
  is deleted with the last of them; an erasure deletes the person's rows from every
  file (a cell that is the number, however written).
- ``campaign_activity``: a test send's masked number (``+55119876****``, the
  ``phone`` of its detail's parameters). Cleared with the campaign's data, or with
  the person's when it is theirs.
- ``idempotency_keys``: the API's kept response to an opt-out created with an
  ``Idempotency-Key`` holds its number for the key's 24 hours; an erasure deletes
  those rows (a retry with such a key then runs again instead of replaying).
- ``login_attempts`` (operators' emails and addresses): pruned after 30 days by
  ``maintenance.reconcile``. Notifications, logs and job arguments carry ids and
  counts, never a number. The mock WhatsApp's log (``mock_whatsapp_messages``)
  exists only in development and tests.

The retention task walks each expired campaign's messages in id order,
``RETENTION_BATCH_ROWS`` a statement and a commit, at most
``RETENTION_BATCHES_PER_RUN`` statements a run, so no run holds a lock for long
and a large backlog is worked off over several runs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app

from app import AnySession, db, rows_changed
from campaigns import (
    audiences,
    audit,
    campaign_states,
    contact_history,
    message_states,
    phones,
    ratelimit,
    reasons,
)
from campaigns.clock import database_now
from campaigns.i18n import _
from campaigns.models import (
    FINISHED_CAMPAIGN_STATUSES,
    Campaign,
    CampaignActivity,
    IdempotencyKey,
    MessageStatus,
    Suppression,
    User,
)
from campaigns.services import ServiceError, undeliverable
from campaigns.services.suppressions import keep_only_as_hash, phone_hash

logger = logging.getLogger(__name__)

RETENTION_BATCH_ROWS = 5000
RETENTION_BATCHES_PER_RUN = 40
TEST_SENT = "test_sent"
WAITING = (MessageStatus.PENDING, MessageStatus.QUEUED, MessageStatus.RETRYING)
FINISHED = [status.value for status in FINISHED_CAMPAIGN_STATUSES]

# What an erased message keeps: its status, code, times and counts.
ERASED_VALUES = (
    "phone = NULL, customer_ref = NULL, customer_data = '{}'::jsonb, params = NULL,"
    " error_text = NULL, reply_text = NULL, clicked_button = NULL, time_zone = NULL"
)
NOT_ERASED = (
    "(phone IS NOT NULL OR customer_ref IS NOT NULL OR customer_data <> '{}'::jsonb"
    " OR params IS NOT NULL OR error_text IS NOT NULL OR reply_text IS NOT NULL"
    " OR clicked_button IS NOT NULL OR time_zone IS NOT NULL)"
)
# -- the next batch of an expired campaign's messages, in id order after :after. The
# campaign row is held FOR SHARE and checked still finished: a "retry failed" that
# reopens it waits for this batch, or this batch finds it reopened and erases nothing.
ERASE_BATCH = sa.text(
    f"UPDATE messages SET {ERASED_VALUES} WHERE id IN ("
    " SELECT id FROM messages WHERE campaign_id = ("
    "   SELECT id FROM campaigns WHERE id = :campaign_id"
    "   AND status = ANY(CAST(:finished AS campaign_status[])) FOR SHARE)"
    f" AND id > :after AND {NOT_ERASED} ORDER BY id LIMIT :limit)"
    " RETURNING id"
)
# -- one person's messages in campaigns not yet erased: through the unique (campaign,
# phone) index for the rows not skipped, and the campaign's skipped rows for the rest,
# so no index on the phone alone is needed for this rare request
PERSON_MESSAGES = sa.text(
    "SELECT m.id, m.campaign_id, m.status::text AS status FROM campaigns c"
    " CROSS JOIN LATERAL (SELECT id, campaign_id, status FROM messages"
    "   WHERE campaign_id = c.id AND phone = :phone AND status <> 'skipped'"
    "  UNION ALL SELECT id, campaign_id, status FROM messages"
    "   WHERE campaign_id = c.id AND status = 'skipped' AND phone = :phone) AS m"
    " WHERE c.data_erased_at IS NULL ORDER BY m.id"
)
LOCK_MESSAGES = sa.text(
    "SELECT id FROM messages WHERE id = ANY(CAST(:ids AS bigint[])) ORDER BY id FOR UPDATE"
)
ERASE_MESSAGES = sa.text(
    f"UPDATE messages SET {ERASED_VALUES} WHERE id = ANY(CAST(:ids AS bigint[]))"
)


@dataclass(frozen=True)
class ErasureReport:
    """What an erasure found (a preview) or did, per store. Never the number itself."""

    phone_tail: str  # its last 4 digits, to say which number without storing it
    fingerprint: str  # the start of its keyed hash: matches the opt-out kept as a hash
    messages: int  # message rows holding the number
    campaigns: int  # in how many campaigns
    waiting: int  # of those, not sent yet: cancelled, never sent
    in_call: int  # of those, in a call right now: its outcome is kept, the number not
    opt_out: bool  # on the opt-out list in the clear: kept, as a hash only
    opt_out_hashed: bool  # already listed as a hash
    undeliverable: bool  # in the undeliverable store (131026): deleted
    activity: int  # test sends to the number in campaigns' activity
    done: bool  # False: a preview, nothing changed yet
    contacted: bool = False  # in the contact history (the frequency cap): deleted
    audience_rows: int = 0  # rows of uploaded CSV audiences with the number: deleted

    @property
    def nothing_stored(self) -> bool:
        return not (
            self.messages
            or self.opt_out
            or self.undeliverable
            or self.activity
            or self.contacted
            or self.audience_rows
        )

    def details(self) -> dict[str, object]:
        """For the audit trail: counts and the fingerprint, never the number."""
        return {
            "phone_last4": self.phone_tail,
            "phone_hash_prefix": self.fingerprint,
            "messages": self.messages,
            "campaigns": self.campaigns,
            "cancelled": self.waiting,
            "opt_out_kept_as_hash": self.opt_out or self.opt_out_hashed,
            "undeliverable_deleted": self.undeliverable,
            "contact_history_deleted": self.contacted,
            "activity_entries": self.activity,
            "audience_rows": self.audience_rows,
        }


def normalised_phone(raw: str) -> str:
    """The E.164 form of what an admin typed, or a ServiceError at the phone field."""
    phone = phones.normalise(raw, current_app.config["PHONE_DEFAULT_REGION"])
    if phone is None:
        raise ServiceError(
            _("Enter a phone number with its area code, or in international form (+…)."), "phone"
        )
    return phone


def _masked(phone: str) -> str:
    """How a test send's number is kept in the campaign's activity."""
    return phone[:-4] + "****"


def _test_sent_to(phone: str) -> sa.ColumnElement[bool]:
    """An activity entry's detail names this number (masked) as a test send's."""
    return CampaignActivity.detail_params["phone"].astext == _masked(phone)


def _person_rows(session: AnySession, phone: str, *, lock: bool) -> list[sa.Row]:
    rows = session.execute(PERSON_MESSAGES, {"phone": phone}).all()
    if lock and rows:
        # Locked, then read again as locked: a claim or a webhook that moved one
        # meanwhile has committed by now, and none moves them until this commits.
        session.execute(LOCK_MESSAGES, {"ids": [row.id for row in rows]})
        rows = session.execute(PERSON_MESSAGES, {"phone": phone}).all()
    return list(rows)


def _report(
    session: AnySession,
    phone: str,
    rows: list[sa.Row],
    *,
    done: bool,
    audience_rows: int = 0,
) -> ErasureReport:
    statuses = [MessageStatus(row.status) for row in rows]
    digest = phone_hash(phone)
    listed = session.scalars(
        sa.select(Suppression.phone).where(
            sa.or_(Suppression.phone == phone, Suppression.phone_hash == digest)
        )
    ).all()
    activity = session.scalar(
        sa.select(sa.func.count()).where(CampaignActivity.action == TEST_SENT, _test_sent_to(phone))
    )
    return ErasureReport(
        phone_tail=phone[-4:],
        fingerprint=digest[:12],
        messages=len(rows),
        campaigns=len({row.campaign_id for row in rows}),
        waiting=sum(status in WAITING for status in statuses),
        in_call=statuses.count(MessageStatus.SENDING),
        opt_out=phone in listed,
        opt_out_hashed=None in listed,
        undeliverable=undeliverable.is_remembered(session, phone),
        activity=activity or 0,
        done=done,
        contacted=contact_history.is_remembered(session, phone),
        audience_rows=audience_rows,
    )


def preview_erasure(raw_phone: str) -> ErasureReport:
    """What erasing this number would remove, store by store; changes nothing."""
    phone = normalised_phone(raw_phone)
    in_files = audiences.person_rows(db.session, phone, current_app.config["PHONE_DEFAULT_REGION"])
    report = _report(
        db.session,
        phone,
        _person_rows(db.session, phone, lock=False),
        done=False,
        audience_rows=len(in_files),
    )
    db.session.rollback()
    return report


def erase_person(raw_phone: str, actor: User | None) -> ErasureReport:
    """Erase one person's number and data from every store, in one transaction; commits.

    Messages not sent yet are cancelled first (code ``erased``), so none goes out
    after this; one in a call right now keeps its outcome, and if it comes back to
    wait it is cancelled at its next claim (``message_states.claim``). An opt-out
    stays, as a hash only. A number Disparo does not hold is a report with
    nothing in it, not an error.
    """
    phone = normalised_phone(raw_phone)
    session = db.session
    # Before the messages' locks: found by an index, but no lock is held while it reads.
    in_files = audiences.person_rows(session, phone, current_app.config["PHONE_DEFAULT_REGION"])
    rows = _person_rows(session, phone, lock=True)
    report = _report(session, phone, rows, done=True, audience_rows=len(in_files))
    ids = [row.id for row in rows]
    waiting = [row.id for row in rows if MessageStatus(row.status) in WAITING]
    message_states.cancel_erased(session, waiting, WAITING)
    if ids:
        session.execute(ERASE_MESSAGES, {"ids": ids})
    audiences.erase_person_rows(session, in_files)
    keep_only_as_hash(session, phone)
    undeliverable.forget(session, phone)
    contact_history.forget(session, phone)
    ratelimit.forget_budget_recipient(session, phone_hash(phone))
    # The number as the API wrote it in a kept response: "phone":"+5511…" (JSON).
    session.execute(
        sa.delete(IdempotencyKey).where(
            IdempotencyKey.response_body.contains(json.dumps(phone), autoescape=True)
        )
    )
    session.execute(
        sa.update(CampaignActivity)
        .where(CampaignActivity.action == TEST_SENT, _test_sent_to(phone))
        .values(detail_code=None, detail_params=None)
    )
    # In this transaction: the erasure and its record commit together, or neither does.
    audit.record(
        session,
        "data.erase",
        actor=actor,
        target_type="phone",
        target_label=audit.mask_phone(phone),
        details=report.details(),
    )
    session.commit()
    logger.info(
        "personal data erased for a number ending %s by user %s: %d messages in %d campaigns,"
        " %d cancelled",
        report.phone_tail,
        actor.id if actor else None,
        report.messages,
        report.campaigns,
        report.waiting,
    )
    return report


@dataclass(frozen=True)
class RetentionRun:
    campaigns_erased: list[int]  # campaigns finished in this run
    messages: int  # message rows erased in this run
    batches: int  # statements run


def erase_expired(
    retention_days: int,
    *,
    batch_rows: int = RETENTION_BATCH_ROWS,
    max_batches: int = RETENTION_BATCHES_PER_RUN,
) -> RetentionRun:
    """Erase the recipients' data of campaigns that ended over ``retention_days`` ago.

    A campaign ends completed, cancelled or failed (``completed_at``); one still
    sending or paused is never touched. Each batch commits on its own; a campaign
    whose last batch is done gets ``data_erased_at`` and an activity entry.
    """
    session = db.session
    cutoff = database_now(session) - timedelta(days=retention_days)
    expired = session.scalars(
        sa.select(Campaign.id)
        .where(
            Campaign.status.in_(FINISHED_CAMPAIGN_STATUSES),
            Campaign.completed_at < cutoff,
            Campaign.data_erased_at.is_(None),
        )
        .order_by(Campaign.completed_at, Campaign.id)
    ).all()
    session.rollback()
    finished: list[int] = []
    erased = batches = 0
    for campaign_id in expired:
        after = 0
        while batches < max_batches:
            params = {
                "campaign_id": campaign_id,
                "finished": FINISHED,
                "after": after,
                "limit": batch_rows,
            }
            ids = session.execute(ERASE_BATCH, params).scalars().all()
            batches += 1
            erased += len(ids)
            if len(ids) == batch_rows:
                session.commit()
                after = max(ids)
                continue
            if _mark_erased(session, campaign_id, cutoff):
                finished.append(campaign_id)
                # Its CSV file, if no campaign left needs it.
                audiences.delete_if_erased(session, campaign_id)
            session.commit()
            break
        if batches >= max_batches:
            break
    if erased or finished:
        logger.info(
            "retention: erased the personal data of %d messages; %d campaigns done",
            erased,
            len(finished),
        )
    return RetentionRun(finished, erased, batches)


def _mark_erased(session: AnySession, campaign_id: int, cutoff: datetime) -> bool:
    """Stamp the campaign as erased, if it is still finished and expired (caller commits)."""
    marked = rows_changed(
        session,
        sa.update(Campaign)
        .where(
            Campaign.id == campaign_id,
            Campaign.status.in_(FINISHED_CAMPAIGN_STATUSES),
            Campaign.completed_at < cutoff,
            Campaign.data_erased_at.is_(None),
        )
        .values(data_erased_at=sa.func.now()),
    )
    if not marked:
        return False
    session.execute(
        sa.update(CampaignActivity)
        .where(CampaignActivity.campaign_id == campaign_id, CampaignActivity.action == TEST_SENT)
        .values(detail_code=None, detail_params=None)
    )
    campaign_states.record_activity(
        session, campaign_id, None, "data_erased", reasons.Reason(reasons.RETENTION_REACHED)
    )
    return True
