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
import jinja2.exceptions
import jinja2.runtime
import jinja2.sandbox

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


# Products a template may compute: enough for any configuration file, too little to eat memory.
_MAX_PRODUCT = 1_000_000


class BoundedSandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, plus a bound on ``*`` and ``**`` (a string times a huge
    number, or a huge power, would exhaust memory or time; ``range`` is bounded already)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise jinja2.exceptions.SecurityError("exponent larger than 64")
        if operator == "*":
            sized = [v for v in (left, right) if isinstance(v, str | list | tuple)]
            count = [v for v in (left, right) if isinstance(v, int)]
            if sized and count and len(sized[0]) * max(count[0], 0) > _MAX_PRODUCT:
                raise jinja2.exceptions.SecurityError("repeated text longer than 1000000")
        return super().call_binop(context, operator, left, right)


def sandbox(**options: Any) -> BoundedSandbox:
    """An environment for templates a user wrote (install configurations): Jinja2's sandbox
    (no access to Python internals, no mutating calls, bounded products) and no loader, so a
    template reaches no file; otherwise the settings above."""
    return BoundedSandbox(
        autoescape=False,  # installer files (YAML, preseed, kickstart), not HTML
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        **options,
    )
