"""The provider interface and the values that cross it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from campaigns.account_health import AccountReport
from campaigns.models import MessageTemplate, TemplateStatus
from campaigns.providers.errors import ErrorKind
from campaigns.template_parts import HeaderMedia


class ProviderError(Exception):
    """The provider refused or could not be reached; ``code`` is Meta's error.code if any."""

    def __init__(self, message: str, code: int | None = None, http_status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status


class SendError(ProviderError):
    """A send that did not go; ``kind`` says what to do about it (see errors.classify)."""

    def __init__(
        self,
        message: str,
        kind: ErrorKind,
        code: int | None = None,
        http_status: int | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, code, http_status)
        self.kind = kind
        # Disparo's own finding rather than WhatsApp's answer (a sender set up without
        # its token): a campaigns.reasons code, worded for whoever reads the pause.
        self.reason = reason

    @property
    def row_code(self) -> str | None:
        """What a message row keeps as this error's code: Meta's (0 is one), else the
        HTTP status, else Disparo's own reason, else nothing."""
        if self.code is not None:
            return str(self.code)
        if self.http_status:
            return str(self.http_status)
        return self.reason

    @property
    def row_text(self) -> str | None:
        """The row's error text: WhatsApp's words; none for Disparo's own reason (worded
        when shown, in the reader's language)."""
        return None if self.reason else self.message


@dataclass(frozen=True)
class SendResult:
    provider_message_id: str  # the wamid every status webhook refers to


@dataclass(frozen=True)
class MediaSample:
    """A media header's sample for Meta's review: its bytes, name and type."""

    content: bytes
    filename: str
    content_type: str


@dataclass(frozen=True)
class TemplateSubmission:
    provider_template_id: str
    status: TemplateStatus


@dataclass(frozen=True)
class WabaTemplates:
    """A WhatsApp Business Account's templates as the Graph API lists them (Meta's JSON
    objects, unread); ``complete`` is False when the listing stopped at the page cap or on
    a cursor that did not move, so what is missing from it may still exist."""

    templates: list[dict[str, Any]]
    complete: bool


@dataclass(frozen=True)
class TemplateStatusReport:
    status: TemplateStatus
    reason: str | None = None


# Meta's template statuses; IN_APPEAL is still under review for us. Those Disparo has no
# status of its own for become what stops sending with the template safely:
# - ARCHIVED, DELETED: DISABLED (campaigns fail): a send would fail every message, and
#   only a change in WhatsApp Manager brings the template back, which the import then
#   reads as the template's new status;
# - LIMIT_EXCEEDED: PAUSED (campaigns pause, nothing cancelled): the WABA is over its
#   template limit and the template comes back once others are deleted, the way a paused
#   template comes back; the operator resumes once it is approved again.
META_TEMPLATE_STATUS = {
    "APPROVED": TemplateStatus.APPROVED,
    "PENDING": TemplateStatus.PENDING,
    "IN_APPEAL": TemplateStatus.PENDING,
    "REJECTED": TemplateStatus.REJECTED,
    "PAUSED": TemplateStatus.PAUSED,
    "LIMIT_EXCEEDED": TemplateStatus.PAUSED,
    "DISABLED": TemplateStatus.DISABLED,
    "PENDING_DELETION": TemplateStatus.DISABLED,
    "ARCHIVED": TemplateStatus.DISABLED,
    "DELETED": TemplateStatus.DISABLED,
}


def template_components(
    template: MessageTemplate, examples: dict[str, str], media_handle: str | None = None
) -> list[dict[str, Any]]:
    """The template as Meta's ``components`` list, with example values for review."""
    from campaigns import template_parts

    return template_parts.review_components(template, examples, media_handle)


class WhatsAppProvider(ABC):
    """What Disparo needs from a WhatsApp provider for one sender."""

    # When to ask about a submitted template first; later outcomes arrive with the
    # periodic sync of templates under review.
    review_check_seconds: float = 60.0

    @abstractmethod
    def check_connection(self) -> str:
        """Ask the provider about this sender; return what it said, or raise ProviderError."""

    @abstractmethod
    def account_status(self) -> AccountReport:
        """What Meta says about this sender's number: quality rating, messaging limit
        and throughput (``GET /{phone-number-id}``); raise ProviderError if it cannot."""

    @abstractmethod
    def submit_template(
        self, template: MessageTemplate, sample: MediaSample | None = None
    ) -> TemplateSubmission:
        """Send a template for Meta's review; ``sample``: its media header's sample."""

    @abstractmethod
    def template_status(self, template: MessageTemplate) -> TemplateStatusReport:
        """The template's current review status."""

    @abstractmethod
    def list_templates(self) -> WabaTemplates:
        """Every template of the sender's WhatsApp Business Account
        (``GET /{waba-id}/message_templates``, page after page); ProviderError if it cannot."""

    @abstractmethod
    def send_template(
        self,
        *,
        to: str,
        template: MessageTemplate,
        params: dict[str, str],
        callback_data: str,
        header_media: HeaderMedia | None = None,
    ) -> SendResult:
        """Send one template message to an E.164 number; raise SendError if it did not go.

        ``params`` maps each variable (a name, or "1", "2"… for positional
        templates; ``header.…``, ``button.…``, ``payload.…`` for the header's and the
        buttons', campaigns/template_parts.py) to its text; ``header_media`` is what a
        media header shows; ``callback_data`` goes out as ``biz_opaque_callback_data``
        and comes back in status webhooks.
        """

    @abstractmethod
    def upload_media(
        self, chunks: Iterable[bytes], *, filename: str, content_type: str, size: int
    ) -> str:
        """Upload a file to WhatsApp's Media API (``POST /{phone-number-id}/media``) and
        return its media id, for a media header to name; ProviderError if it did not go.

        ``chunks`` are the file's bytes in order, ``size`` bytes in all (its
        ``Content-Length`` is known before the first is read)."""
