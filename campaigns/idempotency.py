"""A create request's ``Idempotency-Key``: the first response again, never a second resource.

A client that lost the answer to a POST that creates (a timeout, a dropped connection)
cannot tell whether the sender, template, campaign or opt-out was created. Sent with an
``Idempotency-Key`` (1 to 255 visible ASCII characters, chosen by the client, scoped to
its user), the request is run once: a retry with the same key, method, path and body
gets the first response again (its status, body and ``Location``) with
``Idempotent-Replayed: true``. The same key for another request is a 422
(``idempotency_key_reused``); while the first is still being processed, a 409
(``idempotency_key_in_use``).

How (:func:`idempotent`, the one decorator the API's create views carry): before the
view runs, the key is claimed with ``INSERT … ON CONFLICT DO NOTHING`` in a short
transaction of its own, committed at once, so of two concurrent requests exactly one
inserts and the other sees its claim. After the view, its response (status < 500) is
kept on the claim; a 5xx or an exception releases the claim (deletes it), so the key
can be used again. Outside the request's own session: the services commit that one
themselves, and the claim must be visible to other requests before the view starts.

Limits: a process killed between the view's commit and keeping its response leaves
the claim in progress; after :data:`LEASE` it is taken over, and the retry then
creates again. Rows are kept :data:`KEEP` (maintenance deletes older ones; an older
one not yet deleted counts as gone). A kept response of an opt-out holds its phone
number for those 24 hours.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from flask import current_app, g, request
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.wrappers import Response

from app import DELETE_BATCH, AnySession, db, delete_oldest
from campaigns.errors import json_error
from campaigns.i18n import _
from campaigns.models import IdempotencyKey

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY = re.compile(r"[\x21-\x7e]{1,255}")  # visible ASCII: no space, no control character
KEEP = timedelta(hours=24)
# A claim still in progress this long after it was taken belongs to a request that will
# never finish (its process was killed): far longer than a create request runs.
LEASE = timedelta(minutes=10)
K = IdempotencyKey
IN_PROGRESS = "in_progress"
DONE = "done"
CLAIM_ATTEMPTS = 3  # a claim released between our insert and our read: claim again
RESPONSE = (K.response_status, K.response_body, K.response_location)


def idempotent(view: F) -> F:
    """Run the view once per ``Idempotency-Key`` (see the module's docstring); without the
    header, as it is."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = request.headers.get(HEADER)
        if key is None:
            return view(*args, **kwargs)
        if not KEY.fullmatch(key):
            return json_error(
                400,
                "invalid_idempotency_key",
                _("Send an Idempotency-Key of 1 to 255 visible ASCII characters."),
            )
        claimed = _claim(g.api_user.id, key, request.method, request.path, _body_sha256())
        if isinstance(claimed, Response):
            return claimed
        try:
            try:
                answer = view(*args, **kwargs)
            except Exception as error:
                # The API's handlers answer what they know (422, 404, 409…) now, so that
                # answer is kept; anything else is re-raised here and released below.
                answer = current_app.handle_user_exception(error)
            response = current_app.make_response(answer)
        except BaseException:
            _release(claimed)
            raise
        if response.status_code >= 500:
            _release(claimed)
        else:
            _keep(claimed, response)
        return response

    return wrapper  # type: ignore[return-value]


def _body_sha256() -> str:
    """The body's SHA-256: of its JSON written one way (keys sorted, no spaces), so a
    retry serialised differently is the same request; of its bytes when it is no JSON."""
    document = request.get_json(silent=True) if request.is_json else None
    if document is None:
        data = request.get_data()
    else:
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        data = text.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


def _claim(user_id: int, key: str, method: str, path: str, body_sha256: str) -> int | Response:
    """Claim the key for this request (its claim's id), or the answer it gets instead."""
    mine = (K.user_id == user_id) & (K.key == key)
    for _attempt in range(CLAIM_ATTEMPTS):
        with db.engine.begin() as connection:
            # Past its 24 hours, or in progress past its lease: as if it were not there.
            expired = K.created_at < sa.func.now() - KEEP
            abandoned = (K.state == IN_PROGRESS) & (K.created_at < sa.func.now() - LEASE)
            connection.execute(sa.delete(K).where(mine, expired | abandoned))
            claimed = connection.execute(
                insert(K)
                .values(
                    user_id=user_id,
                    key=key,
                    method=method,
                    path=path,
                    body_sha256=body_sha256,
                    state=IN_PROGRESS,
                )
                .on_conflict_do_nothing(index_elements=["user_id", "key"])
                .returning(K.id)
            ).scalar()
            if claimed is not None:
                return int(claimed)
            earlier = connection.execute(
                sa.select(K.method, K.path, K.body_sha256, K.state, *RESPONSE).where(mine)
            ).one_or_none()
        if earlier is None:  # released since our insert met it
            continue
        if (earlier.method, earlier.path, earlier.body_sha256) != (method, path, body_sha256):
            return json_error(
                422,
                "idempotency_key_reused",
                _(
                    "This Idempotency-Key was sent with another request; send a new key"
                    " for a new request."
                ),
            )
        if earlier.state == DONE:
            return _replay(earlier)
        break
    return json_error(
        409,
        "idempotency_key_in_use",
        _("A request with this Idempotency-Key is still being processed; try again shortly."),
    )


def _replay(row: Any) -> Response:
    response = current_app.response_class(
        row.response_body, status=row.response_status, mimetype="application/json"
    )
    if row.response_location:
        response.headers["Location"] = row.response_location
    response.headers[REPLAYED_HEADER] = "true"
    return response


def _keep(claim_id: int, response: Response) -> None:
    """Keep the response on the claim. If that fails the client still gets its answer
    (the resource exists); a retry within the lease is told the key is in use."""
    try:
        with db.engine.begin() as connection:
            connection.execute(
                sa.update(K)
                .where(K.id == claim_id, K.state == IN_PROGRESS)
                .values(
                    state=DONE,
                    response_status=response.status_code,
                    response_body=response.get_data(as_text=True),
                    response_location=response.headers.get("Location"),
                )
            )
    except SQLAlchemyError:
        logger.exception("idempotency key claim %s: its response could not be kept", claim_id)


def _release(claim_id: int) -> None:
    """Let the key be used again: the request failed (5xx, exception)."""
    try:
        with db.engine.begin() as connection:
            connection.execute(sa.delete(K).where(K.id == claim_id, K.state == IN_PROGRESS))
    except SQLAlchemyError:
        logger.exception("idempotency key claim %s could not be released", claim_id)


def delete_old_keys(session: AnySession, batch: int = DELETE_BATCH) -> int:
    """Delete up to ``batch`` of the keys older than 24 hours (maintenance); the caller
    commits."""
    return delete_oldest(session, IdempotencyKey, IdempotencyKey.created_at, KEEP, batch)
