"""gunicorn's settings beyond the Procfile's flags; gunicorn reads ./gunicorn.conf.py itself.

The access log names the path without its query string, and no Referer: a recipient
search carries phone numbers and names in its query (``?q=+5511…``), and a page's
Referer repeats the query of the page before it. gunicorn's default puts both in
every line (``%(r)s``, the request line, and ``%(f)s``).

With ``LOG_FORMAT=json`` gunicorn's error and access logs go through the app's JSON
handler (campaigns/logs.py): the access line's fields are the same ones, plus the
response's ``X-Request-ID`` (campaigns/request_id.py).
"""

from campaigns import logs

# remote address, user, time, "METHOD /path PROTOCOL", status, bytes, duration (ms), agent
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms "%(a)s"'

if logs.json_enabled():
    logconfig_dict = logs.gunicorn_logconfig()
