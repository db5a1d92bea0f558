"""The JSON API's OpenAPI 3.1 document (``GET /api/v1/openapi.json``), built from the code.

Built in Python rather than kept as a JSON file, so the parts that would otherwise be
copied can come from where the code keeps them: every enum from ``campaigns.models``,
every bound and pattern of a request body from ``campaigns.validation`` (and the
constants it uses), the audit actions from ``campaigns.audit``. A value added there
appears here; nothing is kept in step by hand but the shape of each answer, and the
suite checks that shape: every ``/api/v1`` answer any test gets through the Flask test
client is validated against this document (``tests/helpers.py``, ``ApiContract``), and
the response objects refuse properties they do not list, so a field added to an answer
without being documented fails the suite.

The document is built once per process (:func:`document`) and served as it is.
"""

from __future__ import annotations

from enum import Enum
from functools import cache
from typing import Any

from campaigns import audit, media, rendering, slowdown
from campaigns.erp import SEGMENT_KEYS
from campaigns.models import (
    CampaignStatus,
    HeaderFormat,
    MessageStatus,
    ParameterFormat,
    Provider,
    Role,
    TemplateCategory,
    TemplateQuality,
    TemplateStatus,
)
from campaigns.ratelimit import PACE_OWNER, PACE_SENDER_GAP, PACE_SENDER_RATE
from campaigns.services.suppressions import SUPPRESSION_SOURCES
from campaigns.services.template_import import SKIP_REASONS
from campaigns.template_parts import COUPON_MAX_CHARS
from campaigns.validation import (
    CUSTOMER_FIELDS,
    INTEGER_MAX,
    LANGUAGE,
    MAX_AMOUNT,
    MAX_BUTTONS,
    TEMPLATE_NAME,
    URL_MAX_CHARS,
)

Schema = dict[str, Any]

DOCUMENT_PATH = "/api/v1/openapi.json"
# The lists' pages with a cursor (the API contract of issue 16): a page's rows.
LIST_LIMIT_MAX = 500
LIST_LIMIT_DEFAULT = 50
MESSAGES_LIMIT_DEFAULT = 100
IDEMPOTENCY_KEY_MAX = 255


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def values(enum: type[Enum]) -> list[str]:
    return [member.value for member in enum]


def nullable(schema: Schema) -> Schema:
    """The schema, or null: ``type: [T, "null"]`` (an enum also lists None)."""
    out = dict(schema)
    out["type"] = [schema["type"], "null"]
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


def obj(properties: dict[str, Schema], optional: tuple[str, ...] = (), **extra: Any) -> Schema:
    """An answer's object: every property listed, each required unless named optional,
    none other allowed (an undocumented field fails the suite's check)."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
        **extra,
    }


def fixed(pattern: Any) -> str:
    """A Python pattern used with fullmatch, anchored for JSON Schema (which searches)."""
    return f"^(?:{pattern.pattern})$"


STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
ID: Schema = {"type": "integer", "minimum": 1, "maximum": INTEGER_MAX}
BIG_ID: Schema = {"type": "integer", "minimum": 1}
DATE_TIME: Schema = {"type": "string", "format": "date-time"}
COUNT: Schema = {"type": "integer", "minimum": 0}
LANGUAGE_FIELD: Schema = {
    "type": ["string", "null"],
    "maxLength": 64,
    "description": (
        'The customer field holding each recipient\'s language ("pt-BR", "en"): each gets'
        " the approved version of the template's name in it, or of its base language, or"
        " else the campaign's template. null (the default): the template's language for"
        f" everyone. One of {', '.join(CUSTOMER_FIELDS)} for an ERP audience; a column of"
        " the file for a CSV audience (audience_file_id)."
    ),
}
AUDIENCE_FILE_ID: Schema = {
    **nullable(BIG_ID),
    "description": (
        "A CSV audience: a file from POST /api/v1/audiences (its rows are the recipients,"
        " its columns the fields the variables map to). null (the default): the ERP"
        " segment is the audience."
    ),
}
AUDIENCE_PHONE_COLUMN: Schema = {
    **nullable({"type": "string", "minLength": 1, "maxLength": 200}),
    "description": "A CSV audience's column holding each recipient's phone number.",
}
RECURRENCE: Schema = {
    "type": ["object", "null"],
    "description": (
        "How the campaign repeats; null (the default): it does not. A repeating campaign (a"
        " series) is never sent itself: scheduled, it makes a run at each occurrence, a copy"
        " with its own progress (recurrence_of_id, run_number), skipped and noted while the"
        " previous run is still sending or paused. Occurrences are local times in time_zone"
        " (daylight saving time kept); a monthly day the month lacks falls on its last day."
        ' Any object is a rule: a missing or misspelt every is a 422, not "does not'
        ' repeat"; weekday and day are whole numbers. 422 at recurrence.<key> for a bad'
        " or unknown key."
    ),
    "properties": {
        "every": {"type": "string", "enum": ["daily", "weekly", "monthly"]},
        "at": {
            "type": "string",
            "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$",
            "description": "The local time of day, HH:MM.",
            "examples": ["09:00"],
        },
        "weekday": {
            "type": "integer",
            "minimum": 0,
            "maximum": 6,
            "description": "Weekly only: 0 Monday … 6 Sunday.",
        },
        "day": {
            "type": "integer",
            "minimum": 1,
            "maximum": 31,
            "description": "Monthly only: the day of the month (a shorter month: its last).",
        },
        "time_zone": {
            "type": "string",
            "description": "An IANA time zone name.",
            "examples": ["America/Sao_Paulo"],
        },
    },
    "required": ["every", "at", "time_zone"],
    "additionalProperties": False,
}
SEND_WINDOW: Schema = {
    "type": ["object", "null"],
    "description": (
        "The local hours and days messages go out, in each recipient's time zone (from"
        " time_zone_field, else the number: Brazil by area code, other countries by their"
        " code). Open from start (included) to end (excluded); an end before the start"
        " crosses midnight and belongs to the day it opens on. Outside it a message waits"
        " (pending) and goes when its window opens; one queued just before the close may"
        " still go within about a minute. null (the default): any time."
    ),
    "properties": {
        "start": {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"},
        "end": {
            "type": "string",
            "pattern": "^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$",
            "description": "24:00: the end of the day (00:00 to 24:00: the whole day).",
        },
        "days": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": 6},
            "minItems": 1,
            "maxItems": 7,
            "uniqueItems": True,
            "description": "0 = Monday ... 6 = Sunday.",
        },
    },
    "required": ["start", "end", "days"],
    "additionalProperties": False,
    "examples": [{"start": "09:00", "end": "20:00", "days": [0, 1, 2, 3, 4, 5]}],
}
TIME_ZONE_FIELD: Schema = {
    "type": ["string", "null"],
    "maxLength": 64,
    "description": (
        "The customer field naming each recipient's IANA time zone (America/Manaus); a value"
        " that is not one falls back to the number's zone. null (the default): from the"
        f" number. One of {', '.join(CUSTOMER_FIELDS)} for an ERP audience; a column of the"
        " file for a CSV audience (audience_file_id)."
    ),
}
FREQUENCY_CAP_DAYS: Schema = {
    "type": ["integer", "null"],
    "minimum": 1,
    "description": (
        "Leave out anyone any other campaign messaged (admitted to send) within this many"
        " days, skipped with frequency_cap; decided when each message is about to go, so it"
        " holds across campaigns sending at once. Runs of one recurring campaign do not cap"
        " each other. A whole number, 1 to CONTACT_HISTORY_DAYS (90 by default)."
        " null: no cap. Left out of a create, the admin's campaign default."
    ),
}
EXCLUDE_RUNNING: Schema = {
    "type": "boolean",
    "description": (
        "Leave out (skipped with in_other_campaign) numbers with a message still to go or"
        " sent in another campaign that is sending or paused, as the audience is loaded."
        " Left out of a create, the admin's campaign default (false as shipped)."
    ),
}
CONFIRM: Schema = {
    "type": "boolean",
    "default": False,
    "description": (
        "true goes ahead despite the pre-flight check's warnings that need confirmation "
        "(without it: 409 confirmation_required listing them)."
    ),
}


def _segment_schema() -> Schema:
    properties: dict[str, Schema] = {
        "city": {"type": "string", "description": "Customers in this city (any accents, case)."},
        "state": {"type": "string", "pattern": "^[A-Za-z]{2}$", "description": "e.g. SP"},
        "tags": {
            "type": "array",
            "items": STRING,
            "description": "Customers with every tag (a request may send them comma-separated).",
        },
        "min_total_spent": {
            "type": "number",
            "minimum": 0,
            "maximum": float(MAX_AMOUNT),
            "description": "A request may send text: 1.234,56, 1,234.56, R$ 150.",
        },
        "last_purchase_within_days": {"type": "integer", "minimum": 1, "maximum": 3650},
        "max_audience": {"type": "integer", "minimum": 1, "maximum": 10_000_000},
        "opted_in_only": {"type": "boolean", "default": True},
    }
    assert set(properties) == set(SEGMENT_KEYS), "a segment key is missing from the document"
    return {
        "type": "object",
        "description": "The ERP's criteria for the audience; a key not listed is refused (422).",
        "properties": properties,
        "additionalProperties": False,
    }


def _variables_schema() -> Schema:
    from_field = obj(
        {
            "field": {
                "type": "string",
                "minLength": 1,
                "maxLength": 200,
                "description": (
                    f"An ERP audience's customer field ({', '.join(CUSTOMER_FIELDS)}), or a"
                    " column of a CSV audience's file."
                ),
            }
        }
    )
    from_text = obj({"text": {"type": "string", "minLength": 1, "maxLength": 1024}})
    from_track = obj(
        {
            "track": {
                "type": "string",
                "pattern": "^https://\\S+$",
                "maxLength": URL_MAX_CHARS,
                "description": (
                    "button.<index> of a link whose address is {APP_BASE_URL}/l/{{1}}: each"
                    " recipient's click is counted, then redirected here."
                ),
            }
        }
    )
    return {
        "type": "object",
        "description": (
            "Each variable of the template (its header's, body's and buttons': the template's"
            " `variables`) mapped to a customer field, a fixed text or, for a link button,"
            " a tracked link; every variable must be mapped but a quick reply's payload"
            " (payload.<index>), and only the template's."
        ),
        "additionalProperties": {"oneOf": [from_field, from_text, from_track]},
    }


def _button_schema() -> Schema:
    return obj(
        {
            "type": {"type": "string", "enum": ["QUICK_REPLY", "URL", "PHONE_NUMBER", "COPY_CODE"]},
            "text": {
                "type": "string",
                "minLength": 1,
                "maxLength": 25,
                "description": "Every kind but COPY_CODE, whose words WhatsApp sets.",
            },
            "url": {
                "type": "string",
                "pattern": "^https://\\S+$",
                "maxLength": URL_MAX_CHARS,
                "description": (
                    "URL buttons only. Ending in {{1}}, each recipient gets their own"
                    " ending: the campaign maps the variable button.<index>."
                ),
            },
            "phone_number": {"type": "string", "description": "PHONE_NUMBER buttons only."},
            "example": {
                "type": "string",
                "maxLength": COUPON_MAX_CHARS,
                "description": (
                    "COPY_CODE buttons only: an example code for review; the campaign"
                    " maps the variable button.<index> to each recipient's code."
                ),
            },
        },
        optional=("text", "url", "phone_number", "example"),
    )


def _location_schema() -> Schema:
    text = {"type": "string", "maxLength": 1000}
    return obj(
        {
            "latitude": {"type": "number", "minimum": -90, "maximum": 90},
            "longitude": {"type": "number", "minimum": -180, "maximum": 180},
            "name": {**text, "minLength": 1},
            "address": {**text, "minLength": 1},
        }
    )


def _header_properties() -> dict[str, Schema]:
    """A template's header, as read and written."""
    return {
        "header_format": {
            **nullable({"type": "string", "enum": values(HeaderFormat)}),
            "description": "null: no header. TEXT with header; media with a link or a file.",
        },
        "header_media_link": {
            **nullable({"type": "string", "pattern": "^https://\\S+$"}),
            "description": "IMAGE, VIDEO, DOCUMENT: a public address WhatsApp fetches.",
        },
        "header_media_file_id": {
            **nullable(ID),
            "description": "IMAGE, VIDEO, DOCUMENT: a file from POST /api/v1/media.",
        },
        "header_location": {
            "oneOf": [ref("Location"), {"type": "null"}],
            "description": "LOCATION: the place the header shows.",
        },
    }


def schemas() -> dict[str, Schema]:
    error = obj(
        {
            "error": obj(
                {
                    "code": {
                        "type": "string",
                        "description": (
                            "What went wrong, to compare: bad_request, invalid_idempotency_key, "
                            "unauthenticated, forbidden, not_found, method_not_allowed, conflict, "
                            "idempotency_key_in_use, too_large, validation_failed, "
                            "idempotency_key_reused, rate_limited, internal_error; from the "
                            "pre-flight check (schedule, send-now): confirmation_required, or "
                            "a blocking problem's own code."
                        ),
                    },
                    "message": {
                        "type": "string",
                        "description": "Words for a person, in the Accept-Language's language.",
                    },
                    "fields": {
                        "type": "object",
                        "description": (
                            "One message per refused field, named as sent (nested ones joined "
                            "by dots: segment.state, variables.first_name; body: the body)."
                        ),
                        "additionalProperties": STRING,
                    },
                    "warnings": {
                        "type": "array",
                        "items": ref("Finding"),
                        "description": "confirmation_required: the warnings to confirm.",
                    },
                    "blocking": {
                        "type": "array",
                        "items": ref("Finding"),
                        "description": "A blocking problem's refusal: every blocking problem.",
                    },
                },
                optional=("fields", "warnings", "blocking"),
            )
        }
    )
    finding = obj(
        {
            "code": {
                "type": "string",
                "description": (
                    "Blocking: template_not_approved, sender_inactive, sender_not_connected, "
                    "no_budget (schedule and send-now refuse the first two earlier, as before: "
                    "422 at template_id or sender_id). Warnings that need confirmation: "
                    "budget_overrun, number_quality_red, template_quality_red. Notes (no "
                    "confirmation): number_quality_yellow, template_quality_yellow, "
                    "messaging_limit_unknown, audience_estimated, audience_unknown, unpriced, "
                    "list_price, in_progress, exclusions, exclusions_estimated (what the "
                    "campaign's frequency cap and exclusions will leave out)."
                ),
            },
            "message": {"type": "string", "description": "In English."},
        }
    )
    preflight = obj(
        {
            "ok": {
                "type": "boolean",
                "description": "Nothing blocks it and no warning needs confirmation.",
            },
            "audience": {
                **COUNT,
                "description": (
                    "Recipients still to reach: the ERP's count before the audience is "
                    "loaded (an estimate), the messages still to send after."
                ),
            },
            "budget": obj(
                {
                    "limit": {
                        **nullable(COUNT),
                        "description": (
                            "New recipients a day: the portfolio's 24-hour messaging limit "
                            "less MESSAGING_LIMIT_MARGIN_PERCENT; null: unlimited."
                        ),
                    },
                    "remaining": nullable(COUNT),
                    "days": {
                        **COUNT,
                        "description": "Days the campaign spans (0: never, no budget at all).",
                    },
                }
            ),
            "estimated_cost": obj(
                {
                    "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                    "amount": {"type": "number", "minimum": 0},
                },
                description="Meta's list price per delivered message (the Settings' rates).",
            ),
            "estimated_duration_seconds": {
                "type": "number",
                "minimum": 0,
                "description": (
                    "At the limits, waits for the budget included; 0 when it cannot go "
                    "(blocking says why)."
                ),
            },
            "warnings": {"type": "array", "items": ref("Finding")},
            "blocking": {"type": "array", "items": ref("Finding")},
        }
    )
    user = obj(
        {
            "id": ID,
            "email": STRING,
            "role": {"type": "string", "enum": values(Role)},
            "disabled": {"type": "boolean"},
            "campaign_rate_limit_per_minute": INTEGER,
            "api_rate_limit_per_minute": INTEGER,
        }
    )
    sender = obj(
        {
            "id": ID,
            "name": STRING,
            "provider": {"type": "string", "enum": values(Provider)},
            "phone_number_id": nullable(STRING),
            "display_phone_number": nullable(STRING),
            "waba_id": nullable(STRING),
            "rate_limit_per_minute": INTEGER,
            "min_interval_ms": INTEGER,
            "has_access_token": {"type": "boolean", "description": "Secrets are write-only."},
            "has_app_secret": {"type": "boolean"},
            "business_id": {
                **nullable(STRING),
                "description": "The business portfolio; null: the sender is its own.",
            },
            "quality_rating": {
                **nullable({"type": "string", "enum": ["GREEN", "YELLOW", "RED", "UNKNOWN"]}),
                "description": "The number's quality as Meta last said; null: never read.",
            },
            "messaging_limit": {
                **nullable({"type": "integer", "minimum": 0}),
                "description": (
                    "Unique users a day (moving 24 h) the portfolio may reach with templates"
                    " outside a customer-service window: Meta's (250, 2000, 10000, 100000),"
                    " or an admin's override until Meta reports a different value."
                    " null: unlimited."
                ),
            },
            "messaging_limit_overridden": {
                "type": "boolean",
                "description": "true: messaging_limit is an admin's override, not Meta's report.",
            },
            "throughput_per_second": {
                **nullable({"type": "integer", "minimum": 0}),
                "description": "Messages a second Meta allows the number; null: never read.",
            },
            "throughput_factor": {
                "type": "number",
                "minimum": slowdown.FLOOR,
                "maximum": 1,
                "description": (
                    "The share of its throughput the sender sends at now (of"
                    " throughput_per_second once Meta has said it, else of"
                    " rate_limit_per_minute and the minimum gap's pace): WhatsApp's"
                    " throughput error (130429) steps it"
                    f" down by {slowdown.STEP:g}, to {slowdown.FLOOR:g} at least; each minute"
                    " without another gives a step back. 1: full speed."
                ),
            },
            "last_throttled_at": {
                **nullable(DATE_TIME),
                "description": "The sender's last throughput error; null: never.",
            },
        }
    )
    template = obj(
        {
            "id": ID,
            "sender_id": ID,
            "name": STRING,
            "language": STRING,
            "category": {"type": "string", "enum": values(TemplateCategory)},
            "parameter_format": {"type": "string", "enum": values(ParameterFormat)},
            "header": nullable(STRING),
            **_header_properties(),
            "body": STRING,
            "footer": nullable(STRING),
            "buttons": {"type": "array", "items": ref("Button")},
            "variables": {
                "type": "array",
                "items": STRING,
                "description": (
                    "Every variable a campaign maps, in order: the header's (header.<name>),"
                    " the body's, the buttons' (button.<index>: a link's ending or a coupon;"
                    " payload.<index>: a quick reply's payload, optional)."
                ),
            },
            "status": {"type": "string", "enum": values(TemplateStatus)},
            "status_reason": nullable(STRING),
            "provider_template_id": nullable(STRING),
            "quality_rating": {
                **nullable({"type": "string", "enum": values(TemplateQuality)}),
                "description": "WhatsApp's rating of the template, from its quality webhook;"
                " null until one arrives.",
            },
        }
    )
    campaign = obj(
        {
            "id": ID,
            "name": STRING,
            "status": {"type": "string", "enum": values(CampaignStatus)},
            "status_reason": {
                **nullable(STRING),
                "description": "English whatever the client's language.",
            },
            "status_reason_code": {
                **nullable(STRING),
                "description": (
                    "A stable code to compare rather than the text: failure_rate, whatsapp_stop, "
                    "template_disabled, erp_audience_failed (erp_failed before it), "
                    "sender_without_access_token, sender_without_phone_number_id, or text."
                ),
            },
            "owner_id": ID,
            "sender_id": ID,
            "template_id": ID,
            "segment": ref("Segment"),
            "variables": ref("VariableMapping"),
            "language_field": LANGUAGE_FIELD,
            "audience_file_id": AUDIENCE_FILE_ID,
            "audience_phone_column": AUDIENCE_PHONE_COLUMN,
            "send_window": SEND_WINDOW,
            "time_zone_field": TIME_ZONE_FIELD,
            "frequency_cap_days": FREQUENCY_CAP_DAYS,
            "exclude_running": EXCLUDE_RUNNING,
            "scheduled_at": nullable(DATE_TIME),
            "started_at": nullable(DATE_TIME),
            "completed_at": nullable(DATE_TIME),
            "created_at": nullable(DATE_TIME),
            "recurrence": RECURRENCE,
            "next_run_at": {
                **nullable(DATE_TIME),
                "description": "A repeating campaign's next run, while it repeats (scheduled).",
            },
            "recurrence_of_id": {
                **nullable(ID),
                "description": "A run's repeating campaign (its series); null for any other.",
            },
            "run_number": {
                **nullable({"type": "integer", "minimum": 1}),
                "description": "A run's number among its series' runs (1, 2…).",
            },
        }
    )
    counts = {
        name: COUNT
        for name in (
            "total",
            "in_flight",
            "pending",
            "queued",
            "sending",
            "retrying",
            "sent",
            "delivered",
            "read",
            "failed",
            "skipped",
            "cancelled",
        )
    }
    answered = {
        "replied": {
            **COUNT,
            "description": (
                "Messages their recipient replied to (a text, a reaction, media, a quick-reply"
                " button), each counted once."
            ),
        },
        "clicked": {
            **COUNT,
            "description": "Messages with a button their recipient tapped, each counted once.",
        },
    }
    progress = obj(
        {
            "campaign_id": ID,
            "status": {"type": "string", "enum": values(CampaignStatus)},
            "status_reason": nullable(STRING),
            "status_reason_code": nullable(STRING),
            **counts,
            "held": {
                **COUNT,
                "description": (
                    "Of the retrying, the messages WhatsApp's per-user marketing limit"
                    " (131049) holds: each is tried once more MARKETING_LIMIT_RETRY_HOURS"
                    " (24 by default) after it was held, and fails if held again."
                ),
            },
            "held_retry_from": {
                **nullable(DATE_TIME),
                "description": (
                    "When the first held message is tried again (in a paused campaign, not"
                    " before then and only once it is resumed); null when none is."
                ),
            },
            **answered,
            "reply_rate": {
                **nullable({"type": "number", "minimum": 0, "maximum": 1}),
                "description": "replied ÷ delivered; null before any message is delivered.",
            },
            "success_rate": {
                **nullable({"type": "number"}),
                "description": "Percent of the messages that went their way that were sent.",
            },
            "sent_last_minute": COUNT,
            "eta_seconds": {
                **nullable({"type": "number", "minimum": 0}),
                "description": (
                    "None when not sending, nothing remains, or it stalled; waits for the "
                    "24-hour budget and for the recipients' sending windows included."
                ),
            },
            "carried_over": {
                **COUNT,
                "description": (
                    "Pending messages the portfolio's 24-hour messaging budget has no room "
                    "for now: they go in later waves."
                ),
            },
            "next_wave_at": {
                **nullable(DATE_TIME),
                "description": "When the budget has room again for them; null: none waits.",
            },
            "waiting_for_window": {
                **COUNT,
                "description": (
                    "Pending messages whose recipient's sending window is closed now: they"
                    " go when it opens (0 without a window). Counted per zone as the pump"
                    " last saw them."
                ),
            },
            "next_window_at": {
                **nullable(DATE_TIME),
                "description": (
                    "When the first closed window with messages waiting opens; null: none waits."
                ),
            },
            "eta_from_limits": {"type": "boolean"},
            "pace_limited_by": nullable(
                {"type": "string", "enum": [PACE_OWNER, PACE_SENDER_RATE, PACE_SENDER_GAP]}
            ),
            "is_finished": {"type": "boolean"},
            "started_at": nullable(DATE_TIME),
            "completed_at": nullable(DATE_TIME),
            "elapsed_seconds": nullable({"type": "number", "minimum": 0}),
        }
    )
    suppression = obj(
        {
            "id": ID,
            "phone": {
                **nullable(STRING),
                "description": "E.164; null once the person's data was erased (kept as a hash).",
            },
            "reason": {"type": "string", "description": "People's words only; empty if none."},
            "source": {"type": "string", "enum": sorted(SUPPRESSION_SOURCES)},
            "created_at": DATE_TIME,
        }
    )
    audit_event = obj(
        {
            "id": BIG_ID,
            "at": DATE_TIME,
            "actor_id": nullable(ID),
            "actor_email": {"type": "string", "description": "Or cli, system."},
            "action": {"type": "string", "enum": list(audit.ACTIONS)},
            "target_type": nullable(STRING),
            "target_id": nullable(INTEGER),
            "target_label": nullable(STRING),
            "details": {"type": "object", "description": "Never a secret or a full phone number."},
            "client_address": nullable(STRING),
        }
    )
    message = obj(
        {
            "id": BIG_ID,
            "phone": {**nullable(STRING), "description": "E.164; null once erased."},
            "customer_ref": nullable(STRING),
            "status": {"type": "string", "enum": values(MessageStatus)},
            "attempts": COUNT,
            "error_code": nullable(STRING),
            "error_message": {
                **nullable(STRING),
                "description": (
                    "Disparo's own codes worded in English; WhatsApp's or the ERP's text as given."
                ),
            },
            "wamid": {**nullable(STRING), "description": "The provider's message id."},
            "created_at": DATE_TIME,
            **{
                name: nullable(DATE_TIME)
                for name in (
                    "queued_at",
                    "sent_at",
                    "delivered_at",
                    "read_at",
                    "failed_at",
                    "updated_at",
                )
            },
            "replied_at": {
                **nullable(DATE_TIME),
                "description": "The recipient's first reply to it (a reaction, a button too).",
            },
            "reply_text": {
                **nullable(STRING),
                "description": (
                    "Their latest reply's words, an emoji, or the kind of media in brackets"
                    " ([image]); up to 1024 characters; null once erased."
                ),
            },
            "clicked_at": {
                **nullable(DATE_TIME),
                "description": "The first time they tapped one of its buttons.",
            },
            "clicked_button": {
                **nullable(STRING),
                "description": "The text of the button they last tapped; null once erased.",
            },
        }
    )
    next_cursor = {
        **nullable(STRING),
        "description": "The next page's cursor (pass it as ?cursor=); null on the last page.",
    }
    numbered = {
        "page": {"type": "integer", "minimum": 1},
        "pages": {"type": "integer", "minimum": 0},
        "total": COUNT,
    }
    numbered_note = (
        "page, pages and total are there for page-numbered pages (neither cursor nor limit "
        "given), left out with a cursor or a limit."
    )

    def list_of(key: str, item: str, *fields: str, description: str = "") -> Schema:
        extra = {name: numbered[name] for name in fields}
        return obj(
            {key: {"type": "array", "items": ref(item)}, **extra, "next_cursor": next_cursor},
            # next_cursor: in every list answer once the contract's pagination is in.
            optional=fields,
            description=description,
        )

    exclusion_counts = obj(
        {
            "total": {**COUNT, "description": "Customers in the audience."},
            "invalid": {**COUNT, "description": "Not a phone number."},
            "duplicate": {**COUNT, "description": "A number another customer has too."},
            "suppressed": {**COUNT, "description": "On the opt-out list."},
            "undeliverable": {**COUNT, "description": "WhatsApp could not deliver lately."},
            "frequency_cap": {
                **nullable(COUNT),
                "description": "Messaged within the frequency cap; null: no cap.",
            },
            "in_other_campaign": {
                **nullable(COUNT),
                "description": "In another running campaign; null: not left out.",
            },
            "remaining": {**COUNT, "description": "Recipients left."},
            "estimated": {
                "type": "boolean",
                "description": "Scaled from a sample of the segment's first customers.",
            },
            "sampled": {**COUNT, "description": "Customers read from the ERP."},
        },
        description=(
            "Each recipient counted once, under the first exclusion that applies (opted"
            " out, undeliverable, frequency cap, other running campaign)."
        ),
    )
    exclusions = obj(
        {
            "exclusions": nullable(exclusion_counts),
            "erp_error": {
                **nullable(STRING),
                "description": "Why the ERP could not be read (then exclusions is null).",
            },
        }
    )
    return {
        "Error": error,
        "Finding": finding,
        "Preflight": preflight,
        "Exclusions": exclusions,
        "User": user,
        "Sender": sender,
        "Button": _button_schema(),
        "Location": _location_schema(),
        "Template": template,
        "Segment": _segment_schema(),
        "VariableMapping": _variables_schema(),
        "Campaign": campaign,
        "Progress": progress,
        "Suppression": suppression,
        "AuditEvent": audit_event,
        "Message": message,
        "TemplateImport": obj(
            {
                "imported": COUNT,
                "updated": COUNT,
                "unchanged": COUNT,
                "skipped": {
                    "type": "array",
                    "items": obj(
                        {
                            "name": STRING,
                            "language": STRING,
                            "code": {
                                "type": "string",
                                "enum": list(SKIP_REASONS),
                                "description": "Why, to compare.",
                            },
                            "reason": {
                                "type": "string",
                                "description": "Why, in the Accept-Language's language.",
                            },
                        }
                    ),
                    "description": (
                        "WhatsApp's templates not imported or not updated, each with why: "
                        "ones Disparo cannot send as WhatsApp has them (a media, location or "
                        "variable header, a button needing a value or of another kind, "
                        "another component, an unknown status or category, one WhatsApp "
                        "reports as deleted, texts the template form refuses), and drafts "
                        "being edited in Disparo. A template Disparo already has that is "
                        "skipped for its content still takes WhatsApp's status (and is then "
                        "counted in updated too)."
                    ),
                },
            },
            description=(
                "updated counts templates brought in step with WhatsApp (status, quality, "
                "category, texts) and those gone from WhatsApp Manager, now disabled with "
                "status_reason DELETED (their scheduled, sending and paused campaigns fail)."
            ),
        ),
        "SenderList": list_of("senders", "Sender", description="Every sender without a limit."),
        "TemplateList": list_of(
            "templates", "Template", description="Up to 500 templates without a limit."
        ),
        "CampaignList": list_of(
            "campaigns", "Campaign", "page", "pages", "total", description=numbered_note
        ),
        "SuppressionList": list_of(
            "suppressions", "Suppression", "page", "pages", "total", description=numbered_note
        ),
        "AuditPage": obj(
            {
                "events": {"type": "array", "items": ref("AuditEvent")},
                "next_before": {
                    **nullable(BIG_ID),
                    "description": "Pass as ?before= for the next page; null on the last.",
                },
                "next_cursor": next_cursor,
            },
            optional=(),
        ),
        "MessagePage": obj(
            {"messages": {"type": "array", "items": ref("Message")}, "next_cursor": next_cursor}
        ),
        "MediaFile": _media_file_schema(),
        "AudienceFile": _audience_file_schema(),
        **request_schemas(),
    }


def _media_kinds() -> list[str]:
    return list(media.KINDS)


def _media_file_schema() -> Schema:
    return obj(
        {
            "id": BIG_ID,
            "kind": {"type": "string", "enum": _media_kinds()},
            "filename": {"type": "string", "maxLength": 255},
            "content_type": {
                "type": "string",
                "enum": sorted({t for kind in media.KINDS.values() for t in kind.content_types}),
                "description": "Read from the file's own bytes, not from the upload's header.",
            },
            "size": {"type": "integer", "minimum": 1, "description": "Bytes."},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "created_at": DATE_TIME,
        },
        description=(
            "A file for a template's media header, kept by Disparo (in Postgres) and "
            "uploaded to WhatsApp's Media API once per sender when a campaign sends it. "
            "Never changed once stored; deleted a day after upload if no template names it."
        ),
    )


def _audience_file_schema() -> Schema:
    return obj(
        {
            "id": BIG_ID,
            "name": {"type": "string", "maxLength": 255, "description": "The upload's name."},
            "columns": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": 200},
                "description": "The header, in order: the fields variables map to.",
            },
            "row_count": COUNT,
            "size_bytes": {"type": "integer", "minimum": 1},
            "delimiter": {"type": "string", "enum": [",", ";", "\t"]},
            "encoding": {"type": "string", "enum": ["utf-8", "utf-16", "cp1252", "latin-1"]},
            "phone_column": {
                **nullable(STRING),
                "description": "The column named like a phone (telefone, celular…), if any.",
            },
            "preview": {
                "type": "array",
                "items": {"type": "array", "items": STRING},
                "maxItems": 5,
                "description": "The first rows' cells, in the columns' order.",
            },
            "created_at": DATE_TIME,
        },
        description=(
            "An uploaded CSV audience: its rows are a campaign's recipients (audience_file_id)."
            " Personal data: deleted a day after upload if no campaign uses it, with its"
            " campaigns' data by the retention, and a person's rows on their erasure."
        ),
    )


def _media_upload_body() -> Schema:
    limits = "; ".join(
        f"{name}: {', '.join(kind.content_types)}, at most {media.size_mb(kind.max_bytes):g} MB"
        for name, kind in media.KINDS.items()
    )
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "contentMediaType": "application/octet-stream"},
                        "kind": {"type": "string", "enum": _media_kinds()},
                    },
                    "required": ["file", "kind"],
                },
                "encoding": {"file": {"contentType": "*/*"}},
            }
        },
        "description": f"What WhatsApp takes (MB: 1,000,000 bytes): {limits}.",
    }


def request_schemas() -> dict[str, Schema]:
    """Request bodies, with the rules campaigns/validation.py applies (422 names the field)."""
    rate = {"type": "integer", "minimum": 1, "maximum": 1_000_000}
    sender_properties: dict[str, Schema] = {
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "provider": {"type": "string", "enum": values(Provider)},
        "phone_number_id": {
            **nullable({"type": "string", "pattern": "^[0-9]+$"}),
            "description": "Required for cloud_api.",
        },
        "display_phone_number": nullable(STRING),
        "waba_id": nullable({"type": "string", "pattern": "^[0-9]+$"}),
        "business_id": {
            **nullable({"type": "string", "pattern": "^[0-9]+$", "maxLength": 64}),
            "description": "The business portfolio (Meta's messaging limit is per portfolio).",
        },
        "rate_limit_per_minute": {**rate, "default": 20},
        "min_interval_ms": {"type": "integer", "minimum": 0, "maximum": 3_600_000, "default": 1000},
        "webhook_verify_token": nullable(STRING),
        "access_token": {
            **nullable({"type": "string", "writeOnly": True}),
            "description": "Write-only; blank or absent keeps the stored one.",
        },
        "app_secret": {
            **nullable({"type": "string", "writeOnly": True}),
            "description": "Write-only; blank or absent keeps the stored one.",
        },
    }
    template_properties: dict[str, Schema] = {
        "name": {"type": "string", "pattern": fixed(TEMPLATE_NAME)},
        "language": {"type": "string", "pattern": fixed(LANGUAGE), "examples": ["pt_BR"]},
        "category": {"type": "string", "enum": values(TemplateCategory)},
        "parameter_format": {
            "type": "string",
            "enum": values(ParameterFormat),
            "default": ParameterFormat.NAMED.value,
        },
        "header": nullable(
            {
                "type": "string",
                "maxLength": rendering.HEADER_MAX_CHARS,
                "description": "A TEXT header's text, with at most one variable.",
            }
        ),
        **_header_properties(),
        "body": {
            "type": "string",
            "minLength": 1,
            "maxLength": rendering.BODY_MAX_CHARS,
            "description": "Variables as {{name}} (named) or {{1}} (positional).",
        },
        "footer": nullable(
            {
                "type": "string",
                "maxLength": rendering.FOOTER_MAX_CHARS,
                "description": "No variables.",
            }
        ),
        "buttons": {"type": "array", "items": ref("Button"), "maxItems": MAX_BUTTONS},
        "sender_id": {
            **ID,
            "description": "Creation only: the sender's account (default: the first sender).",
        },
    }
    campaign_properties: dict[str, Schema] = {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "sender_id": ID,
        "template_id": {**ID, "description": "An approved template."},
        "segment": ref("Segment"),
        "variables": ref("VariableMapping"),
        "language_field": LANGUAGE_FIELD,
        "audience_file_id": AUDIENCE_FILE_ID,
        "audience_phone_column": {
            **AUDIENCE_PHONE_COLUMN,
            "description": "Required with audience_file_id: one of the file's columns.",
        },
        "recurrence": RECURRENCE,
        "send_window": SEND_WINDOW,
        "time_zone_field": TIME_ZONE_FIELD,
        "frequency_cap_days": FREQUENCY_CAP_DAYS,
        "exclude_running": EXCLUDE_RUNNING,
    }
    return {
        "UserChanges": {
            "type": "object",
            "description": "Keys not sent stay as they are.",
            "properties": {
                "role": {"type": "string", "enum": values(Role)},
                "campaign_rate_limit_per_minute": rate,
                "api_rate_limit_per_minute": rate,
            },
        },
        "SenderInput": {
            "type": "object",
            "properties": sender_properties,
            "required": ["name", "provider"],
        },
        "SenderChanges": {
            "type": "object",
            "description": "Fields not sent stay as they are.",
            "properties": sender_properties
            | {
                "messaging_limit": {
                    **nullable({"type": "integer", "minimum": 0}),
                    "description": (
                        "Overrides the messaging limit of the sender's business portfolio"
                        " (every sender with its business_id; this one alone without one)"
                        " until Meta reports a value different from its last report."
                        " null: unlimited. Audited as settings.change."
                    ),
                },
                "messaging_limit_overridden": {
                    "type": "boolean",
                    "description": (
                        "false: ends the override of the sender's portfolio, so Meta's last"
                        " report applies again (null until Meta is first read); audited as"
                        " settings.change for each sender that had it, nothing when none"
                        " had. true: keeps the override (422 when there is none and no"
                        " messaging_limit sets one). 422 when not a boolean, or false with"
                        " a messaging_limit other than the sender's."
                    ),
                },
            },
        },
        "TemplateInput": {
            "type": "object",
            "properties": template_properties,
            "required": ["name", "language", "category", "body"],
        },
        "TemplateChanges": {
            "type": "object",
            "description": "Fields not sent stay as they are; the template returns to draft.",
            "properties": {k: v for k, v in template_properties.items() if k != "sender_id"},
        },
        "CampaignInput": {
            "type": "object",
            "properties": campaign_properties,
            "required": ["name", "sender_id", "template_id"],
        },
        "CampaignChanges": {
            "type": "object",
            "description": (
                "Fields not sent stay as they are. A sending or paused campaign takes"
                " send_window alone (sent alone)."
            ),
            "properties": campaign_properties,
        },
        "Schedule": {
            "type": "object",
            "properties": {
                "scheduled_at": {
                    **DATE_TIME,
                    "description": (
                        "ISO 8601 with its offset, in the future. A repeating campaign starts"
                        " repeating at its next occurrence, not before this time; for one,"
                        " it may be left out (from now)."
                    ),
                    "examples": ["2030-01-31T09:00:00-03:00"],
                },
                "confirm": CONFIRM,
            },
        },
        "Confirm": {
            "type": "object",
            "properties": {"confirm": CONFIRM},
            "description": "Optional; no body, an empty one or one not JSON: confirm false.",
        },
        "SuppressionInput": {
            "type": "object",
            "properties": {
                "phone": {
                    "type": "string",
                    "description": "Any form a person types; kept as E.164.",
                },
                "reason": {"type": "string", "maxLength": 200, "default": ""},
            },
            "required": ["phone"],
        },
    }


# --- headers and responses -------------------------------------------------------------

RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def headers() -> dict[str, Schema]:
    return {
        "X-RateLimit-Limit": {
            "description": "The caller's API requests a minute.",
            "schema": {"type": "integer", "minimum": 1},
        },
        "X-RateLimit-Remaining": {
            "description": "What is left of it now.",
            "schema": {"type": "integer", "minimum": 0},
        },
        "X-RateLimit-Reset": {
            "description": "Seconds until the budget is whole again.",
            "schema": {"type": "integer", "minimum": 0},
        },
        "Retry-After": {
            "description": "Seconds to wait before the next request.",
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
        },
        "WWW-Authenticate": {
            "required": True,
            "schema": {"type": "string", "const": 'Bearer realm="disparo"'},
        },
        "Location": {
            "description": "The created resource's path, e.g. /api/v1/campaigns/7.",
            "schema": {"type": "string", "pattern": "^/api/v1/[a-z]+/[0-9]+$"},
        },
        "X-Request-ID": {
            "description": "This request's id, on every answer and in the logs of what it did "
            "(docs/logging.md): the caller's own X-Request-ID when well-formed (8-200 "
            "characters of A-Z a-z 0-9 _ . : + / = -), else one Disparo made.",
            "schema": {"type": "string", "minLength": 8, "maxLength": 200},
        },
        "Idempotent-Replayed": {
            "description": "Present (true) when this is the kept answer to an earlier request "
            "with the same Idempotency-Key: nothing was created again.",
            "schema": {"type": "string", "enum": ["true"]},
        },
    }


def header_refs(*names: str, required: bool = False) -> dict[str, Schema]:
    """Headers by reference; ``required`` repeats them inline as required."""
    shared = headers()
    return {
        name: (
            {**shared[name], "required": True}
            if required
            else {"$ref": f"#/components/headers/{name}"}
        )
        for name in names
    }


def error_response(description: str, **headers: Schema) -> Schema:
    return {
        "description": description,
        "headers": {
            **header_refs(*RATE_HEADERS),
            **header_refs("X-Request-ID"),
            **headers,
        },
        "content": {"application/json": {"schema": ref("Error")}},
    }


def responses() -> dict[str, Schema]:
    return {
        "BadRequest": error_response(
            "A malformed request (bad_request): a query parameter with text that cannot be "
            "stored (a NUL byte), JSON nested too deeply; invalid_idempotency_key."
        ),
        "Unauthenticated": {
            "description": "No valid token (unauthenticated), checked before anything is read.",
            "headers": header_refs("WWW-Authenticate") | header_refs("X-Request-ID"),
            "content": {"application/json": {"schema": ref("Error")}},
        },
        "Forbidden": error_response("The token's user lacks the role (forbidden)."),
        "NotFound": error_response("No such resource (not_found)."),
        "Conflict": error_response(
            "The resource's state refuses this (conflict, with the reason), or the request's "
            "Idempotency-Key is still being processed (idempotency_key_in_use)."
        ),
        "TooLarge": error_response("The body is over MAX_REQUEST_BYTES (too_large)."),
        "Invalid": error_response(
            "Some fields are not valid (validation_failed, one message per field in "
            "fields), or an Idempotency-Key reused with another body or path "
            "(idempotency_key_reused)."
        ),
        "RateLimited": error_response(
            "Over the caller's requests a minute (rate_limited).",
            **{"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
        ),
        "InternalError": error_response("An unexpected error, logged (internal_error)."),
    }


# Every authenticated operation can answer these (the token, the budget, the body's size
# and text are checked for every request before its view).
COMMON_ERRORS = {
    "400": "BadRequest",
    "401": "Unauthenticated",
    "413": "TooLarge",
    "422": "Invalid",
    "429": "RateLimited",
    "500": "InternalError",
}


def answer(
    status: str,
    description: str,
    schema: Schema | None,
    *,
    created: bool = False,
    idempotent: bool = False,
) -> dict[str, Schema]:
    out: Schema = {
        "description": description,
        # X-Request-ID is set outside Flask (campaigns/request_id.py, a WSGI layer), after
        # the suite's contract check has seen the answer: documented, not marked required.
        "headers": header_refs(*RATE_HEADERS, required=True) | header_refs("X-Request-ID"),
    }
    if created:
        out["headers"] |= header_refs("Location", required=True)
    if idempotent:
        out["headers"] |= header_refs("Idempotent-Replayed")
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    return {status: out}


def operation(
    summary: str,
    responses_: dict[str, Schema],
    *,
    errors: tuple[str, ...] = (),
    role: Role = Role.VIEWER,
    tag: str,
    parameters: list[Schema] | None = None,
    body: str | None = None,
    description: str = "",
) -> Schema:
    named = {"403": "Forbidden", "404": "NotFound", "409": "Conflict"}
    all_errors = COMMON_ERRORS | {code: named[code] for code in errors}
    if role is not Role.VIEWER:
        all_errors["403"] = "Forbidden"
    op: Schema = {
        "summary": summary,
        "description": (description + f"\n\nRole: {role.value} or above.").strip(),
        "tags": [tag],
        "responses": responses_
        | {
            code: {"$ref": f"#/components/responses/{name}"}
            for code, name in sorted(all_errors.items())
        },
    }
    if parameters:
        op["parameters"] = parameters
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(body)}},
        }
    return op


def path_id(name: str, big: bool = False) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": BIG_ID if big else ID}


def query(name: str, schema: Schema, description: str = "") -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def cursor_parameters(default: int = LIST_LIMIT_DEFAULT) -> list[Schema]:
    return [
        query(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": LIST_LIMIT_MAX, "default": default},
            "Rows a page (422 otherwise). With limit or cursor the answer pages by cursor.",
        ),
        query(
            "cursor",
            STRING,
            "An opaque next_cursor from an earlier answer of the same list (422 if malformed; "
            "422 with page).",
        ),
    ]


IDEMPOTENCY_KEY: Schema = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Makes a retry safe: the same key (kept 24 hours for this user) with the same method, "
        "path and body gets the first answer again, with Idempotent-Replayed: true, and creates "
        "nothing. 1 to 255 visible ASCII characters (else 400 invalid_idempotency_key); reused "
        "with another body or path, 422 idempotency_key_reused; while the first is still being "
        "processed, 409 idempotency_key_in_use. An answer with status 5xx is not kept."
    ),
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": IDEMPOTENCY_KEY_MAX,
        "pattern": "^[!-~]+$",
    },
}


def creating(
    summary: str,
    item: str,
    *,
    tag: str,
    role: Role,
    body: str | None,
    errors: tuple[str, ...] = (),
    more: dict[str, Schema] | None = None,
    description: str = "",
) -> Schema:
    """A POST that creates: 201 with Location, and Idempotency-Key (its 409 among the errors)."""
    return operation(
        summary,
        answer("201", "Created.", ref(item), created=True, idempotent=True) | (more or {}),
        role=role,
        tag=tag,
        body=body,
        parameters=[IDEMPOTENCY_KEY],
        errors=("409", *errors),
        description=description,
    )


def paths() -> dict[str, Schema]:
    campaign_id = path_id("campaign_id")
    template_id = path_id("template_id")
    sender_id = path_id("sender_id")
    suppression_id = path_id("suppression_id")
    sup = Role.SUPERVISOR
    admin = Role.ADMIN
    action_summaries = {
        "send-now": "Start sending now",
        "pause": "Pause a sending campaign",
        "resume": "Resume a paused campaign",
        "cancel": "Cancel a campaign",
    }
    out: dict[str, Schema] = {
        DOCUMENT_PATH: {
            "get": {
                "summary": "This document",
                "description": "Public: no token, not counted against a rate limit.",
                "tags": ["Meta"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "500": {"$ref": "#/components/responses/InternalError"},
                },
            }
        },
        "/api/v1/me": {
            "get": operation(
                "Who this token belongs to", answer("200", "The user.", ref("User")), tag="Users"
            )
        },
        "/api/v1/users/{user_id}": {
            "parameters": [path_id("user_id")],
            "patch": operation(
                "Change a user's role or rate limits",
                answer("200", "The user as changed.", ref("User")),
                role=admin,
                tag="Users",
                body="UserChanges",
                errors=("404", "409"),
                description="409: an admin removing their own admin role.",
            ),
        },
        "/api/v1/senders": {
            "get": operation(
                "Senders",
                answer("200", "Senders by name.", ref("SenderList")),
                tag="Senders",
                parameters=cursor_parameters(),
            ),
            "post": creating(
                "Create a sender", "Sender", tag="Senders", role=admin, body="SenderInput"
            ),
        },
        "/api/v1/senders/{sender_id}": {
            "parameters": [sender_id],
            "get": operation(
                "One sender",
                answer("200", "The sender.", ref("Sender")),
                tag="Senders",
                errors=("404",),
            ),
            "patch": operation(
                "Change a sender",
                answer("200", "The sender as changed.", ref("Sender")),
                role=admin,
                tag="Senders",
                body="SenderChanges",
                errors=("404",),
            ),
        },
        "/api/v1/senders/{sender_id}/templates/import": {
            "parameters": [sender_id],
            "post": operation(
                "Import the sender's templates from WhatsApp",
                answer("200", "What the import did.", ref("TemplateImport")),
                role=sup,
                tag="Templates",
                errors=("404", "409"),
                description=(
                    "Reads every template of the sender's WhatsApp Business Account "
                    "(GET /{waba-id}/message_templates) and creates those Disparo does not "
                    "have (found by WhatsApp's id, else name and language), updates those it "
                    "has. Running it again changes nothing. Under the sender's route: the "
                    "templates live in its WABA. 409 when the sender has no waba_id (or uses "
                    "the mock WhatsApp where it is off, or its WABA changed while the listing "
                    "was read); 422 with the provider's words when "
                    "WhatsApp cannot be reached or refuses."
                ),
            ),
        },
        "/api/v1/templates": {
            "get": operation(
                "Templates",
                answer("200", "Templates, last changed first.", ref("TemplateList")),
                tag="Templates",
                parameters=[
                    query(
                        "status",
                        {"type": "string", "enum": values(TemplateStatus)},
                        "An unknown value filters nothing.",
                    ),
                    query("language", STRING, "e.g. pt_BR"),
                    query(
                        "category",
                        {"type": "string", "enum": values(TemplateCategory)},
                        "An unknown value filters nothing.",
                    ),
                    query("q", STRING, "Part of the name."),
                    query(
                        "recurrence_of",
                        ID,
                        "A repeating campaign's id: only its runs. 422 when not an id.",
                    ),
                    *cursor_parameters(),
                ],
            ),
            "post": creating(
                "Create a draft template",
                "Template",
                tag="Templates",
                role=sup,
                body="TemplateInput",
                description="In the first sender's account unless sender_id says.",
            ),
        },
        "/api/v1/templates/{template_id}": {
            "parameters": [template_id],
            "get": operation(
                "One template",
                answer("200", "The template with its review status.", ref("Template")),
                tag="Templates",
                errors=("404",),
            ),
            "patch": operation(
                "Change a template",
                answer("200", "The template, back to draft.", ref("Template")),
                role=sup,
                tag="Templates",
                body="TemplateChanges",
                errors=("404",),
                description="422 when its status or a scheduled or sending campaign refuses it.",
            ),
        },
        "/api/v1/templates/{template_id}/submit": {
            "parameters": [template_id],
            "post": operation(
                "Send the template for review",
                answer("202", "Submitted; the outcome arrives later.", ref("Template")),
                role=sup,
                tag="Templates",
                errors=("404", "409"),
                description="409 unless it is a draft or rejected; 422 with the provider's words.",
            ),
        },
        "/api/v1/templates/{template_id}/sync": {
            "parameters": [template_id],
            "post": operation(
                "Ask the provider for the review status now",
                answer("200", "The template as the provider has it.", ref("Template")),
                role=sup,
                tag="Templates",
                errors=("404",),
            ),
        },
        "/api/v1/campaigns": {
            "get": operation(
                "Campaigns",
                answer("200", "Campaigns, newest first.", ref("CampaignList")),
                tag="Campaigns",
                parameters=[
                    query(
                        "status",
                        {"type": "string", "enum": values(CampaignStatus)},
                        "422 when unknown.",
                    ),
                    query("q", STRING, "Part of the name."),
                    query(
                        "recurrence_of",
                        ID,
                        "A repeating campaign's id: only its runs. 422 when not an id.",
                    ),
                    query(
                        "page",
                        {"type": "integer", "minimum": 1, "default": 1},
                        "Page-numbered pages of 20 (not with cursor).",
                    ),
                    *cursor_parameters(),
                ],
            ),
            "post": creating(
                "Create a draft campaign",
                "Campaign",
                tag="Campaigns",
                role=sup,
                body="CampaignInput",
                description="Every template variable must be mapped.",
            ),
        },
        "/api/v1/campaigns/{campaign_id}": {
            "parameters": [campaign_id],
            "get": operation(
                "One campaign",
                answer("200", "The campaign.", ref("Campaign")),
                tag="Campaigns",
                errors=("404",),
            ),
            "patch": operation(
                "Change a draft or scheduled campaign (a sending or paused one's window)",
                answer("200", "The campaign as changed.", ref("Campaign")),
                role=sup,
                tag="Campaigns",
                body="CampaignChanges",
                errors=("404", "409"),
            ),
        },
        "/api/v1/campaigns/{campaign_id}/schedule": {
            "parameters": [campaign_id],
            "post": operation(
                "Schedule a campaign",
                answer("202", "Scheduled.", ref("Campaign")),
                role=sup,
                tag="Campaigns",
                body="Schedule",
                errors=("404", "409"),
                description=(
                    "422 unless the time has its offset and is in the future (checked "
                    "first). Then the pre-flight check: 409 with a blocking problem's code, "
                    "or 409 confirmation_required unless confirm is true."
                ),
            ),
        },
        "/api/v1/campaigns/{campaign_id}/exclusions": {
            "parameters": [campaign_id],
            "get": operation(
                "The campaign's exclusions, counted",
                answer(
                    "200",
                    "How many recipients each exclusion leaves out, and how many remain.",
                    ref("Exclusions"),
                ),
                tag="Campaigns",
                errors=("404",),
                description=(
                    "Before the audience is loaded, as the fan-out would decide now: an ERP"
                    " segment is counted from a sample of its first pages and scaled to the"
                    " ERP's count (estimated), exact when the sample is the whole segment."
                    " Once loaded, the campaign's skipped recipients by reason (the frequency"
                    " cap's skips at sending among them), exact; remaining: the recipients"
                    " not skipped."
                ),
            ),
        },
        "/api/v1/campaigns/{campaign_id}/preflight": {
            "parameters": [campaign_id],
            "get": operation(
                "The pre-flight check",
                answer(
                    "200",
                    "Audience, 24-hour budget, cost, duration, warnings and blocking problems.",
                    ref("Preflight"),
                ),
                tag="Campaigns",
                errors=("404",),
            ),
        },
        **{
            f"/api/v1/campaigns/{{campaign_id}}/{action}": {
                "parameters": [campaign_id],
                "post": operation(
                    summary,
                    answer("202", "Accepted: the campaign's new state.", ref("Campaign")),
                    role=sup,
                    tag="Campaigns",
                    errors=("404", "409"),
                    description="409 with the reason when its status refuses it.",
                ),
            }
            for action, summary in action_summaries.items()
        },
        "/api/v1/campaigns/{campaign_id}/duplicate": {
            "parameters": [campaign_id],
            "post": creating(
                "A new draft like this campaign",
                "Campaign",
                tag="Campaigns",
                role=sup,
                body=None,
                errors=("404",),
            ),
        },
        "/api/v1/campaigns/{campaign_id}/progress": {
            "parameters": [campaign_id],
            "get": operation(
                "Counts, success rate, throughput and ETA, live",
                answer("200", "The campaign's progress now.", ref("Progress")),
                tag="Campaigns",
                errors=("404",),
            ),
        },
        "/api/v1/campaigns/{campaign_id}/messages": {
            "parameters": [campaign_id],
            "get": operation(
                "A campaign's messages",
                answer("200", "Messages by id, a page.", ref("MessagePage")),
                tag="Campaigns",
                errors=("404",),
                parameters=[
                    query(
                        "status",
                        {"type": "string", "enum": values(MessageStatus)},
                        "422 when unknown.",
                    ),
                    *cursor_parameters(MESSAGES_LIMIT_DEFAULT),
                ],
            ),
        },
        "/api/v1/suppressions": {
            "get": operation(
                "Opted-out numbers",
                answer("200", "Newest first.", ref("SuppressionList")),
                tag="Opt-outs",
                parameters=[
                    query("q", STRING, "Matches the phone's digits."),
                    query(
                        "page",
                        {"type": "integer", "minimum": 1, "default": 1},
                        "Page-numbered pages of 50 (not with cursor).",
                    ),
                    *cursor_parameters(),
                ],
            ),
            "post": creating(
                "Suppress a number",
                "Suppression",
                tag="Opt-outs",
                role=sup,
                body="SuppressionInput",
                more=answer(
                    "200", "Already there: the existing entry.", ref("Suppression"), idempotent=True
                ),
            ),
        },
        "/api/v1/suppressions/{suppression_id}": {
            "parameters": [suppression_id],
            "get": operation(
                "One opt-out",
                answer("200", "The opt-out.", ref("Suppression")),
                tag="Opt-outs",
                errors=("404",),
            ),
            "delete": operation(
                "Take a number off the list",
                answer("204", "Removed.", None),
                role=sup,
                tag="Opt-outs",
                errors=("404",),
            ),
        },
        "/api/v1/media": {
            "post": {
                **operation(
                    "Keep a file for a media header",
                    answer("201", "Kept.", ref("MediaFile"), created=True),
                    role=sup,
                    tag="Media",
                    description=(
                        "Multipart form data: file and kind. The file's type is read from "
                        "its bytes (a document's extension tells the Office formats and plain "
                        "text apart): a file that is not one of its kind's types, empty, or "
                        "over its kind's maximum is 422 at file. A body over the largest "
                        f"kind's maximum plus {media.FORM_OVERHEAD_BYTES:,} bytes "
                        f"({media.REQUEST_LIMIT_BYTES:,} bytes) is 413 too_large, unread "
                        "(this endpoint's own limit, not MAX_REQUEST_BYTES)."
                    ),
                ),
                "requestBody": _media_upload_body(),
            },
        },
        "/api/v1/audiences": {
            "post": {
                **operation(
                    "Upload a CSV audience",
                    answer("201", "Kept.", ref("AudienceFile"), created=True),
                    role=sup,
                    tag="Audiences",
                    description=(
                        "Multipart form data: file, a CSV with a header row (UTF-8 with or"
                        " without BOM, else Windows-1252; comma, semicolon or tab). No file,"
                        " an empty one, an empty or repeated column name, no rows, a row with"
                        " more cells than the header: 422 at file. A body over"
                        " AUDIENCE_UPLOAD_MAX_MB (100 MB by default) plus 1 MiB is 413"
                        " too_large, unread."
                    ),
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "file": {
                                        "type": "string",
                                        "contentMediaType": "text/csv",
                                    }
                                },
                                "required": ["file"],
                            },
                        }
                    },
                },
            },
        },
        "/api/v1/audiences/{audience_file_id}": {
            "parameters": [path_id("audience_file_id", big=True)],
            "get": operation(
                "One CSV audience",
                answer("200", "The file's facts and first rows.", ref("AudienceFile")),
                tag="Audiences",
                errors=("404",),
            ),
        },
        "/api/v1/media/{media_file_id}": {
            "parameters": [path_id("media_file_id", big=True)],
            "get": operation(
                "One media file",
                answer(
                    "200",
                    "The file's facts (its bytes: GET /media/{id}, signed in).",
                    ref("MediaFile"),
                ),
                tag="Media",
                errors=("404",),
            ),
        },
        "/api/v1/audit": {
            "get": operation(
                "Administrative actions",
                answer("200", "Newest first, 50 a page.", ref("AuditPage")),
                role=admin,
                tag="Audit",
                parameters=[
                    query(
                        "action",
                        {"type": "string", "enum": list(audit.ACTIONS)},
                        "422 when unknown.",
                    ),
                    query("actor", STRING, "Part of the actor's email (or cli, system)."),
                    query("before", {"type": "integer"}, "The previous answer's next_before."),
                    *cursor_parameters(),
                ],
            ),
        },
    }
    send_now = out["/api/v1/campaigns/{campaign_id}/send-now"]["post"]
    send_now["requestBody"] = {
        "required": False,
        "content": {"application/json": {"schema": ref("Confirm")}},
    }
    send_now["description"] = (
        "409 with the reason when its status refuses it. Then the pre-flight check: 409 with "
        "a blocking problem's code, or 409 confirmation_required unless confirm is true."
        "\n\nRole: supervisor or above."
    )
    return out


DESCRIPTION = """\
Disparo's JSON API. Every call but this document carries `Authorization: Bearer <token>`
(create one on the "API tokens" page or with `flask users create … --api-token`), and
counts against the token user's requests a minute: every answer to an authenticated call
carries `X-RateLimit-Limit`, `-Remaining` and `-Reset`; over it, 429 with `Retry-After`.

Errors are JSON: `{"error": {"code", "message", "fields"}}`, `fields` naming each refused
field. An unknown path under `/api/v1` answers 404 `not_found`, a method a path does not
take 405 `method_not_allowed`, both with this envelope. Messages follow Accept-Language;
`code` is what to compare. Text PostgreSQL cannot store (a NUL byte, a lone surrogate such
as "\\ud800") is refused at its field once the token is checked.

Lists page by cursor: pass `limit` (1-500) or a `cursor` (a previous answer's
`next_cursor`); without either they answer as they always did (senders and templates:
every row; campaigns and suppressions: `page`-numbered pages; audit: `before`).
"""


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once; do not change what it returns)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Disparo API",
            "version": "v1",
            "description": DESCRIPTION,
            "license": {"name": "AGPL-3.0-or-later", "identifier": "AGPL-3.0-or-later"},
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": [
            {"name": name}
            for name in (
                "Users",
                "Senders",
                "Templates",
                "Media",
                "Audiences",
                "Campaigns",
                "Opt-outs",
                "Audit",
                "Meta",
            )
        ],
        "paths": paths(),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token of an active user.",
                }
            },
            "schemas": schemas(),
            "headers": headers(),
            "responses": responses(),
        },
    }
