"""Jinja2 for the stack's text files (``templates/``): dnsmasq's configuration, iPXE scripts.

These are not HTML, so nothing is auto-escaped; instead every value is validated before it
reaches a template (and the iPXE renderer refuses control characters). A name a template uses
but is not given is an error (``StrictUndefined``), and files keep their trailing newline.
Each user builds its environment once, at import, with the options its files need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).parent / "templates"


def environment(**options: Any) -> jinja2.Environment:
    """An environment over ``templates/`` with the settings above plus ``options``."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=False,  # noqa: S701 - dnsmasq configuration and iPXE scripts, not HTML
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        **options,
    )
