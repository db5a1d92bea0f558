"""The API's OpenAPI document: valid, public, complete, and the suite's check of every
/api/v1 answer against it (tests/helpers.py's ApiContract) catches a wrong one."""

from __future__ import annotations

import json
import re

from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator import validate

from campaigns import openapi, security
from campaigns.models import CampaignStatus, MessageStatus, Role
from campaigns.views import api
from tests.helpers import API_CONTRACT, ApiExchange


def test_the_document_is_valid_openapi_3_1():
    document = openapi.document()
    assert document["openapi"].startswith("3.1")
    validate(document)  # raises on any error


def test_the_document_and_the_docs_page_are_public_and_uncounted(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.get_json() == json.loads(json.dumps(openapi.document()))
    assert "X-RateLimit-Limit" not in response.headers

    page = client.get("/api/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "/static/vendor/redoc-2.5.4.standalone.js" in html
    assert 'data-spec-url="/api/v1/openapi.json"' in html
    assert "<script>" not in html and "style=" not in html  # nothing inline
    # The page's own policy: its styles by this request's nonce, nothing else relaxed.
    found = re.search(r'nonce="([^"]+)"', html)
    assert found is not None
    nonce = found.group(1)
    assert page.headers["Content-Security-Policy"] == security.api_docs_policy(nonce)
    assert "script-src 'self';" in page.headers["Content-Security-Policy"]
    assert (
        client.get("/api/docs").headers["Content-Security-Policy"]
        != page.headers["Content-Security-Policy"]
    )  # a new nonce each time
    # Every other page keeps the site's policy.
    other = client.get("/login")
    assert other.headers["Content-Security-Policy"] == security.CONTENT_SECURITY_POLICY


def test_every_api_route_and_method_is_in_the_document(app):
    documented = openapi.document()["paths"]
    missing = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/"):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        choices = re.match(r".*<any\(([^)]*)\):[a-z_]+>$", rule.rule)
        paths = (
            [
                re.sub(r"<any\([^)]*\):[a-z_]+>", choice.strip(" '"), path)
                for choice in choices.group(1).split(",")
            ]
            if choices
            else [path]
        )
        for one in paths:
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                if method.lower() not in documented.get(one, {}):
                    missing.append(f"{method} {one}")
    assert missing == []


def test_enums_come_from_the_models():
    schemas = openapi.document()["components"]["schemas"]
    assert schemas["Campaign"]["properties"]["status"]["enum"] == [s.value for s in CampaignStatus]
    assert schemas["Message"]["properties"]["status"]["enum"] == [s.value for s in MessageStatus]
    assert schemas["User"]["properties"]["role"]["enum"] == [r.value for r in Role]
    # Nullable fields say so, as JSON Schema 2020-12 does.
    assert schemas["Campaign"]["properties"]["scheduled_at"]["type"] == ["string", "null"]


def test_a_field_the_document_does_not_list_is_caught(client, token_for, monkeypatch):
    real = api.user_json
    monkeypatch.setattr(api, "user_json", lambda user: real(user) | {"password_hint": "x"})
    assert client.get("/api/v1/me", headers=token_for(Role.VIEWER)).status_code == 200
    problems = API_CONTRACT.problems(API_CONTRACT.take())
    assert len(problems) == 1
    assert problems[0].startswith("GET /api/v1/me → 200: ")
    assert "password_hint" in problems[0]


def test_a_missing_field_a_wrong_type_and_a_bad_status_are_caught(client, token_for):
    assert client.get("/api/v1/me", headers=token_for(Role.VIEWER)).status_code == 200
    [good] = API_CONTRACT.take()
    assert API_CONTRACT.problems([good]) == []
    body = json.loads(good.response.data)

    def answered(data: object, status: int = 200, path: str = "/api/v1/me", routed=True):
        return ApiExchange(
            MockRequest("http://localhost", "GET", path),
            MockResponse(
                json.dumps(data).encode(), status_code=status, headers=good.response.headers
            ),
            routed=routed,
        )

    without_email = {k: v for k, v in body.items() if k != "email"}
    [problem] = API_CONTRACT.problems([answered(without_email)])
    assert "email" in problem
    [problem] = API_CONTRACT.problems([answered(body | {"role": "owner"})])
    assert "role" in problem or "owner" in problem
    [problem] = API_CONTRACT.problems([answered(body, status=418)])
    assert problem.startswith("GET /api/v1/me → 418")
    # An error in another envelope, on a documented status.
    assert API_CONTRACT.problems([answered({"message": "no"}, status=404)])
    # A path the document does not have, routed anyway (a route added, not documented).
    assert API_CONTRACT.problems([answered(body, path="/api/v1/undocumented")])
    # No route: only a 404 or 405 in the envelope.
    envelope = {"error": {"code": "not_found", "message": "There is nothing here."}}
    assert API_CONTRACT.problems([answered(envelope, 404, "/api/v1/nope", routed=False)]) == []
    assert API_CONTRACT.problems([answered({"detail": "x"}, 404, "/api/v1/nope", routed=False)])
    assert API_CONTRACT.problems([answered(envelope, 200, "/api/v1/nope", routed=False)])


def test_a_missing_required_header_is_caught(client, token_for):
    client.get("/api/v1/me", headers=token_for(Role.VIEWER))
    [good] = API_CONTRACT.take()
    headers = {k: v for k, v in good.response.headers.items() if k != "X-RateLimit-Remaining"}
    exchange = ApiExchange(
        good.request,
        MockResponse(good.response.data, status_code=200, headers=headers),
        routed=True,
    )
    [problem] = API_CONTRACT.problems([exchange])
    assert "X-RateLimit-Remaining" in problem


def test_unknown_paths_and_methods_answer_in_the_envelope(client):
    assert client.get("/api/v1/nope").status_code == 404
    assert client.delete("/api/v1/me").status_code == 405
    # Both recorded, unrouted, and well formed: the autouse check passes them.
    exchanges = API_CONTRACT.exchanges
    assert [e.routed for e in exchanges] == [False, False]
