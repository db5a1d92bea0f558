"""The edge of every request: who the client is behind the platform's router, and the
headers every response carries.

``PROXY_COUNT`` is how many proxies in front of the app append to X-Forwarded-For
(a Heroku-style router: 1). werkzeug's ProxyFix then takes the client's address and
scheme from the entries those proxies wrote, the last ``PROXY_COUNT`` ones, never
from what a client put ahead of them; 0 ignores the headers (development, or a
server that clients reach directly). Set it higher than the real number of proxies
and clients choose their own address, which undoes the per-address sign-in delays.

The Content-Security-Policy allows scripts and styles from this site only: no
inline script, no ``style=`` attribute, no eval. htmx works under it because
base.html's htmx-config turns off what would break it (its injected indicator
style, eval for ``hx-on`` and trigger filters, running scripts in swapped HTML),
and the templates use none of those.
"""

from __future__ import annotations

import ipaddress

from flask import Flask, current_app, request
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response

from campaigns.models import LoginAttempt, width

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",  # Pico draws its icons as data: SVGs
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


def api_docs_policy(nonce: str) -> str:
    """The API docs page's policy (``GET /api/docs``), the one page that differs, and only
    in what the vendored Redoc (static/vendor/redoc-2.5.4.standalone.js) needs:

    - styles: styled-components injects Redoc's CSS as <style> elements, which carry this
      request's nonce (static/api-docs.js hands it to Redoc); the two <style> elements the
      bundle writes itself, perfect-scrollbar's fixed CSS and an empty one, are allowed by
      their hashes (a new Redoc's would differ: tests/test_browser.py fails on a refusal);
    - its search runs in a Web Worker that Redoc starts from a blob: URL.

    Scripts stay 'self' only, as everywhere; images too ('self' and data:), which keeps
    the bundle's credit logo from cdn.redoc.ly off the page (nothing leaves the site).
    """
    styles = " ".join(f"'{source}'" for source in (f"nonce-{nonce}", *API_DOCS_STYLE_HASHES))
    return (
        CONTENT_SECURITY_POLICY.replace("style-src 'self'", f"style-src 'self' {styles}")
        + "; worker-src blob:"
    )


API_DOCS_STYLE_HASHES = (
    "sha256-QMIg+bpjm3JdElJ388KYke01izlUW0UoNOeKjpMxdgc=",  # perfect-scrollbar's CSS
    "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",  # an empty <style>
)

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors' twin, for browsers without CSP 2
    "Referrer-Policy": "same-origin",
}
# Production only: a development server on http://127.0.0.1 must stay reachable.
HSTS = "max-age=31536000"
# The longest IPv6 text; what sign-in records the address in.
ADDRESS_MAX_LENGTH = width(LoginAttempt.__table__.c.ip_address)


def client_address() -> str:
    """The client's address, as the trusted proxies (or the socket) give it."""
    raw = request.remote_addr or ""
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        # Not an address: only a PROXY_COUNT above the real number lets a client write
        # this; kept (cut to fit) so that client is still counted as someone.
        return raw[:ADDRESS_MAX_LENGTH]


def add_headers(response: Response) -> Response:
    """after_request: the security headers, and no caching of anything but static files
    (every other page and API answer may carry someone's data)."""
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if current_app.config["DISPARO_ENV"] == "production":
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    if request.endpoint != "static":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def init_app(app: Flask) -> None:
    proxies = int(app.config["PROXY_COUNT"])
    if proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)  # type: ignore[method-assign]
    app.after_request(add_headers)
