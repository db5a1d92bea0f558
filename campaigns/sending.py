"""The send: one message job's batch, from the limits to each message's outcome.

Called by the message jobs in ``jobs/tasks.py``; it never imports ``jobs``. A job
carries a batch of one campaign's messages (``queues.defer_sends``). The batch
checks its campaign, claims its messages (``sending``, committed before any call, so a
crash from there on leaves rows maintenance sends again: at-least-once), takes the
sender's and owner's limits for them in one limiter call, as a partial grant, then,
for the granted ones that are retries, their own retry limits in one more call (only
when there are such: a fresh batch's calls follow its grant with nothing between, which
is what a minimum gap can lose at the provider), and starts the calls at once on the
process's call pool (``calls.py``). What a limit holds back goes back to waiting, its
try and attempt given back, for a later job. Outcomes are recorded as the calls return, in one
transaction per group of calls that returned together.

Each message keeps its own tries (``messages.tries``): 3 on campaign-messages,
then 5 on message-retry. What an error means is decided by its code
(``providers/errors.py``): try this message again, later, without spending a try
(throttled, until the throttle deadline), give up on it, or pause the campaign.

Meta's error policies (docs/architecture.md, "Error policies"): a message held by the
per-user marketing limit (131049) moves to message-retry due MARKETING_LIMIT_RETRY_HOURS
later and fails if held again; one hit by the pair rate limit (131056) waits
PAIR_LIMIT_RETRY_SECONDS without spending a try, under the throttle deadline, and the
sender is not slowed; a throughput error (130429, or HTTP 429) waits the same way and
also slows the sender (``slowdown.py``); a number found undeliverable (131026) is remembered
(``services/undeliverable.py``) for later campaigns to skip.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeGuard

import sqlalchemy as sa
from sqlalchemy.orm import joinedload, load_only

from app import db
from campaigns import (
    callback_data,
    calls,
    campaign_states,
    contact_history,
    media,
    message_states,
    providers,
    pump,
    queues,
    ratelimit,
    slowdown,
    template_parts,
    tracked_links,
)
from campaigns.clock import database_now
from campaigns.models import (
    Campaign,
    CampaignStatus,
    HeaderFormat,
    MediaFile,
    Message,
    MessageStatus,
    MessageTemplate,
    Sender,
    TemplateStatus,
    User,
)
from campaigns.providers.base import ProviderError, SendError, SendResult
from campaigns.providers.errors import (
    FREQUENCY_CAP_CODE,
    OPT_OUT_CODES,
    UNDELIVERABLE_CODES,
    ErrorKind,
    classify,
)
from campaigns.services import undeliverable
from campaigns.services.suppressions import suppress_message

logger = logging.getLogger(__name__)

# Tries per message on each queue (the source documents' "3 attempts", then "5"), and
# the wait before each next try: base ** tries seconds (2, 4; then 3, 9, 27, 81).
SEND_TRIES, SEND_BACKOFF = 3, 2.0
RETRY_TRIES, RETRY_BACKOFF = 5, 3.0
# A throttled message waits about as long as it has been throttled, within these bounds.
THROTTLE_WAIT_MIN, THROTTLE_WAIT_MAX = 2.0, 60.0


# WhatsApp's media errors (download or upload): an upload it gave is no longer good.
MEDIA_ERROR_CODES = frozenset({131052, 131053})


# The campaign's columns a batch uses, with its sender, template and owner, in one
# statement (full rows of all four were 80 columns). Loaded, not lazy: the call threads
# read the sender and template without a session.
CAMPAIGN_LOAD = (
    load_only(
        Campaign.status,
        Campaign.sender_id,
        Campaign.template_id,
        Campaign.owner_id,
        Campaign.variable_mapping,  # its tracked links (campaigns/tracked_links.py)
        Campaign.language_field,  # whether its messages may have versions of their own
    ),
    joinedload(Campaign.sender).load_only(
        Sender.provider,
        Sender.phone_number_id,
        Sender.access_token,
        Sender.rate_limit_per_minute,
        Sender.min_interval_ms,
        Sender.throughput_factor,
        Sender.throughput_per_second,
        Sender.business_id,  # the 24-hour budget's portfolio, and its limit
        Sender.messaging_limit,
    ),
    joinedload(Campaign.template).load_only(
        MessageTemplate.name,
        MessageTemplate.language,
        MessageTemplate.body_text,
        MessageTemplate.parameter_format,
        MessageTemplate.header_format,
        MessageTemplate.header_text,
        MessageTemplate.header_media_link,
        MessageTemplate.header_media_file_id,
        MessageTemplate.header_location,
        MessageTemplate.buttons,
    ),
    joinedload(Campaign.owner).load_only(User.campaign_rate_limit_per_minute),
)


@dataclass
class BatchReport:
    """What became of a batch's messages (ids), for the job's log line and the tests."""

    sent: list[int] = field(default_factory=list)
    retrying: list[int] = field(default_factory=list)  # back to wait for another try
    throttled: list[int] = field(default_factory=list)
    pair_limited: list[int] = field(default_factory=list)  # 131056: later, no try spent
    marketing_held: list[int] = field(default_factory=list)  # 131049: message-retry, hours on
    failed: list[int] = field(default_factory=list)
    held: list[int] = field(default_factory=list)  # not granted by a limit: a later job
    stopped: list[int] = field(default_factory=list)  # paused or cancelled with the campaign
    skipped: int = 0  # no longer waiting (another job, the campaign moved them)


def _later(seconds: float) -> datetime:
    # A little jitter, so messages held back together don't all come back in one instant.
    return database_now(db.session) + timedelta(seconds=seconds + random.uniform(0.05, 0.25))


def send_batch(
    campaign_id: int, message_ids: Sequence[int], config: Mapping[str, Any], *, retry_queue: bool
) -> BatchReport:
    """Send a batch of one campaign's messages: limits, claim, overlapping calls, outcomes."""
    report = BatchReport()
    source = MessageStatus.RETRYING if retry_queue else MessageStatus.QUEUED
    prepared: dict[int, _Prepared] | None = None
    while True:
        campaign = db.session.get(
            Campaign, campaign_id, options=CAMPAIGN_LOAD, populate_existing=True
        )
        waiting = message_states.waiting(db.session, campaign_id, message_ids, source)
        report.skipped = len(message_ids) - len(waiting)
        if campaign is None or not waiting:
            db.session.rollback()
            return report
        if campaign.status is not CampaignStatus.SENDING:
            # Paused: back to pending, the pump queues them again on resume. Stopped:
            # cancelled.
            paused = campaign.status is CampaignStatus.PAUSED
            to = MessageStatus.PENDING if paused else MessageStatus.CANCELLED
            for message_id, _attempts in waiting:
                if message_states.transition(db.session, message_id, [source], to):
                    report.stopped.append(message_id)
            db.session.commit()
            return report
        if prepared is not None:
            break
        if campaign.template.header_media_file_id is None and not campaign.language_field:
            prepared = {}  # no template of this batch shows an uploaded file: nothing to read
            break
        try:
            # Before anything is claimed: an upload may take longer than a claim's lease.
            prepared = _prepared_media(campaign_id, [i for i, _ in waiting], config)
        except ProviderError as error:
            return _media_not_ready(campaign, waiting, error, config, source, report)
        if not prepared:
            break  # nothing to upload: the read goes on
        # The uploads ended the read's transaction: read again what may have changed.

    limits = ratelimit.send_limits(campaign.sender, campaign.owner)
    # Claimed and committed before the send limits are taken, so a granted call starts
    # right after its grant: what lies between them is what a minimum gap can lose at
    # the provider. What the limits then hold back is given back below.
    claimed = message_states.claim(db.session, campaign_id, [i for i, _ in waiting], source)
    report.skipped += len(waiting) - len(claimed)
    # The call threads read the sender and templates (the campaign's, and the messages'
    # language versions) while this thread records outcomes and commits: detached, they
    # keep what was loaded and are never expired or lazy-loaded.
    sender, template = campaign.sender, campaign.template
    mapping = campaign.variable_mapping  # read before the commit expires it
    cap_days = campaign.frequency_cap_days
    versions = _language_versions(claimed, template.id)
    db.session.expunge(sender)
    db.session.expunge(template)
    for version in versions.values():
        db.session.expunge(version)
    db.session.commit()
    granted: list[message_states.Claimed] = []
    wait = 0.0
    if claimed:
        decision = ratelimit.consume(db.session, limits, units=len(claimed), partial=True)
        granted = claimed[: decision.granted]
        if decision.granted < len(claimed):
            wait = decision.retry_after
    # A retry takes a unit of its own retry limit only once the send limits let it go: one
    # they hold back is not called and spends nothing (spent on every hold, a throttled
    # message competing with fresh batches for a busy second ran out of its 10 in minutes
    # and waited 5: bench/README.md, "throughput").
    attempts = dict(waiting)
    limited, retry_wait = _retry_limits([(m.id, attempts[m.id]) for m in granted])
    retried_held = [m for m in granted if m.held and m.id not in limited]
    capped = _cap_held(campaign_id, cap_days, retried_held)
    report.failed.extend(sorted(capped))
    unbudgeted, budget_wait = _budget_for_held(
        sender, [m for m in retried_held if m.id not in capped], config
    )
    if retried_held:
        contact_history.record(
            db.session,
            campaign_id,
            {m.id: m.phone for m in retried_held if m.id not in capped | unbudgeted},
        )
        db.session.commit()  # the numbers' locks go before the calls
    calling = [m for m in granted if m.id not in {*limited, *unbudgeted, *capped}]
    provider = providers.for_sender(sender, config)
    # Each template's own header media (a language version may show another image).
    used = {template, *(versions[m.template_id] for m in calling if m.template_id in versions)}
    medias = {t.id: prepared.get(t.id) or template_parts.linked_media(t) for t in used}
    size = int(config["WHATSAPP_CALLS_IN_FLIGHT"])
    secret = config["SECRET_KEY"]
    started: dict[Future[SendResult], message_states.Claimed] = {
        calls.start(
            size,
            provider.send_template,
            to=message.phone,
            template=chosen,
            params=tracked_links.fill(message.params, mapping, secret, campaign_id, message.id),
            callback_data=callback_data.for_call(message.id, message.attempts),
            header_media=medias[chosen.id],
        ): message
        for message in calling
        for chosen in [versions.get(message.template_id or 0, template)]
    }
    called = {message.id for message in calling}
    back = [message.id for message in claimed if message.id not in called | capped]
    if back:
        back = message_states.unclaim(db.session, campaign_id, back, source)
        report.held = sorted(back)
        # Each at its own wait: a retry-limited message may wait minutes, the ones the
        # send limits held back about a second (their throttle deadline runs meanwhile).
        limited_back = [i for i in report.held if i in limited]
        budget_back = [i for i in report.held if i in unbudgeted]
        held_back = [i for i in report.held if i not in limited and i not in unbudgeted]
        groups = [(held_back, wait), (limited_back, retry_wait), (budget_back, budget_wait)]
        queues.defer_sends(
            db.session,
            campaign_id,
            [ids for ids, _ in groups if ids],
            [_later(seconds) for ids, seconds in groups if ids],
            retry_queue=retry_queue,
        )
        db.session.commit()
    forgotten = False
    for group in calls.as_they_return(started):
        outcomes = [(started[future], future.exception() or future.result()) for future in group]
        if prepared and any(_media_refused(outcome) for _message, outcome in outcomes):
            # WhatsApp no longer takes the media ids it gave (before the 30 days it keeps
            # them): uploaded again at the next try, which these messages get.
            if not forgotten:
                media.forget_uploads(db.session, sender.id, [m.file_id for m in prepared.values()])
                db.session.commit()
                forgotten = True
            outcomes = [(message, _as_retry(outcome)) for message, outcome in outcomes]
        _record(campaign_id, sender.id, outcomes, config, retry_queue=retry_queue, report=report)
    return report


def _media_refused(outcome: object) -> TypeGuard[SendError]:
    return isinstance(outcome, SendError) and outcome.code in MEDIA_ERROR_CODES


def _as_retry(outcome: SendResult | BaseException) -> SendResult | BaseException:
    """A media error on a send that named an uploaded file's id: tried again, a try spent."""
    if _media_refused(outcome):
        return SendError(outcome.message, ErrorKind.RETRY, outcome.code, outcome.http_status)
    return outcome


@dataclass(frozen=True)
class _Prepared(template_parts.HeaderMedia):
    file_id: int = 0  # the uploaded file it names


def _prepared_media(
    campaign_id: int, message_ids: Sequence[int], config: Mapping[str, Any]
) -> dict[int, _Prepared]:
    """The header media of each template the batch may send whose header shows an uploaded
    file (the campaign's, and its messages' language versions), by template id: the media
    id WhatsApp gave the sender for it, uploaded now if it has none fresh. One read, then
    no transaction open during the uploads; none without such a template. ProviderError
    if an upload failed."""
    used: sa.CompoundSelect = sa.union(
        sa.select(Campaign.template_id).where(Campaign.id == campaign_id),
        sa.select(Message.template_id).where(
            Message.id.in_(message_ids), Message.template_id.is_not(None)
        ),
    )
    sender_id = sa.select(Campaign.sender_id).where(Campaign.id == campaign_id).scalar_subquery()
    rows = db.session.execute(
        sa.select(
            MessageTemplate.id,
            MessageTemplate.header_format,
            MediaFile.id.label("file_id"),
            MediaFile.filename,
            sender_id.label("sender_id"),
        )
        .join(MediaFile, MediaFile.id == MessageTemplate.header_media_file_id)
        .where(MessageTemplate.id.in_(used))
    ).all()
    if not rows:
        return {}
    sender = db.session.get(Sender, rows[0].sender_id)
    if sender is None:
        return {}
    db.session.expunge(sender)  # read by the upload's provider, detached
    db.session.commit()
    return {
        row.id: _Prepared(
            HeaderFormat(row.header_format),
            media_id=media.media_id_for(sender, row.file_id, config),
            filename=row.filename,
            file_id=row.file_id,
        )
        for row in rows
    }


def _media_not_ready(
    campaign: Campaign,
    waiting: Sequence[tuple[int, int]],
    error: ProviderError,
    config: Mapping[str, Any],
    source: MessageStatus,
    report: BatchReport,
) -> BatchReport:
    """A header's file could not be uploaded, so nothing was sent. A passing trouble is a
    failed call for each message (a try spent: a lasting outage ends in failed messages
    "retry failed" takes, never in a loop); one WhatsApp will not get over by itself (a
    file it refuses, a sender without its token) pauses the campaign or the sender with
    WhatsApp's words or Disparo's reason, which puts the messages back to pending."""
    campaign_id, sender_id = campaign.id, campaign.sender_id
    db.session.rollback()
    kind = error.kind if isinstance(error, SendError) else classify(error.code, error.http_status)
    logger.warning(
        "campaign %s: header media not uploaded (%s, code %s)", campaign_id, kind, error.code
    )
    if kind in (ErrorKind.RETRY, ErrorKind.THROTTLED):
        ids = [message_id for message_id, _attempts in waiting]
        claimed = message_states.claim(db.session, campaign_id, ids, source)
        db.session.commit()
        failed = SendError(error.message, ErrorKind.RETRY, error.code, error.http_status)
        outcomes = [(message, failed) for message in claimed]
        retry_queue = source is MessageStatus.RETRYING
        _record(campaign_id, sender_id, outcomes, config, retry_queue=retry_queue, report=report)
        return report
    stop = ErrorKind.PAUSE_SENDER if kind is ErrorKind.PAUSE_SENDER else ErrorKind.PAUSE_CAMPAIGN
    reason = error.reason if isinstance(error, SendError) else None
    campaign_states.stop_for_code(campaign_id, error.code, error.message, stop, own_reason=reason)
    return report


def header_media(
    campaign: Campaign, config: Mapping[str, Any]
) -> template_parts.HeaderMedia | None:
    """What a send of the campaign's own template shows in its media header (a test
    send): its link, or its uploaded file's media id as a batch prepares it. Ends the
    caller's transaction before an upload; ProviderError if it failed."""
    template = campaign.template
    return _prepared_media(campaign.id, [], config).get(template.id) or (
        template_parts.linked_media(template)
    )


def _language_versions(
    claimed: Sequence[message_states.Claimed], campaign_template_id: int
) -> dict[int, MessageTemplate]:
    """The language versions (``languages.py``) the claimed messages were given, by id,
    in one read; none without any. Only the ones still approved: a message whose version
    was paused or disabled since its fan-out goes in the campaign's template instead."""
    ids = {message.template_id for message in claimed if message.template_id is not None}
    ids.discard(campaign_template_id)  # loaded with the campaign already
    if not ids:
        return {}
    found = db.session.scalars(
        sa.select(MessageTemplate)
        .where(MessageTemplate.id.in_(ids), MessageTemplate.status == TemplateStatus.APPROVED)
        .execution_options(populate_existing=True)
    )
    return {version.id: version for version in found}


def _cap_held(
    campaign_id: int, cap_days: int | None, held: Sequence[message_states.Claimed]
) -> set[int]:
    """The messages 131049 held, now tried again, that the frequency cap refuses: another
    campaign contacted their number since the pump admitted them (a day ago, usually).
    Their numbers are locked until the caller commits (``contact_history.capped``, as at
    the pump's admission); the refused are failed with ``frequency_cap`` (a claimed
    message may move to failed, not to skipped; "retry failed" can reopen them, and the
    pump's admission then decides again)."""
    if not held:
        return set()
    # The messages' rows first, then their numbers' (contact_history's locks): the order
    # the pump and a person's erasure take them in, or an erasure of one of these people
    # deadlocks with this retry.
    db.session.execute(
        sa.select(Message.id)
        .where(Message.id.in_(sorted(m.id for m in held)))
        .order_by(Message.id)
        .with_for_update()
    )
    refused = contact_history.capped(
        db.session, campaign_id, cap_days, {m.id: m.phone for m in held}
    )
    for message_id in sorted(refused):
        # Not message_states.fail: not a failure of the send, so not one the minute's
        # stats count towards the auto-pause.
        if message_states.transition(
            db.session,
            message_id,
            [MessageStatus.SENDING],
            MessageStatus.FAILED,
            code=FREQUENCY_CAP_CODE,
        ):
            db.session.execute(
                sa.update(Message)
                .where(Message.id == message_id)
                .values(error_code=FREQUENCY_CAP_CODE, error_text=None, failed_at=sa.func.now())
            )
    return refused


def _budget_for_held(
    sender: Sender, held: Sequence[message_states.Claimed], config: Mapping[str, Any]
) -> tuple[set[int], float]:
    """(ids the 24-hour budget has no room for, seconds until it has): of messages 131049
    held, now tried again. The pump counted their recipients when it first queued them,
    usually a day ago (MARKETING_LIMIT_RETRY_HOURS): out of the window by now, while the
    retry starts a conversation Meta counts. One limiter call; none without a budget."""
    budget = ratelimit.budget(sender, config["MESSAGING_LIMIT_MARGIN_PERCENT"])
    if budget is None or not held:
        return set(), 0.0
    refused, room_at = pump.budget_refusals(budget, {m.id: m.phone for m in held})
    if not refused or room_at is None:
        return set(), 0.0
    return refused, max(1.0, (room_at - database_now(db.session)).total_seconds())


def marketing_hold_until(config: Mapping[str, Any]) -> datetime:
    """When a message 131049 holds now is tried again: its ``held_until`` and its job's time."""
    return _later(3600.0 * float(config["MARKETING_LIMIT_RETRY_HOURS"]))


def _retry_limits(waiting: Sequence[tuple[int, int]]) -> tuple[list[int], float]:
    """(ids held back by their own retry limit, seconds until they may go): one call.

    Of messages the send limits granted: one called before (attempts > 0: a transient
    error, a throttle, a dead worker, "retry failed") is a retry and takes one unit of its
    own retry limit; refused, its send grant is spent all the same (the limiter errs
    towards sending less, never more).
    """
    retried = [message_id for message_id, attempts in waiting if attempts > 0]
    if not retried:
        return [], 0.0
    decisions = ratelimit.consume_each(
        db.session, [ratelimit.retry_limit(message_id) for message_id in retried]
    )
    refused = [(i, d.retry_after) for i, d in zip(retried, decisions, strict=True) if not d.allowed]
    return [i for i, _ in refused], max((seconds for _, seconds in refused), default=0.0)


@dataclass
class _Settled:
    """A group's outcomes, sorted by what happens to each message next."""

    sent: list[tuple[int, str]] = field(default_factory=list)
    again: dict[float, list[tuple[int, str | None, str | None]]] = field(
        default_factory=lambda: defaultdict(list)
    )  # wait seconds -> transient errors that try again on this queue
    throttled: list[tuple[int, str | None, str | None]] = field(default_factory=list)
    throttle_wait: float = THROTTLE_WAIT_MIN
    slow_down: bool = False  # a throughput error (130429): the sender slows
    # The pair rate limit (131056): waits like a throttle, but the sender is not slowed.
    pair_limited: list[tuple[int, str | None, str | None]] = field(default_factory=list)
    # The per-user marketing limit (131049), held for message-retry hours later.
    marketing_held: list[tuple[int, str | None, str | None]] = field(default_factory=list)
    handed_over: dict[float, list[tuple[int, str | None, str | None]]] = field(
        default_factory=lambda: defaultdict(list)
    )  # wait seconds -> errors that move on to message-retry
    failed: list[tuple[message_states.Claimed, providers.SendError]] = field(default_factory=list)
    paused: list[tuple[int, str | None, str | None]] = field(default_factory=list)  # a pausing code
    stop: providers.SendError | None = None  # the first pausing error


def _sort(
    outcomes: Sequence[tuple[message_states.Claimed, BaseException | SendResult]],
    config: Mapping[str, Any],
    *,
    retry_queue: bool,
) -> _Settled:
    settled = _Settled()
    tries, backoff = (RETRY_TRIES, RETRY_BACKOFF) if retry_queue else (SEND_TRIES, SEND_BACKOFF)
    deadline = 60.0 * float(config["THROTTLE_DEADLINE_MINUTES"])
    for message, outcome in outcomes:
        if isinstance(outcome, SendResult):
            settled.sent.append((message.id, outcome.provider_message_id))
            continue
        if not isinstance(outcome, providers.SendError):
            # A bug in the call itself: fail the message with it rather than lose it.
            logger.error("message %s: unexpected error in its call", message.id, exc_info=outcome)
            outcome = providers.SendError(type(outcome).__name__, ErrorKind.PERMANENT)
        error = outcome
        entry = (message.id, error.row_code, error.row_text)
        kind = error.kind
        if kind is ErrorKind.THROTTLED:
            settled.slow_down = True  # even for a message past the deadline: it is an event
            throttled_for = message.throttled_for or 0.0
            if throttled_for < deadline:
                settled.throttled.append(entry)
                settled.throttle_wait = max(
                    settled.throttle_wait, min(THROTTLE_WAIT_MAX, throttled_for)
                )
                continue
            settled.failed.append((message, error))  # throttled past the deadline
        elif kind is ErrorKind.PAIR_LIMITED:
            # Same deadline as a throttle (throttled_at stamps the first of either), so a
            # recipient that stays limited ends failed rather than waiting forever.
            if (message.throttled_for or 0.0) < deadline:
                settled.pair_limited.append(entry)
                continue
            settled.failed.append((message, error))
        elif kind in (ErrorKind.PAUSE_CAMPAIGN, ErrorKind.PAUSE_SENDER):
            settled.stop = settled.stop or error
            settled.paused.append(entry)
        elif kind is ErrorKind.SLOW_RETRY:
            # Not retried at once: held once, hours later; held again, it fails. Its
            # held_until says it was held, whatever errors came in between.
            if message.held:
                settled.failed.append((message, error))
            else:
                settled.marketing_held.append(entry)
        elif kind is ErrorKind.RETRY and message.tries < tries:
            settled.again[backoff**message.tries].append(entry)
        elif kind is ErrorKind.RETRY and not retry_queue:
            settled.handed_over[0.0].append(entry)  # this queue's tries ran out: message-retry
        else:
            settled.failed.append((message, error))
    return settled


def _record(
    campaign_id: int,
    sender_id: int,
    outcomes: Sequence[tuple[message_states.Claimed, BaseException | SendResult]],
    config: Mapping[str, Any],
    *,
    retry_queue: bool,
    report: BatchReport,
) -> None:
    """Record one group of returned calls, and defer what comes next, in one transaction."""
    settled = _sort(outcomes, config, retry_queue=retry_queue)
    session = db.session
    waiting = MessageStatus.RETRYING if retry_queue else MessageStatus.QUEUED
    message_states.record_sent(session, campaign_id, settled.sent)
    report.sent.extend(message_id for message_id, _ in settled.sent)
    for seconds, errors in settled.again.items():
        moved = message_states.requeue(session, campaign_id, errors, waiting)
        queues.defer_sends(
            session, campaign_id, [moved], [_later(seconds)], retry_queue=retry_queue
        )
        report.retrying.extend(moved)
    if settled.throttled:
        moved = message_states.requeue(
            session, campaign_id, settled.throttled, waiting, tries="refund", throttled=True
        )
        queues.defer_sends(
            session,
            campaign_id,
            [moved],
            [_later(settled.throttle_wait)],
            retry_queue=retry_queue,
        )
        report.throttled.extend(moved)
    if settled.pair_limited:
        moved = message_states.requeue(
            session, campaign_id, settled.pair_limited, waiting, tries="refund", throttled=True
        )
        seconds = float(config["PAIR_LIMIT_RETRY_SECONDS"])
        queues.defer_sends(
            session, campaign_id, [moved], [_later(seconds)], retry_queue=retry_queue
        )
        report.pair_limited.extend(moved)
    if settled.marketing_held:
        until = marketing_hold_until(config)
        moved = message_states.requeue(
            session,
            campaign_id,
            settled.marketing_held,
            MessageStatus.RETRYING,
            tries="reset",
            held_until=until,
        )
        queues.defer_retries(session, campaign_id, moved, until)
        report.marketing_held.extend(moved)
    for seconds, errors in settled.handed_over.items():
        moved = message_states.requeue(
            session, campaign_id, errors, MessageStatus.RETRYING, tries="reset"
        )
        queues.defer_retries(session, campaign_id, moved, _later(seconds) if seconds else None)
        report.retrying.extend(moved)
    for message, error in settled.failed:
        _fail(message, error)
        report.failed.append(message.id)
    # A pausing code is not these messages' fault: back to pending, for resume.
    message_states.requeue(
        session, campaign_id, settled.paused, MessageStatus.PENDING, tries="refund"
    )
    report.stopped.extend(message_id for message_id, _, _ in settled.paused)
    session.commit()
    # What the outcomes say about the campaign, in transactions of its own: a pause takes
    # the campaign's lock, which other batches' claims hold (shared) while they wait for a
    # counter shard; taken while holding this group's shard, the two could deadlock.
    if settled.slow_down:
        _slow_down(sender_id)
    if settled.stop is not None:
        stop = settled.stop
        campaign_states.stop_for_code(
            campaign_id, stop.code, stop.message, stop.kind, own_reason=stop.reason
        )
    elif settled.failed:
        campaign_states.pause_if_failing(campaign_id, config)
        session.commit()


def _slow_down(sender_id: int) -> None:
    """WhatsApp said the number sends too fast: its rate steps down (``slowdown.py``);
    commits. Its own transaction, after the outcomes', holding nothing else."""
    stepped = slowdown.slow_down(db.session, sender_id)
    db.session.commit()
    if stepped is not None and stepped[1]:
        logger.warning(
            "sender %s slowed to %d%% of its rate: WhatsApp's throughput error (130429)",
            sender_id,
            round(stepped[0] * 100),
        )


def _fail(message: message_states.Claimed, error: providers.SendError) -> None:
    """Give up on one message with its code; an opt-out code suppresses its number."""
    code = error.row_code
    message_states.fail(db.session, message.id, [MessageStatus.SENDING], code, error.row_text)
    logger.warning("message %s failed (%s): %s", message.id, code, error.message)
    if error.code in OPT_OUT_CODES:
        # From the row: an erased recipient's opt-out is kept only as a hash.
        suppress_message(db.session, message.id, message.phone, error.message, "provider")
    if error.code in UNDELIVERABLE_CODES:
        # From the row: the recipient's data may have been erased during the call.
        undeliverable.remember_message(db.session, message.id)


def campaign_of(message_ids: Sequence[int]) -> int | None:
    """The campaign of a job's messages (a job deferred before batches names none)."""
    if not message_ids:
        return None
    return db.session.scalar(sa.select(Message.campaign_id).where(Message.id == message_ids[0]))
