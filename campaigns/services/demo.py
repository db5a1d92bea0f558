"""The demo data `make run` seeds once: an admin, a mock sender, approved templates and
a draft campaign, in Brazilian Portuguese like the shops Disparo is made for."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from app import db
from campaigns.models import (
    Campaign,
    MessageTemplate,
    ParameterFormat,
    Provider,
    Role,
    Sender,
    TemplateCategory,
    TemplateStatus,
    User,
)
from campaigns.services.campaigns import create_campaign, template_variables_for
from campaigns.services.users import generate_password, hash_password
from campaigns.validation import parse_campaign


@dataclass(frozen=True)
class DemoSeed:
    admin_email: str
    admin_password: str | None  # None when the admin already existed
    created: bool


DEMO_ADMIN_EMAIL = "admin@disparo.local"


DEMO_TEMPLATES: list[dict[str, Any]] = [
    {
        "name": "promo_weekend",
        "language": "pt_BR",
        "category": TemplateCategory.MARKETING,
        "parameter_format": ParameterFormat.NAMED,
        "header_format": "TEXT",
        "header_text": "Ofertas de fim de semana",
        "body_text": (
            "Olá {{first_name}}! Neste fim de semana você tem {{discount}} de desconto "
            "na loja de {{city}}. Use o cupom {{coupon}}."
        ),
        "footer_text": "Responda SAIR para não receber mais mensagens",
        "buttons": [{"type": "QUICK_REPLY", "text": "Quero saber mais"}],
    },
    {
        "name": "order_ready",
        "language": "pt_BR",
        "category": TemplateCategory.UTILITY,
        "parameter_format": ParameterFormat.POSITIONAL,
        "header_text": None,
        "body_text": "Oi {{1}}, seu pedido {{2}} está pronto para retirada.",
        "footer_text": None,
        "buttons": [],
    },
    {
        "name": "welcome_back",
        "language": "pt_BR",
        "category": TemplateCategory.MARKETING,
        "parameter_format": ParameterFormat.NAMED,
        "header_text": None,
        "body_text": (
            "Oi {{first_name}}, estamos com saudade! Sua próxima compra tem {{discount}} "
            "de desconto."
        ),
        "footer_text": "Responda SAIR para não receber mais mensagens",
        "buttons": [],
    },
]


def seed_demo() -> DemoSeed:
    """Create the demo admin, one mock sender and approved demo templates — once."""
    admin = db.session.scalar(sa.select(User).where(User.email == DEMO_ADMIN_EMAIL))
    if admin is not None:
        return DemoSeed(DEMO_ADMIN_EMAIL, None, created=False)
    password = generate_password()
    admin = User(email=DEMO_ADMIN_EMAIL, password_hash=hash_password(password), role=Role.ADMIN)
    sender = Sender(
        name="Loja Centro (simulador)",  # the mock WhatsApp provider
        provider=Provider.MOCK,
        phone_number_id="100000000000001",
        display_phone_number="+55 11 90000-0001",
        waba_id="200000000000001",
        # The mock signs its status webhooks with this, as Meta does with the app secret.
        app_secret=secrets.token_hex(32),
        webhook_verify_token=secrets.token_urlsafe(16),
    )
    db.session.add_all([admin, sender])
    db.session.flush()
    for spec in DEMO_TEMPLATES:
        db.session.add(
            MessageTemplate(
                sender_id=sender.id,
                status=TemplateStatus.APPROVED,
                provider_template_id=f"mock-{spec['name']}",
                created_by_id=admin.id,
                **spec,
            )
        )
    db.session.commit()
    return DemoSeed(DEMO_ADMIN_EMAIL, password, created=True)


DEMO_CAMPAIGN = {
    "name": "Promoção de Natal",
    "segment": {"state": "SP", "max_audience": 300, "opted_in_only": True},
    "variables": {
        "first_name": {"field": "first_name"},
        "discount": {"text": "15%"},
        "city": {"field": "city"},
        "coupon": {"text": "NATAL15"},
    },
}


def seed_demo_campaign() -> Campaign | None:
    """A draft for the demo admin to send at once: 300 customers in São Paulo state on
    the promo_weekend template (`flask seed-demo`, with the rest of the demo, once)."""
    admin = db.session.scalar(sa.select(User).where(User.email == DEMO_ADMIN_EMAIL))
    template = db.session.scalar(
        sa.select(MessageTemplate).where(MessageTemplate.name == "promo_weekend")
    )
    if admin is None or template is None:
        return None
    fields = parse_campaign(
        {
            **DEMO_CAMPAIGN,
            "sender_id": template.sender_id,
            "template_id": template.id,
        },
        template_variables_for(template.id),
    )
    return create_campaign(fields, admin.id)
