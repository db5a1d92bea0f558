"""One template name in several languages: each recipient gets the version in theirs.

A template is unique per (sender, name, language), so the same name may be approved in
several languages. A campaign names one of them (its default); with a
``language_field`` the fan-out reads that customer field, picks the recipient's version
(:func:`pick`) among the campaign's :func:`variants` and keeps it as the message's
``template_id`` (NULL: the default). The send uses it while it stays approved
(``sending.py``). What a customer field holds ("pt-BR", "PT", " en ") is read as Meta's
code form ("pt_BR", "pt", "en") by :func:`normalise`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from app import db
from campaigns import template_parts, tracked_links
from campaigns.models import MessageTemplate, Sender, TemplateStatus
from campaigns.validation import row_id

# A language (2 or 3 letters) and, optionally, its region (2 letters, or 3 digits as in
# es_419, Latin American Spanish), joined by - or _ as people and systems write them.
LANGUAGE_CODE = re.compile(r"([A-Za-z]{2,3})(?:[-_]([A-Za-z]{2}|[0-9]{3}))?")


def normalise(value: Any) -> str | None:
    """A customer field's language as Meta writes it ("pt-BR", "pt_br" → "pt_BR"; "PT" →
    "pt"; "es-419" → "es_419"); None when it is empty or not a language code."""
    if not isinstance(value, str):
        return None
    found = LANGUAGE_CODE.fullmatch(value.strip())
    if found is None:
        return None
    language, region = found.group(1).lower(), found.group(2)
    return f"{language}_{region.upper()}" if region else language


def _required(template: MessageTemplate) -> set[tuple[str, Any]]:
    """The variables a send of the template cannot go without, each with what it fills:
    a version taking the same keys for other things (a coupon where the campaign's
    template has a link's ending, a tracked link where it has a shop's address) cannot
    take the same mapping. A quick reply's payload may be left out."""
    buttons = template.buttons or []

    def fills(variable: template_parts.Variable) -> Any:
        if variable.place != "button":
            return variable.place
        button = buttons[int(variable.key.partition(".")[2])]
        url = str(button.get("url", ""))
        return button.get("type"), url if tracked_links.is_tracking_address(url) else None

    return {(v.key, fills(v)) for v in template_parts.variables(template) if v.required}


def variants(template: MessageTemplate) -> dict[str, MessageTemplate]:
    """The approved versions of the template's name, by language, the template included:
    on its sender, or another sender of the same WhatsApp account (WABA), as a campaign
    may use (``services/campaigns._check_sender_and_template``); the template's own
    sender's first where both have a language.

    Only versions taking the same variables as the template: the campaign maps those,
    and Meta refuses a send whose parameters are not the template's (132000), so a
    version with others is left out and its readers get the default; so is one whose
    header lacks its media.
    """
    own_sender = db.session.get(Sender, template.sender_id)
    same_account = MessageTemplate.sender_id == template.sender_id
    if own_sender is not None and own_sender.waba_id is not None:
        account = sa.select(Sender.id).where(Sender.waba_id == own_sender.waba_id)
        same_account = sa.or_(same_account, MessageTemplate.sender_id.in_(account))
    found = db.session.scalars(
        sa.select(MessageTemplate)
        .where(
            MessageTemplate.name == template.name,
            MessageTemplate.status == TemplateStatus.APPROVED,
            same_account,
        )
        # The template's own sender's last, so they overwrite another sender's below.
        .order_by(MessageTemplate.sender_id == template.sender_id, MessageTemplate.id)
    )
    wanted = _required(template)
    by_language: dict[str, MessageTemplate] = {}
    for version in found:
        usable = _required(version) == wanted and not template_parts.needs_media(version)
        if version.id == template.id or usable:
            by_language[version.language] = version
    if template.status is TemplateStatus.APPROVED:
        by_language[template.language] = template
    return by_language


def pick(
    variants: Mapping[str, MessageTemplate], value: Any, default: MessageTemplate
) -> MessageTemplate:
    """The version for a recipient whose language field holds ``value``: that language;
    else its base language's ("pt" for "pt_PT"), else the one version of that base
    ("pt" or "pt_PT" → "pt_BR" when it is the only Portuguese one); else ``default``."""
    code = normalise(value)
    if code is None:
        return default
    if code in variants:
        return variants[code]
    base = code.partition("_")[0]
    if base in variants:
        return variants[base]
    same_base = [t for language, t in variants.items() if language.partition("_")[0] == base]
    return same_base[0] if len(same_base) == 1 else default


def languages(template: MessageTemplate) -> list[str]:
    """The languages the template's name is approved in for a campaign (its own
    included), sorted: what the form and the campaign page show."""
    return sorted(variants(template))


def also_approved_in(template_id: Any) -> list[str]:
    """The other languages a campaign on this template would send in (the form's "Also
    approved in"); none for an unknown or unapproved template."""
    key = row_id(template_id)
    template = db.session.get(MessageTemplate, key) if key else None
    if template is None or template.status is not TemplateStatus.APPROVED:
        return []
    return [language for language in languages(template) if language != template.language]
