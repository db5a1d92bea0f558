from __future__ import annotations

import hashlib

from app import db
from campaigns.models import ApiToken, Role, User


def test_users_create_reads_the_password_from_stdin(runner):
    result = runner.invoke(
        args=["users", "create", "ops@example.com", "--role", "supervisor"],
        input="a long enough password\n",
    )
    assert result.exit_code == 0, result.output
    user = db.session.query(User).filter_by(email="ops@example.com").one()
    assert user.role is Role.SUPERVISOR
    assert "API token" not in result.output


def test_users_create_with_api_token_prints_it_last_and_stores_only_its_hash(runner):
    result = runner.invoke(
        args=["users", "create", "bot@example.com", "--role", "viewer", "--api-token"],
        input="a long enough password\n",
    )
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    assert token.startswith("dsp_") and len(token) > 40
    stored = db.session.query(ApiToken).one()
    assert stored.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert token not in (stored.prefix, stored.token_sha256)


def test_users_create_refuses_duplicates_and_short_passwords(runner):
    args = ["users", "create", "dup@example.com"]
    assert runner.invoke(args=args, input="a long enough password\n").exit_code == 0
    again = runner.invoke(args=["users", "create", "DUP@example.com"], input="another password\n")
    assert again.exit_code != 0
    assert "already exists" in again.output
    short = runner.invoke(args=["users", "create", "x@example.com"], input="short\n")
    assert short.exit_code != 0
    assert "at least" in short.output


def test_seed_demo_prints_the_same_credentials_every_time(runner, app):
    first = runner.invoke(args=["seed-demo"])
    second = runner.invoke(args=["seed-demo"])
    assert first.exit_code == 0 and second.exit_code == 0
    assert "Demo admin: admin@disparo.local / " in first.output
    assert first.output == second.output
    assert db.session.query(User).count() == 1


def test_seed_demo_leaves_a_draft_in_portuguese_to_send(runner, app):
    from campaigns.models import Campaign, CampaignStatus

    runner.invoke(args=["seed-demo"])
    runner.invoke(args=["seed-demo"])  # once only
    (draft,) = db.session.query(Campaign).all()
    assert (draft.name, draft.status) == ("Promoção de Natal", CampaignStatus.DRAFT)
    assert draft.template.language == "pt_BR" and draft.sender.name.startswith("Loja Centro")


def test_seed_demo_refuses_to_run_in_production(runner, app):
    app.config["DISPARO_ENV"] = "production"
    result = runner.invoke(args=["seed-demo"])
    assert result.exit_code != 0
    assert "seed-demo is for development only" in result.output
    assert db.session.query(User).count() == 0
