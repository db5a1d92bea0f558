"""The WhatsApp Cloud API client (Graph API): bearer token, JSON, explicit timeouts."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import requests

from campaigns import rendering
from campaigns.models import MessageTemplate, Sender
from campaigns.providers.base import (
    META_TEMPLATE_STATUS,
    ProviderError,
    TemplateStatusReport,
    TemplateSubmission,
    WhatsAppProvider,
    template_components,
)

logger = logging.getLogger(__name__)

TIMEOUT = (5, 15)  # (connect, read) seconds
_session = (
    requests.Session()
)  # pooled connections; requests' Session is thread-safe enough for this


class CloudApiProvider(WhatsAppProvider):
    def __init__(self, sender: Sender, config: Mapping[str, Any]) -> None:
        self.sender = sender
        self.base_url = str(config["WHATSAPP_API_BASE_URL"]).rstrip("/")

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        if not self.sender.access_token:
            raise ProviderError("This sender has no access token.")
        headers = {"Authorization": f"Bearer {self.sender.access_token}"}
        try:
            response = _session.request(
                method, f"{self.base_url}/{path}", headers=headers, timeout=TIMEOUT, **kwargs
            )
        except requests.RequestException as exc:
            raise ProviderError(f"WhatsApp could not be reached: {type(exc).__name__}") from exc
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400 or "error" in body:
            error = body.get("error") or {}
            message = error.get("error_user_msg") or error.get("message") or response.reason
            raise ProviderError(
                f"WhatsApp answered {response.status_code}: {message}",
                code=error.get("code"),
                http_status=response.status_code,
            )
        return body

    def check_connection(self) -> str:
        if not self.sender.phone_number_id:
            raise ProviderError("Set the phone number id first.")
        body = self._request(
            "GET",
            self.sender.phone_number_id,
            params={"fields": "display_phone_number,verified_name,quality_rating"},
        )
        return (
            f"Connected: {body.get('verified_name', '?')} {body.get('display_phone_number', '')}"
            f" (quality {body.get('quality_rating', 'unknown')})."
        )

    def submit_template(self, template: MessageTemplate) -> TemplateSubmission:
        if not self.sender.waba_id:
            raise ProviderError("Set the WhatsApp Business Account id (WABA id) first.")
        examples = rendering.sample_values(
            rendering.variables(template.body_text, template.parameter_format),
            template.parameter_format,
        )
        payload = {
            "name": template.name,
            "language": template.language,
            "category": template.category.value,
            "parameter_format": template.parameter_format.value,
            "components": template_components(template, examples),
        }
        body = self._request("POST", f"{self.sender.waba_id}/message_templates", json=payload)
        status = META_TEMPLATE_STATUS.get(str(body.get("status", "PENDING")).upper())
        if "id" not in body or status is None:
            raise ProviderError(f"Unexpected answer from WhatsApp: {body!r}")
        return TemplateSubmission(str(body["id"]), status)

    def template_status(self, template: MessageTemplate) -> TemplateStatusReport:
        if not template.provider_template_id:
            raise ProviderError("This template was never submitted.")
        body = self._request(
            "GET", template.provider_template_id, params={"fields": "status,rejected_reason"}
        )
        status = META_TEMPLATE_STATUS.get(str(body.get("status", "")).upper())
        if status is None:
            raise ProviderError(f"Unknown template status from WhatsApp: {body.get('status')!r}")
        reason = body.get("rejected_reason")
        return TemplateStatusReport(status, None if reason in (None, "NONE") else str(reason))
