"""Credentials in URLs never reach an ERP error's message (shown to users, notified)."""

from __future__ import annotations

import socket

import pytest
import requests

from campaigns.erp import ErpClient, ErpError
from campaigns.redact import redact_urls


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://user:pass@erp.example.com/api", "https://***@erp.example.com/api"),
        ("at http://token@erp:8080/x: down", "at http://***@erp:8080/x: down"),
        ("https://erp/x?token=abc123&city=Rio", "https://erp/x?token=***&city=Rio"),
        ("/customers?city=Rio&api_key=s3cr3t", "/customers?city=Rio&api_key=***"),
        ("/c?Access_Token=a;Password=b#frag", "/c?Access_Token=***;Password=***#frag"),
        ("/c?apikey=1&client%5Fsecret=2", "/c?apikey=***&client%5Fsecret=***"),
        ("https://u:p@h/p?auth=x", "https://***@h/p?auth=***"),
        # Nothing secret: unchanged, and so is text that is not a URL.
        ("https://erp.example.com/api?city=Rio&limit=500", None),
        ("The ERP failed (503): try later", None),
        ("/c?token=", None),
        ("mailto:someone@example.com", None),
    ],
)
def test_redact_urls(text, expected):
    assert redact_urls(text) == (text if expected is None else expected)


def test_requests_own_error_text_is_redacted():
    """requests repeats the path and query of a URL it could not reach."""
    url = f"http://erp-user:hunter2@127.0.0.1:{free_port()}/customers?api_key=s3cr3t&city=Rio"
    with pytest.raises(requests.ConnectionError) as caught:
        requests.get(url, timeout=5)
    raw = str(caught.value)
    assert "s3cr3t" in raw  # what would have been shown
    redacted = redact_urls(raw)
    assert "s3cr3t" not in redacted and "hunter2" not in redacted
    assert "api_key=***&city=Rio" in redacted


def test_an_erp_error_shows_no_credentials_of_the_erp_url():
    base = f"http://erp-user:hunter2@127.0.0.1:{free_port()}/erp"
    with ErpClient(base) as erp, pytest.raises(ErpError) as caught:
        erp.page({"city": "Rio"})
    error = caught.value
    assert "hunter2" not in error.message and "erp-user" not in error.message
    assert "http://***@127.0.0.1" in error.message
    assert str(error) == error.message
    # Not chained to requests' exception, whose text a logged traceback would repeat.
    assert error.__cause__ is None and error.__suppress_context__


def test_an_erp_errors_messages_are_redacted_however_made():
    error = ErpError("The ERP refused https://a:b@erp/x?token=t", 400, {"city": "see /docs?key=k"})
    assert error.message == "The ERP refused https://***@erp/x?token=***"
    assert error.fields == {"city": "see /docs?key=***"}
