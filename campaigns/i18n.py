"""Translatable strings. English only for now; Brazilian Portuguese comes later.

Python code marks UI text with ``_()`` and templates with ``{% trans %}`` / ``_()``
(Jinja's i18n extension), so Babel can extract every string when the catalogues
arrive; until then the null translations return the English text.
"""

from __future__ import annotations

import gettext

from flask import Flask

_ = gettext.gettext
ngettext = gettext.ngettext


def N_(text: str) -> str:
    """Mark text for translation without translating it now (Babel's default ``N_``):
    for module-level strings, translated with ``_()`` where they are shown."""
    return text


def init_app(app: Flask) -> None:
    app.jinja_env.add_extension("jinja2.ext.i18n")
    app.jinja_env.install_null_translations(newstyle=True)  # type: ignore[attr-defined]
