"""Every HX-* header read or written, in one place."""

from __future__ import annotations

from flask import Response, make_response, redirect
from werkzeug.wrappers import Response as BaseResponse

from app import htmx

STOP_POLLING = 286  # htmx 2 stops a polling element that receives this status
# The event a campaign page's sections listen for (hx-trigger="… from:body") to fetch
# themselves again when the campaign changed state, e.g. its recipients once it completed.
CAMPAIGN_CHANGED = "campaign-changed"


def trigger(response: Response, event: str) -> Response:
    """Have htmx fire ``event`` on the requesting element when this response arrives."""
    response.headers["HX-Trigger"] = event
    return response


def is_htmx() -> bool:
    """An htmx request that is not a history restore (which needs the full page)."""
    return bool(htmx) and not htmx.history_restore_request


def target() -> str | None:
    """The id of the element an htmx request will swap (HX-Target); None without htmx."""
    return htmx.target if is_htmx() else None


def redirect_to(url: str) -> BaseResponse:
    """After a successful POST: HX-Redirect for htmx, 303 for a plain form."""
    if is_htmx():
        response = make_response("", 204)
        response.headers["HX-Redirect"] = url
        return response
    return redirect(url, code=303)


def replace_page(response: Response) -> Response:
    """Have htmx put this full page in place of the current one's body, where a plain
    form would load it: for a result that exists in this response only (no redirect)."""
    if is_htmx():
        response.headers["HX-Retarget"] = "body"
        response.headers["HX-Reswap"] = "innerHTML"
    return response
