"""A self-contained HTML report of a lab test run: no scripts, no external files.

Per machine: its outcome, a Gantt chart of its boot phases, the console tail and what dnsmasq
and the HTTP server saw of its MAC; on top, all machines on one time axis. Rendered with
Jinja2 with autoescaping on (this is HTML: console text is data); the charts are SVG built by
``pvmlab.report.gantt``, which escapes its own text.
"""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from pvmlab.report import gantt
from pvmlab.report.results import RunResult


def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("pvmlab.report", "templates"),
        autoescape=select_autoescape(["html", "j2"], default=True),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def report_html(run: RunResult) -> str:
    charts = {
        m.name: Markup(gantt.timeline_svg(m.timeline))  # noqa: S704 - built and escaped by gantt
        for m in run.machines
        if m.timeline is not None
    }
    overview = Markup(  # noqa: S704 - built and escaped by gantt
        gantt.overview_svg([(m.name, m.timeline) for m in run.machines])
    )
    template = _environment().get_template("report.html.j2")
    return template.render(run=run, charts=charts, overview=overview)
