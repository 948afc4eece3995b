"""The cat clinic's web app, reduced to the pages of the story.

``/``
    The clinics, each linking to its Success Stories page.
``/clinics/<name>/success-stories?version=naive|protected|eager``
    Every cat seen at the clinic, with its owner, its vet and its latest
    visit, and the number of SQL queries the page took.  ``naive`` is the
    page as it shipped; ``protected`` is the same code with
    ``nplus1loader("*")`` on the clinic's query; ``eager`` is a hand-written
    join.

Run it with ``python -m examples.cat_clinic serve`` (see ``cli.py``).
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, abort, render_template_string, request
from markupsafe import Markup
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.orm import Session

from .counting import StatementCounter
from .generate import default_url
from .models import Appointment, Clinic, Veterinarian
from .queries import VERSIONS, ClinicNotFound, success_stories

__all__ = ["create_app"]

DEFAULT_VERSION = "protected"

VERSION_NOTES = {
    "naive": (
        "The page as it shipped: a loop over lazy relationships. One query for the "
        "clinic, one for its vets, then one per vet, one per cat and one per owner."
    ),
    "protected": (
        'The same loop; the clinic is loaded with <code>.options(nplus1loader("*"))</code>. '
        "Each level of the walk is loaded for all its objects at once."
    ),
    "eager": (
        "A hand-written query that joins its way from the clinic to the cats and their owners."
    ),
}

COLOR_SWATCHES = {
    "black": "#222",
    "white": "#f4f4f4",
    "ginger": "#e08a3c",
    "grey": "#9aa0a6",
    "tabby": "linear-gradient(90deg,#8a6a4a 0 25%,#c9a47a 25% 50%,#8a6a4a 50% 75%,#c9a47a 75%)",
    "tortoiseshell": "linear-gradient(135deg,#2b1d14 0 40%,#c46a2b 40% 70%,#2b1d14 70%)",
    "calico": "linear-gradient(135deg,#fff 0 35%,#e08a3c 35% 65%,#222 65%)",
    "siamese": "linear-gradient(90deg,#f1e3cc 0 60%,#5a4233 60%)",
}

LAYOUT = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} · Cat Clinic</title>
<style>
  :root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --brand:#6b4fbb;
          --good:#1e7f4f; --good-bg:#e3f6ec; --bad:#b42318; --bad-bg:#fde8e6; }
  * { box-sizing: border-box; }
  body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
         color:var(--ink); background:#f7f7fb; }
  header { background:var(--brand); color:#fff; padding:14px 32px; display:flex;
           align-items:baseline; gap:16px; }
  header a { color:#fff; text-decoration:none; font-weight:700; font-size:20px; }
  header span { opacity:.8; font-size:14px; }
  main { max-width:1040px; margin:0 auto; padding:24px 32px 48px; }
  h1 { margin:0 0 4px; font-size:28px; }
  .sub { margin:0 0 20px; color:var(--muted); }
  .toolbar { display:flex; flex-wrap:wrap; gap:16px; align-items:center;
             justify-content:space-between; margin-bottom:8px; }
  .switch { display:inline-flex; border:1px solid var(--line); border-radius:8px;
            overflow:hidden; background:#fff; }
  .switch span { padding:7px 12px; color:var(--muted); border-right:1px solid var(--line); }
  .switch a { padding:7px 16px; text-decoration:none; color:var(--ink);
              border-right:1px solid var(--line); }
  .switch a:last-child { border-right:0; }
  .switch a.active { background:var(--brand); color:#fff; font-weight:600; }
  .queries { padding:8px 14px; border-radius:8px; font-weight:600; }
  .queries.good { background:var(--good-bg); color:var(--good); }
  .queries.bad { background:var(--bad-bg); color:var(--bad); }
  .queries small { font-weight:400; opacity:.8; }
  .note { color:var(--muted); margin:8px 0 20px; font-size:14px; }
  code { font-size:13px; background:#eef0f4; padding:1px 5px; border-radius:4px; }
  table { width:100%; border-collapse:collapse; background:#fff; border:1px solid var(--line);
          border-radius:8px; overflow:hidden; }
  th, td { text-align:left; padding:9px 14px; border-bottom:1px solid var(--line); }
  th { background:#fafafc; font-size:13px; color:var(--muted); font-weight:600;
       text-transform:uppercase; letter-spacing:.04em; }
  tr:last-child td { border-bottom:0; }
  td.num { text-align:right; font-variant-numeric:tabular-nums; }
  .cat { font-weight:600; }
  .detail { color:var(--muted); font-size:13px; }
  .swatch { display:inline-block; width:12px; height:12px; border-radius:50%;
            border:1px solid #0003; margin-right:8px; vertical-align:-1px; }
  ul.clinics { list-style:none; padding:0; display:grid; gap:10px;
               grid-template-columns:repeat(auto-fill,minmax(300px,1fr)); }
  ul.clinics li { background:#fff; border:1px solid var(--line); border-radius:8px;
                  padding:12px 16px; }
  ul.clinics a { font-weight:600; color:var(--brand); text-decoration:none; }
  .empty { padding:24px; text-align:center; color:var(--muted); }
</style>
</head>
<body>
<header><a href="{{ url_for('index') }}">Cat Clinic</a>
<span>Find a vet, book a visit, read the happy endings</span></header>
<main>
{{ content }}
</main>
</body>
</html>
"""

INDEX = """
<h1>Our clinics</h1>
<p class="sub">{{ clinics|length }} clinics. Each has a Success Stories page.</p>
<ul class="clinics">
{% for clinic in clinics %}
  <li><a href="{{ url_for('success_stories_page', name=clinic.name) }}">{{ clinic.name }}</a>
  <div class="detail">{{ clinic.city }} · {{ clinic.vets }} veterinarians ·
  {{ "{:,}".format(clinic.appointments) }} appointments</div></li>
{% endfor %}
</ul>
"""

STORIES = """
<h1>Success Stories</h1>
<p class="sub">{{ clinic_name }}: {{ "{:,}".format(rows|length) }} cats seen by our vets,
most recent visit first.</p>
<div class="toolbar">
  <nav class="switch"><span>Version</span>
  {% for v in versions %}
    <a href="{{ url_for('success_stories_page', name=clinic_name, version=v) }}"
       {% if v == version %}class="active"{% endif %}>{{ v }}</a>
  {% endfor %}
  </nav>
  <div class="queries {{ 'bad' if version == 'naive' else 'good' }}" id="query-count">
    This page took {{ "{:,}".format(queries) }} SQL
    {{ "query" if queries == 1 else "queries" }}
    <small>· {{ "%.1f"|format(milliseconds) }} ms</small></div>
</div>
<p class="note">{{ note }}</p>
<table>
<thead><tr><th>Cat</th><th>Owner</th><th>Veterinarian</th><th>Latest visit</th>
<th class="num">Visits</th></tr></thead>
<tbody>
{% for row in rows %}
<tr><td><span class="swatch" style="background:{{ row.swatch }}"></span>
<span class="cat">{{ row.cat }}</span>
<span class="detail">{{ row.color }}, {{ row.age }} yr, {{ row.lives }}/9 lives</span></td>
<td>{{ row.owner }}</td><td>{{ row.vet }}</td>
<td>{{ row.start.strftime("%b %d, %Y") }} <span class="detail">{{ row.start.strftime("%H:%M") }},
{{ row.minutes }} min</span></td>
<td class="num">{{ row.visits }}</td></tr>
{% else %}
<tr><td colspan="5" class="empty">No cat has been seen here yet.</td></tr>
{% endfor %}
</tbody>
</table>
"""


def _page(title: str, template: str, **context: Any) -> str:
    content = render_template_string(template, **context)
    return render_template_string(LAYOUT, title=title, content=Markup(content))


def create_app(url: str | Engine | None = None) -> Flask:
    """The Flask app over the database at ``url`` (default: the SQLite test
    database), or over an existing :class:`~sqlalchemy.Engine`."""
    app = Flask(__name__)
    engine = url if isinstance(url, Engine) else create_engine(url or default_url("test"))
    counter = StatementCounter(engine)
    app.extensions["cat_clinic"] = {"engine": engine, "counter": counter}

    @app.get("/")
    def index() -> str:
        vets = select(func.count()).where(Veterinarian.clinic_id == Clinic.id).scalar_subquery()
        appointments = (
            select(Appointment.clinic_id, func.count().label("n"))
            .group_by(Appointment.clinic_id)
            .subquery()
        )
        statement = (
            select(Clinic.name, Clinic.city, vets.label("vets"), appointments.c.n)
            .outerjoin(appointments, appointments.c.clinic_id == Clinic.id)
            .order_by(Clinic.name)
        )
        with Session(engine) as session:
            clinics = [
                {"name": name, "city": city, "vets": n_vets, "appointments": n or 0}
                for name, city, n_vets, n in session.execute(statement)
            ]
        return _page("Clinics", INDEX, clinics=clinics)

    @app.get("/clinics/<path:name>/success-stories")
    def success_stories_page(name: str) -> str:
        version = request.args.get("version", DEFAULT_VERSION)
        if version not in VERSIONS:
            abort(400, f"version must be one of {', '.join(VERSIONS)}")
        with Session(engine) as session, counter.record() as statements:
            started = time.perf_counter()
            try:
                stories = success_stories(session, name, version)
            except ClinicNotFound:
                abort(404, f"No clinic named {name!r}")
            # Everything the page shows, read here so the count includes it:
            # the owner is one more lazy relationship per cat.
            rows = [
                {
                    "cat": story.cat.name,
                    "color": story.cat.color.value,
                    "swatch": COLOR_SWATCHES[story.cat.color.value],
                    "age": story.cat.age,
                    "lives": story.cat.lives,
                    "owner": story.cat.owner.name,
                    "vet": story.veterinarian.name,
                    "start": story.appointment.start,
                    "minutes": story.appointment.duration_minutes,
                    "visits": story.visits,
                }
                for story in stories
            ]
            milliseconds = (time.perf_counter() - started) * 1000
        return _page(
            f"Success Stories: {name}",
            STORIES,
            clinic_name=name,
            rows=rows,
            version=version,
            versions=VERSIONS,
            queries=len(statements),
            milliseconds=milliseconds,
            note=Markup(VERSION_NOTES[version]),
        )

    return app
