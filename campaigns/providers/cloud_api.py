"""The WhatsApp Cloud API client (Graph API): bearer token, JSON, explicit timeouts."""

from __future__ import annotations

import functools
import logging
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from campaigns import account_health, rendering, template_parts
from campaigns.config import MAX_CALLS_IN_FLIGHT
from campaigns.i18n import _
from campaigns.models import MessageTemplate, Sender
from campaigns.providers.base import (
    META_TEMPLATE_STATUS,
    MediaSample,
    ProviderError,
    SendError,
    SendResult,
    TemplateStatusReport,
    TemplateSubmission,
    WabaTemplates,
    WhatsAppProvider,
    template_components,
)
from campaigns.providers.errors import (
    SENDER_WITHOUT_ACCESS_TOKEN,
    SENDER_WITHOUT_PHONE_NUMBER_ID,
    ErrorKind,
    classify,
)
from campaigns.template_parts import HeaderMedia

logger = logging.getLogger(__name__)

TIMEOUT = (5, 15)  # (connect, read) seconds
# A send that outlives this is retried (and may then be a duplicate, docs/architecture.md):
# keep it well under the lease after which a message stuck in `sending` is reconciled.
SEND_TIMEOUT = (5, 20)
# One pool per process, shared by every call thread (campaigns/calls.py): urllib3 keeps
# at most this many connections per host and opens (then drops) one for every call past
# it, so it is as large as the calls a worker may keep in flight.
POOL_SIZE = MAX_CALLS_IN_FLIGHT
_session = requests.Session()  # thread-safe for plain requests; we never rely on its cookies
# With trust_env, requests reads the environment's proxy and CA settings on every
# request (about 150 lookups a message, a tenth of a send's CPU): read them once.
_session.trust_env = False
_session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


@functools.cache
def _proxies_for(base_url: str) -> dict[str, str]:
    """HTTP(S)_PROXY / NO_PROXY as they apply to this endpoint."""
    return requests.utils.get_environ_proxies(base_url)


_adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
_session.mount("https://", _adapter)
_session.mount("http://", _adapter)


def template_message(
    *,
    to: str,
    template: MessageTemplate,
    params: dict[str, str],
    callback_data: str,
    header_media: HeaderMedia | None = None,
) -> dict[str, Any]:
    """The Cloud API payload that sends a template message, as Meta documents it."""
    try:
        components = template_parts.send_components(template, params, header_media)
    except template_parts.MissingValues as missing:
        # Meta would answer 132000; saying so here costs no request and no quota.
        raise SendError(str(missing), ErrorKind.PERMANENT, code=132000) from None  # the keys
    body: dict[str, Any] = {"name": template.name, "language": {"code": template.language}}
    if components:
        body["components"] = components
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "template",
        "biz_opaque_callback_data": callback_data,
        "template": body,
    }


def _error_code(error: dict[str, Any]) -> int | None:
    try:
        return int(error["code"])
    except (KeyError, TypeError, ValueError):
        return None


def post_message(
    base_url: str, phone_number_id: str, token: str | None, payload: dict[str, Any]
) -> SendResult:
    """POST one message to ``{base_url}/{phone_number_id}/messages``; its wamid, or SendError.

    Shared by the Cloud API client and the mock provider, so the mock exercises
    exactly the request and the error handling that production uses.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{base_url}/{phone_number_id}/messages"
    try:
        response = _session.post(
            url,
            json=payload,
            headers=headers,
            timeout=SEND_TIMEOUT,
            proxies=_proxies_for(base_url),
        )
    except requests.RequestException as exc:
        # Unreachable or too slow: transient. A read timeout may hide a send that
        # went through; the retry then duplicates it (Meta has no idempotency key).
        raise SendError(type(exc).__name__, ErrorKind.RETRY) from exc
    with response:
        try:
            body = response.json()
        except ValueError:
            body = None
    status = response.status_code
    if not isinstance(body, dict):
        body = {}
    error = body.get("error")
    if status >= 400 or error is not None:
        error = error if isinstance(error, dict) else {}
        code = _error_code(error)
        message = error.get("error_user_msg") or error.get("message") or response.reason
        raise SendError(str(message), classify(code, status), code, status)
    try:
        wamid = str(body["messages"][0]["id"])
    except (KeyError, IndexError, TypeError):
        # Accepted or not, we cannot tell: retrying risks a duplicate, failing risks a loss.
        raise SendError(f"HTTP {status}", ErrorKind.RETRY, None, status) from None
    return SendResult(wamid)


# Errors that pass by themselves: logged at INFO, not as warnings.
QUIET_KINDS = (ErrorKind.RETRY, ErrorKind.THROTTLED, ErrorKind.PAIR_LIMITED)


def send_template_message(
    base_url: str,
    sender: Sender,
    token: str | None,
    *,
    to: str,
    template: MessageTemplate,
    params: dict[str, str],
    callback_data: str,
    header_media: HeaderMedia | None = None,
) -> SendResult:
    """Send one template message for a sender through a Graph-API-shaped endpoint."""
    if not sender.phone_number_id:
        raise SendError(
            "This sender has no phone number id.",
            ErrorKind.PAUSE_SENDER,
            reason=SENDER_WITHOUT_PHONE_NUMBER_ID,
        )
    payload = template_message(
        to=to,
        template=template,
        params=params,
        callback_data=callback_data,
        header_media=header_media,
    )
    try:
        return post_message(base_url, sender.phone_number_id, token, payload)
    except SendError as error:
        # Ids and codes only: never the token, the number or the text.
        logger.log(
            logging.INFO if error.kind in QUIET_KINDS else logging.WARNING,
            "sender %s: message %s not sent (%s, code %s, HTTP %s)",
            sender.id,
            callback_data,
            error.kind,
            error.code,
            error.http_status,
        )
        raise


# The phone number's fields that say how it stands with Meta: the portfolio's messaging
# limit (and the deprecated per-number tier, for older API versions), its quality and
# its throughput level.
ACCOUNT_FIELDS = (
    "display_phone_number,quality_rating,whatsapp_business_manager_messaging_limit,"
    "messaging_limit_tier,throughput"
)


def read_account(request: Any, sender: Sender) -> account_health.AccountReport:
    """``GET /{phone-number-id}?fields=…`` through ``request(method, path, **kwargs)``
    (a provider's own), as an AccountReport; ProviderError if it said nothing usable."""
    if not sender.phone_number_id:
        raise ProviderError(_("Set the phone number id first."))
    body = request("GET", sender.phone_number_id, params={"fields": ACCOUNT_FIELDS})
    report = account_health.from_graph(body if isinstance(body, dict) else {})
    if not report:
        raise ProviderError(_("Unexpected answer from WhatsApp: %(body)r") % {"body": body})
    return report


# What an import reads of each template (services/template_import.py).
TEMPLATE_FIELDS = (
    "id,name,status,language,category,components,parameter_format,quality_score,rejected_reason"
)
# 100 a page: Meta caps a WABA at 6,000 templates (a verified portfolio), so a full
# listing is at most 60 calls of the 5,000 an hour Meta allows per WABA; the page cap
# stops a cursor that never ends well past that.
TEMPLATES_PAGE_SIZE = 100
TEMPLATES_MAX_PAGES = 100


def read_templates(request: Any, sender: Sender) -> WabaTemplates:
    """``GET /{waba-id}/message_templates`` through ``request(method, path, **kwargs)`` (a
    provider's own, which maps errors), following ``paging.cursors.after`` while the
    answer has a ``paging.next``; ProviderError if an answer is not a Graph list."""
    if not sender.waba_id:
        raise ProviderError(_("Set the WhatsApp Business Account id (WABA id) first."))
    params: dict[str, Any] = {"fields": TEMPLATE_FIELDS, "limit": TEMPLATES_PAGE_SIZE}
    found: list[dict[str, Any]] = []
    seen_cursors: set[str] = set()
    for _page in range(TEMPLATES_MAX_PAGES):
        body = request("GET", f"{sender.waba_id}/message_templates", params=params)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise ProviderError(_("Unexpected answer from WhatsApp: %(body)r") % {"body": body})
        found.extend(item for item in data if isinstance(item, dict))
        paging = body.get("paging")
        paging = paging if isinstance(paging, dict) else {}
        cursors = paging.get("cursors")
        after = cursors.get("after") if isinstance(cursors, dict) else None
        if not paging.get("next"):  # Meta leaves `next` out of the last page
            return WabaTemplates(found, complete=True)
        if not isinstance(after, str) or not after or after in seen_cursors:
            logger.warning("sender %s: template listing's cursor did not move", sender.id)
            return WabaTemplates(found, complete=False)
        seen_cursors.add(after)
        params = params | {"after": after}
    logger.warning(
        "sender %s: template listing stopped after %s pages", sender.id, TEMPLATES_MAX_PAGES
    )
    return WabaTemplates(found, complete=False)


# An upload's (connect, read) timeouts: sending up to 100 MB and Meta's reading it.
UPLOAD_TIMEOUT = (5, 120)


class MultipartBody:
    """A ``multipart/form-data`` body streamed from its file's chunks, its length known
    up front: requests sends an iterable with a ``__len__`` as it is (no chunked
    encoding, with Content-Length), so an upload of up to 100 MB never sits in memory
    (requests' own ``files=`` would build the whole body as bytes first)."""

    def __init__(
        self,
        fields: Mapping[str, str],
        *,
        name: str,
        filename: str,
        content_type: str,
        chunks: Iterable[bytes],
        size: int,
    ) -> None:
        boundary = secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={boundary}"
        head = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
            f"{value}\r\n".encode()
            for key, value in fields.items()
        )
        # A quoted-string as browsers send it: UTF-8, no line breaks, quotes escaped.
        quoted = " ".join(filename.splitlines()).replace("\\", "\\\\").replace('"', '\\"')
        self.head = (
            head
            + (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{quoted}"\r\nContent-Type: {content_type}\r\n\r\n'
            ).encode()
        )
        self.tail = f"\r\n--{boundary}--\r\n".encode()
        self.chunks = chunks
        self.size = size

    def __len__(self) -> int:
        return len(self.head) + self.size + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        yield from self.chunks
        yield self.tail


def upload_media(
    request: Any,
    sender: Sender,
    chunks: Iterable[bytes],
    *,
    filename: str,
    content_type: str,
    size: int,
) -> str:
    """``POST /{phone-number-id}/media`` (multipart: ``messaging_product``, ``type``,
    ``file``) through ``request(method, path, **kwargs)`` (a provider's own, which maps
    errors to ProviderError with Meta's code); the media id Meta answered."""
    if not sender.phone_number_id:  # as a send says it: the sender paused with the reason
        raise SendError(
            "This sender has no phone number id.",
            ErrorKind.PAUSE_SENDER,
            reason=SENDER_WITHOUT_PHONE_NUMBER_ID,
        )
    body = MultipartBody(
        {"messaging_product": "whatsapp", "type": content_type},
        name="file",
        filename=filename,
        content_type=content_type,
        chunks=chunks,
        size=size,
    )
    answer = request(
        "POST",
        f"{sender.phone_number_id}/media",
        data=body,
        headers={"Content-Type": body.content_type},
        timeout=UPLOAD_TIMEOUT,
    )
    media_id = answer.get("id") if isinstance(answer, dict) else None
    if not isinstance(media_id, str | int) or not str(media_id):
        raise ProviderError(_("Unexpected answer from WhatsApp: %(body)r") % {"body": answer})
    return str(media_id)


class CloudApiProvider(WhatsAppProvider):
    # Meta's automated review usually answers within a minute or two; a manual one takes
    # up to 24 h, which the periodic sync of templates under review follows.
    review_check_seconds = 90.0

    def __init__(self, sender: Sender, config: Mapping[str, Any]) -> None:
        self.sender = sender
        self.base_url = str(config["WHATSAPP_API_BASE_URL"]).rstrip("/")
        self.app_id = config.get("WHATSAPP_APP_ID")

    def send_template(
        self,
        *,
        to: str,
        template: MessageTemplate,
        params: dict[str, str],
        callback_data: str,
        header_media: HeaderMedia | None = None,
    ) -> SendResult:
        if not self.sender.access_token:
            raise SendError(
                "This sender has no access token.",
                ErrorKind.PAUSE_SENDER,
                reason=SENDER_WITHOUT_ACCESS_TOKEN,
            )
        return send_template_message(
            self.base_url,
            self.sender,
            self.sender.access_token,
            to=to,
            template=template,
            params=params,
            callback_data=callback_data,
            header_media=header_media,
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        if not self.sender.access_token:
            raise ProviderError(_("This sender has no access token."))
        headers = {"Authorization": f"Bearer {self.sender.access_token}"}
        headers |= kwargs.pop("headers", None) or {}
        try:
            response = _session.request(
                method,
                f"{self.base_url}/{path}",
                headers=headers,
                timeout=kwargs.pop("timeout", TIMEOUT),
                proxies=_proxies_for(self.base_url),
                **kwargs,
            )
        except requests.RequestException as exc:
            raise ProviderError(
                _("WhatsApp could not be reached: %(error)s") % {"error": type(exc).__name__}
            ) from exc
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400 or "error" in body:
            error = body.get("error") or {}
            message = error.get("error_user_msg") or error.get("message") or response.reason
            raise ProviderError(
                _("WhatsApp answered %(status)s: %(message)s")
                % {"status": response.status_code, "message": message},
                code=error.get("code"),
                http_status=response.status_code,
            )
        return body

    def check_connection(self) -> str:
        if not self.sender.phone_number_id:
            raise ProviderError(_("Set the phone number id first."))
        body = self._request(
            "GET",
            self.sender.phone_number_id,
            params={"fields": "display_phone_number,verified_name,quality_rating"},
        )
        return _("Connected: %(name)s %(number)s (quality %(quality)s).") % {
            "name": body.get("verified_name", "?"),
            "number": body.get("display_phone_number", ""),
            "quality": body.get("quality_rating") or _("unknown"),
        }

    def account_status(self) -> account_health.AccountReport:
        return read_account(self._request, self.sender)

    def submit_template(
        self, template: MessageTemplate, sample: MediaSample | None = None
    ) -> TemplateSubmission:
        if not self.sender.waba_id:
            raise ProviderError(_("Set the WhatsApp Business Account id (WABA id) first."))
        fmt = template_parts.header_format(template)
        handle = None
        if fmt is not None and fmt.is_media:
            if sample is None:
                raise ProviderError(_("Give the header's media before submitting the template."))
            handle = self._review_handle(sample)
        examples = rendering.sample_values(
            rendering.variables(template.body_text, template.parameter_format),
            template.parameter_format,
        )
        payload = {
            "name": template.name,
            "language": template.language,
            "category": template.category.value,
            "parameter_format": template.parameter_format.value,
            "components": template_components(template, examples, handle),
        }
        body = self._request("POST", f"{self.sender.waba_id}/message_templates", json=payload)
        status = META_TEMPLATE_STATUS.get(str(body.get("status", "PENDING")).upper())
        if "id" not in body or status is None:
            raise ProviderError(_("Unexpected answer from WhatsApp: %(body)r") % {"body": body})
        return TemplateSubmission(str(body["id"]), status)

    def _review_handle(self, sample: MediaSample) -> str:
        """Meta reviews a media header from a sample sent through its resumable upload
        (the app's ``/{app-id}/uploads``, then the bytes to the session): its handle."""
        if not self.app_id:
            raise ProviderError(
                _("Set WHATSAPP_APP_ID (the Meta app's id): a media header's sample goes to it.")
            )
        session = self._request(
            "POST",
            f"{self.app_id}/uploads",
            params={
                "file_name": sample.filename,
                "file_length": len(sample.content),
                "file_type": sample.content_type,
            },
        )
        upload = session.get("id")
        if not isinstance(upload, str) or not upload:
            raise ProviderError(_("Unexpected answer from WhatsApp: %(body)r") % {"body": session})
        # The upload's own protocol: the token as OAuth, the offset the bytes start at.
        done = self._request(
            "POST",
            upload,
            data=sample.content,
            headers={"Authorization": f"OAuth {self.sender.access_token}", "file_offset": "0"},
        )
        handle = done.get("h")
        if not isinstance(handle, str) or not handle:
            raise ProviderError(_("Unexpected answer from WhatsApp: %(body)r") % {"body": done})
        return handle

    def list_templates(self) -> WabaTemplates:
        return read_templates(self._request, self.sender)

    def upload_media(
        self, chunks: Iterable[bytes], *, filename: str, content_type: str, size: int
    ) -> str:
        if not self.sender.access_token:
            raise SendError(
                "This sender has no access token.",
                ErrorKind.PAUSE_SENDER,
                reason=SENDER_WITHOUT_ACCESS_TOKEN,
            )
        return upload_media(
            self._request,
            self.sender,
            chunks,
            filename=filename,
            content_type=content_type,
            size=size,
        )

    def template_status(self, template: MessageTemplate) -> TemplateStatusReport:
        if not template.provider_template_id:
            raise ProviderError(_("This template was never submitted."))
        body = self._request(
            "GET", template.provider_template_id, params={"fields": "status,rejected_reason"}
        )
        status = META_TEMPLATE_STATUS.get(str(body.get("status", "")).upper())
        if status is None:
            raise ProviderError(
                _("Unknown template status from WhatsApp: %(status)r")
                % {"status": body.get("status")}
            )
        reason = body.get("rejected_reason")
        return TemplateStatusReport(status, None if reason in (None, "NONE") else str(reason))
