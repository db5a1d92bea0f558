"""Every write, by area (as ``campaigns/views`` is): plain typed functions that own the
transaction and the jobs it defers.

One module per area: ``users`` (accounts, sign-in, API tokens), ``templates`` (and
``template_import``: a WABA's templates brought in),
``senders``, ``campaigns``, ``suppressions``, ``pricing`` (message rates), ``queue``
(the queue monitor's actions and ``flask queue``'s), ``notifications`` (marking them
read) and ``demo`` (the seed data). A refused write
raises :class:`ServiceError` (or one of its kinds), whose message is fit to show the
user where they are.
"""

from __future__ import annotations

from typing import Any


class ServiceError(ValueError):
    """A refused write, with a message fit to show the user (and the field it concerns)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    @property
    def errors(self) -> dict[str, str]:
        """The message at its field, as a form shows it ("form" when no field is named)."""
        return {self.field or "form": self.message}


class NotFound(ServiceError):
    """The thing to change does not exist (404)."""


class Conflict(ServiceError):
    """The thing exists but is in a state that refuses this change (409)."""


class Blocked(Conflict):
    """The pre-flight check found what stops the campaign (409 with the first one's code),
    however the operator confirms. ``preflight`` is the whole check (campaigns/preflight.py)."""

    def __init__(self, message: str, preflight: Any) -> None:
        super().__init__(message)
        self.preflight = preflight
        self.code = preflight.blocking[0].code


class ConfirmationRequired(Conflict):
    """The pre-flight check found warnings the operator must confirm (409
    ``confirmation_required``); sent again with confirmation, the action goes ahead."""

    code = "confirmation_required"

    def __init__(self, message: str, preflight: Any) -> None:
        super().__init__(message)
        self.preflight = preflight
