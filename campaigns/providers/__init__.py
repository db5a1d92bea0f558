"""WhatsApp providers behind one interface: the Cloud API client and the mock."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from campaigns.models import Provider, Sender
from campaigns.providers.base import (
    ProviderError,
    SendError,
    SendResult,
    TemplateStatusReport,
    TemplateSubmission,
    WabaTemplates,
    WhatsAppProvider,
)

__all__ = [
    "ProviderError",
    "SendError",
    "SendResult",
    "TemplateStatusReport",
    "TemplateSubmission",
    "WabaTemplates",
    "WhatsAppProvider",
    "for_sender",
]


def for_sender(sender: Sender, config: Mapping[str, Any]) -> WhatsAppProvider:
    """The provider that speaks for this sender."""
    if sender.provider is Provider.MOCK:
        from mocks.provider import MockProvider

        return MockProvider(sender, config)
    from campaigns.providers.cloud_api import CloudApiProvider

    return CloudApiProvider(sender, config)
