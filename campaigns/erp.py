"""The ERP client: customer segments counted and paged over HTTP.

The fan-out job pages a campaign's segment through a :class:`PageReader`, one page
ahead (storing the cursor after each page, so a crash resumes where it stopped), the
campaign form asks :meth:`ErpClient.count` for a live audience size and
:meth:`ErpClient.tags` for the tags a segment may name (``GET /tags``). Every failure
— unreachable, timed out, 5xx, a body that is not the expected JSON, or a 4xx with
the ERP's per-field messages — is one :class:`ErpError`, so callers handle one
exception and decide from ``status`` whether retrying can help.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from campaigns import reasons
from campaigns.config import ConfigError
from campaigns.redact import redact_urls

logger = logging.getLogger(__name__)

SEGMENT_KEYS = frozenset(
    {
        "city",
        "state",
        "tags",
        "min_total_spent",
        "last_purchase_within_days",
        "opted_in_only",
        "max_audience",
    }
)
# (connect, read) seconds: connect just above a TCP retransmit (3 s); a read can
# take a while on a big ERP, but a hung one must not hold a worker forever.
DEFAULT_TIMEOUT = (3.05, 30.0)
DEFAULT_PAGE_SIZE = 500


class ErpError(Exception):
    """The ERP could not answer, or refused: ``status`` None means never reached.

    ``reason`` says what went wrong as a code and parameters (campaigns/reasons.py),
    worded in the reader's language wherever it is shown (``message``) and stored as
    it is in a campaign's failure; the ERP's own words (a refusal's message, a field's
    error) are kept as the ERP gave them. Credentials in any URL it names
    (``ERP_BASE_URL``'s user and password, a token in a query, as ``requests``
    repeats them) are masked when it is made.
    """

    def __init__(
        self,
        reason: reasons.Reason | str,
        status: int | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(reason, str):  # the ERP's own words
            reason = reasons.verbatim(reason)
        params = {
            name: redact_urls(value) if isinstance(value, str) else value
            for name, value in reason.params.items()
        }
        self.reason = reasons.Reason(reason.code, params)
        super().__init__(reason.code)
        self.status = status
        self.fields = {name: redact_urls(text) for name, text in (fields or {}).items()}

    @property
    def message(self) -> str:
        """What went wrong, in the reader's language."""
        return reasons.render(self.reason.code, self.reason.params)

    def __str__(self) -> str:  # the log's words, English like every log line
        return reasons.render_english(self.reason.code, self.reason.params) or self.reason.code

    @property
    def is_caller_error(self) -> bool:
        """A 4xx: the request itself is wrong (e.g. a bad segment); retrying won't help."""
        return self.status is not None and 400 <= self.status < 500 and self.status != 429

    def __repr__(self) -> str:
        return f"ErpError({self.reason!r}, status={self.status!r}, fields={self.fields!r})"


@dataclass(frozen=True)
class ErpPage:
    """One page of customers, and the cursor of the next page (None after the last)."""

    customers: list[dict[str, Any]]
    next_cursor: str | None


def _query_value(key: str, value: object) -> str | None:
    """One segment value in the ERP's query form, or None when it means "no filter"."""
    if value is None:
        return None
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float | Decimal):
        number = Decimal(repr(value)) if isinstance(value, float) else value
        if not number.is_finite():
            raise ValueError(f"segment {key} must be a finite number, not {value!r}")
        # Plain notation: str(Decimal("1E+2")) and repr(1e20) use exponents.
        return format(number, "f")
    if isinstance(value, list | tuple | set | frozenset):
        items = [str(item).strip() for item in value if item is not None]
        if isinstance(value, set | frozenset):
            items.sort()  # the same segment, the same URL
        return ",".join(item for item in items if item) or None
    raise ValueError(f"segment {key} cannot be {type(value).__name__}")


def segment_query(segment: Mapping[str, object] | None) -> dict[str, str]:
    """The ERP query parameters of a segment: lists comma-joined, booleans true/false.

    None, blank strings and empty lists mean "no filter" and are left out. An
    unknown key raises ValueError: silently dropping a filter would widen the
    audience, and send to customers the operator did not choose.
    """
    if not segment:
        return {}
    unknown = sorted(set(segment) - SEGMENT_KEYS)
    if unknown:
        raise ValueError(f"unknown segment keys: {', '.join(unknown)}")
    query: dict[str, str] = {}
    for key in sorted(segment):
        value = _query_value(key, segment[key])
        if value is not None:
            query[key] = value
    return query


def _error_details(response: requests.Response) -> tuple[str | None, dict[str, str]]:
    """The ERP's ``{"error": {"message", "fields"}}``, if the body has one."""
    try:
        body = response.json()
    except ValueError:
        return None, {}
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, {}
    message = error.get("message") if isinstance(error.get("message"), str) else None
    raw_fields = error.get("fields")
    fields = (
        {str(name): str(text) for name, text in raw_fields.items()}
        if isinstance(raw_fields, dict)
        else {}
    )
    return message, fields


class ErpClient:
    """A pooled HTTP client for one ERP base URL; reuse it for a job, then close it."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        pool_size: int = 4,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        # No transport retries: the fan-out job retries as a whole, from its cursor.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"Accept": "application/json"})

    def __enter__(self) -> ErpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the pooled connections."""
        self.session.close()

    def _get(self, path: str, params: Mapping[str, str]) -> Any:
        url = f"{self.base_url}{path}"
        # Not chained to requests' exception (`from None`): a job's logged traceback
        # would repeat its unmasked URL; the message keeps its text, masked.
        try:
            response = self.session.get(url, params=params, timeout=self.timeout)
        except requests.Timeout:
            raise ErpError(reasons.Reason(reasons.ERP_TIMEOUT, {"url": url})) from None
        except requests.RequestException as exc:
            raise ErpError(
                reasons.Reason(reasons.ERP_UNREACHABLE, {"url": url, "error": str(exc)})
            ) from None
        status = response.status_code
        if not 200 <= status < 300:
            message, fields = _error_details(response)
            level = logging.INFO if 400 <= status < 500 else logging.WARNING
            logger.log(level, "ERP %s answered %s: %s", path, status, message or response.reason)
            if 400 <= status < 500:
                refused = reasons.Reason(reasons.ERP_REFUSED, {"status": status})
                raise ErpError(message or refused, status=status, fields=fields)
            failed = (
                reasons.Reason(reasons.ERP_FAILED_SAID, {"status": status, "message": message})
                if message
                else reasons.Reason(reasons.ERP_FAILED_STATUS, {"status": status})
            )
            raise ErpError(failed, status=status)
        try:
            return response.json()
        except ValueError as exc:  # requests' JSONDecodeError is a ValueError
            raise ErpError(reasons.Reason(reasons.ERP_NOT_JSON), status) from exc

    def count(self, segment: Mapping[str, object] | None) -> int:
        """How many customers the segment selects."""
        body = self._get("/customers/count", segment_query(segment))
        value = body.get("count") if isinstance(body, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ErpError(reasons.Reason(reasons.ERP_NO_COUNT), 200)
        return value

    def tags(self) -> list[str]:
        """The tags the ERP knows (``{"tags": ["vip", ...]}``), as it orders them."""
        body = self._get("/tags", {})
        tags = body.get("tags") if isinstance(body, dict) else None
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ErpError(reasons.Reason(reasons.ERP_NO_TAGS), 200)
        return list(dict.fromkeys(t.strip() for t in tags if t.strip()))

    def page(
        self,
        segment: Mapping[str, object] | None,
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> ErpPage:
        """One page of the segment's customers, starting after ``cursor`` (None: the first)."""
        if limit < 1:
            raise ValueError(f"limit must be 1 or more, not {limit}")
        params = segment_query(segment) | {"limit": str(limit)}
        if cursor is not None:
            params["cursor"] = cursor
        body = self._get("/customers", params)
        customers = body.get("customers") if isinstance(body, dict) else None
        next_cursor = body.get("next_cursor") if isinstance(body, dict) else None
        if not isinstance(customers, list) or not all(isinstance(c, dict) for c in customers):
            raise ErpError(reasons.Reason(reasons.ERP_NO_CUSTOMERS), 200)
        if next_cursor is not None and not isinstance(next_cursor, str):
            raise ErpError(reasons.Reason(reasons.ERP_BAD_CURSOR), 200)
        # A cursor that does not move would page (and send) forever.
        if cursor is not None and next_cursor == cursor:
            raise ErpError(reasons.Reason(reasons.ERP_SAME_CURSOR), 200)
        return ErpPage(customers=customers, next_cursor=next_cursor)

    def iter_customers(
        self,
        segment: Mapping[str, object] | None,
        cursor: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[tuple[ErpPage, str | None]]:
        """Every page from ``cursor`` on, each with the cursor to resume after it.

        Store the second item once a page is processed; resuming with it continues
        with the next page. It is None after the last page.
        """
        while True:
            page = self.page(segment, cursor, page_size)
            yield page, page.next_cursor
            if page.next_cursor is None:
                return
            cursor = page.next_cursor


class PageReader:
    """One segment's pages, the next one fetched in a thread while the caller stores the last.

    The ERP's answer time then overlaps the caller's database work instead of adding
    to it (bench/README.md, fan-out). Ask for the page after the cursor you stored: a
    page fetched ahead for another segment or cursor is dropped, never used.
    """

    def __init__(self, client: ErpClient, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        self.client = client
        self.page_size = page_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="erp-ahead")
        self._ahead: tuple[str, str | None, Future[ErpPage]] | None = None

    def __enter__(self) -> PageReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop a page fetched ahead, wait for its request, release the connections."""
        if self._ahead is not None:
            self._ahead[2].cancel()
            self._ahead = None
        self._executor.shutdown(wait=True)
        self.client.close()

    def _fetch(self, segment: Mapping[str, object] | None, cursor: str | None) -> Future[ErpPage]:
        return self._executor.submit(self.client.page, segment, cursor, self.page_size)

    def page(self, segment: Mapping[str, object] | None, cursor: str | None) -> ErpPage:
        """The page after ``cursor``; starts fetching the one after it."""
        key = json.dumps(segment, sort_keys=True, default=str)
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[:2] == (key, cursor):
            future = ahead[2]
        else:
            if ahead is not None:
                ahead[2].cancel()
            future = self._fetch(segment, cursor)
        page = future.result()  # an ErpError of the request is raised here, in the caller
        if page.next_cursor is not None:
            self._ahead = (key, page.next_cursor, self._fetch(segment, page.next_cursor))
        return page


def client_from_config(
    config: Mapping[str, Any], timeout: tuple[float, float] = DEFAULT_TIMEOUT
) -> ErpClient:
    """An :class:`ErpClient` for ``ERP_BASE_URL`` (the mock ERP when mocks are on)."""
    base_url = config.get("ERP_BASE_URL")
    if not base_url:
        raise ConfigError("ERP_BASE_URL is not set: no ERP to read customers from.")
    return ErpClient(str(base_url), timeout=timeout)
