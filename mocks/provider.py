"""The mock provider: behaves like the Cloud API without leaving the machine.

Template review: a submitted template is approved ``MOCK_TEMPLATE_APPROVAL_SECONDS``
after submission, unless its body contains ``MOCK_TEMPLATE_REJECT_MARKER``, in
which case it is rejected with a reason — so both outcomes can be tried in a demo.

Sending goes over HTTP to the mock WhatsApp (``mocks/whatsapp.py``) through the Cloud
API client's request and error handling, with no token: to the asyncio mock process
at ``MOCK_WHATSAPP_URL`` when it is set (``make run`` sets it), else to the web port's
endpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import requests

from campaigns import template_parts
from campaigns.account_health import AccountReport
from campaigns.models import MessageTemplate, Sender, TemplateStatus
from campaigns.providers.base import (
    MediaSample,
    ProviderError,
    SendResult,
    TemplateStatusReport,
    TemplateSubmission,
    WabaTemplates,
    WhatsAppProvider,
)
from campaigns.providers.cloud_api import (
    TIMEOUT,
    read_account,
    read_templates,
    send_template_message,
    upload_media,
)
from campaigns.template_parts import HeaderMedia

# The Graph API version in the mock's URLs; the mock accepts any.
MOCK_API_VERSION = "v23.0"


def mock_api_base_url(config: Mapping[str, Any]) -> str:
    """Where the mock WhatsApp answers, as the Cloud API base URL would be.

    ``MOCK_WHATSAPP_URL`` (the mock process, ``mocks/whatsapp_server.py``), else the
    web port's endpoint under ``APP_BASE_URL``.
    """
    if url := config.get("MOCK_WHATSAPP_URL"):
        return str(url).rstrip("/")
    return f"{str(config['APP_BASE_URL']).rstrip('/')}/mock/whatsapp/{MOCK_API_VERSION}"


def _meta_code(response: requests.Response) -> int | None:
    """Meta's error.code in a refusal's JSON, as the Cloud API client reads it."""
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, int) else None


class MockProvider(WhatsAppProvider):
    def __init__(self, sender: Sender, config: Mapping[str, Any]) -> None:
        self.sender = sender
        self.approval_seconds = float(config["MOCK_TEMPLATE_APPROVAL_SECONDS"])
        self.review_check_seconds = self.approval_seconds + 1  # just after it decides
        self.reject_marker = str(config["MOCK_TEMPLATE_REJECT_MARKER"])
        self.base_url = mock_api_base_url(config)
        # The asyncio mock process serves only sends: account reads go to the web port.
        self.graph_url = mock_api_base_url({"APP_BASE_URL": config["APP_BASE_URL"]})

    def check_connection(self) -> str:
        if not self.sender.phone_number_id:
            raise ProviderError("The mock needs a phone number id, like the Cloud API.")
        return f"Mock WhatsApp ready for phone number id {self.sender.phone_number_id}."

    def account_status(self) -> AccountReport:
        return read_account(self._request, self.sender)

    def list_templates(self) -> WabaTemplates:
        return read_templates(self._request, self.sender)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """A Graph API call to the mock, with no token unless the sender has one (the mock
        checks a token given); ProviderError as the Cloud API's."""
        token = self.sender.access_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers |= kwargs.pop("headers", None) or {}
        timeout = kwargs.pop("timeout", TIMEOUT)
        try:
            response = requests.request(
                method, f"{self.graph_url}/{path}", headers=headers, timeout=timeout, **kwargs
            )
        except requests.RequestException as exc:
            raise ProviderError(
                f"The mock WhatsApp could not be reached: {type(exc).__name__}"
            ) from exc
        if response.status_code >= 400:
            raise ProviderError(
                f"The mock WhatsApp answered {response.status_code}.",
                code=_meta_code(response),
                http_status=response.status_code,
            )
        try:
            return response.json()
        except ValueError:
            return {}

    def upload_media(
        self, chunks: Iterable[bytes], *, filename: str, content_type: str, size: int
    ) -> str:
        # The Media API is the web port's (the asyncio mock process serves only sends).
        return upload_media(
            self._request,
            self.sender,
            chunks,
            filename=filename,
            content_type=content_type,
            size=size,
        )

    def submit_template(
        self, template: MessageTemplate, sample: MediaSample | None = None
    ) -> TemplateSubmission:
        fmt = template_parts.header_format(template)
        if fmt is not None and fmt.is_media and sample is None:  # as the Cloud API's
            raise ProviderError("A media header needs its sample for review.")
        return TemplateSubmission(f"mock-{template.id}", TemplateStatus.PENDING)

    def template_status(self, template: MessageTemplate) -> TemplateStatusReport:
        if template.submitted_at is None:
            return TemplateStatusReport(TemplateStatus.DRAFT)
        if self.reject_marker and self.reject_marker in template.body_text:
            return TemplateStatusReport(
                TemplateStatus.REJECTED,
                f"INVALID_FORMAT: the body contains {self.reject_marker} (mock review).",
            )
        elapsed = (datetime.now(UTC) - template.submitted_at).total_seconds()
        if elapsed >= self.approval_seconds:
            return TemplateStatusReport(TemplateStatus.APPROVED)
        return TemplateStatusReport(TemplateStatus.PENDING)

    def send_template(
        self,
        *,
        to: str,
        template: MessageTemplate,
        params: dict[str, str],
        callback_data: str,
        header_media: HeaderMedia | None = None,
    ) -> SendResult:
        return send_template_message(
            self.base_url,
            self.sender,
            None,  # the mock asks for no token
            to=to,
            template=template,
            params=params,
            callback_data=callback_data,
            header_media=header_media,
        )
