"""gunicorn's settings beyond the Procfile's flags; gunicorn reads ./gunicorn.conf.py itself.

Threads per process come from ``WEB_THREADS`` (default 8), checked against the
SQLAlchemy pool: a thread can hold two connections at once (an API request's session
and the rate limiter's), so a pool that allows fewer than threads + 1 could leave
every thread waiting on another's connection; the web then refuses to start.

The access log names the path without its query string, and no Referer: a recipient
search carries phone numbers and names in its query (``?q=+5511…``), and a page's
Referer repeats the query of the page before it. gunicorn's default puts both in
every line (``%(r)s``, the request line, and ``%(f)s``).

With ``LOG_FORMAT=json`` gunicorn's error and access logs go through the app's JSON
handler (campaigns/logs.py): the access line's fields are the same ones, plus the
response's ``X-Request-ID`` (campaigns/request_id.py).
"""

from campaigns import logs
from campaigns.config import ConfigError, db_pool, load_env_file, web_threads

# remote address, user, time, "METHOD /path PROTOCOL", status, bytes, duration (ms), agent
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms "%(a)s"'

if logs.json_enabled():
    logconfig_dict = logs.gunicorn_logconfig()

load_env_file()
threads = web_threads()
_size, _overflow = db_pool()
_allowed = (5 if _size is None else _size) + (10 if _overflow is None else _overflow)
if _allowed < threads + 1:
    raise ConfigError(
        f"DB_POOL_SIZE + DB_MAX_OVERFLOW ({_allowed}) must be at least WEB_THREADS + 1"
        f" ({threads + 1}): each web thread can hold two connections at once"
    )
