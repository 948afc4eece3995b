"""The example's command line: ``python -m examples.cat_clinic [COMMAND]``.

Commands:

``demo`` (the default)
    Build the test database if it is missing, then run ``list_cats_seen_at``
    the naive, protected and eager way and print, for each, the cats found,
    the SQL statements sent and the time taken.  Exits 1 if the three
    versions disagree.
``create-test-db`` / ``create-prod-db``
    (Re)build the example's tables at the test or the production size.
``serve``
    Run the Flask app with its Success Stories page.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from sqlalchemy import Engine, create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from .counting import StatementCounter, summarize
from .generate import DEFAULT_SEED, SIZES, build_database, database_counts, default_url, has_data
from .models import Clinic
from .queries import VERSIONS, ClinicNotFound, list_cats_seen_at

__all__ = ["main"]

COMMANDS = ("demo", "create-test-db", "create-prod-db", "serve")

DESCRIPTIONS = {
    "naive": "the loop over lazy relationships (the N+1)",
    "protected": "the same loop, clinic loaded with nplus1loader('*')",
    "eager": "one hand-written join query",
}


def _display_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _say(message: str) -> None:
    print(message, flush=True)


def _format_seconds(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def _ensure_database(engine: Engine, url: str, size: str, seed: int, rebuild: bool) -> None:
    """Build the example's tables at ``url`` unless they are already there."""
    if not rebuild and has_data(engine):
        return
    _say(f"Building the {size} database at {_display_url(url)} (seed {seed}) ...")
    if size == "prod":
        _say("  (2.5 million appointments: this takes a few minutes)")
    build_database(engine, size, seed, progress=_say)
    _say("")


def _first_clinic(engine: Engine) -> str:
    with Session(engine) as session:
        name = session.scalars(select(Clinic.name).order_by(Clinic.id).limit(1)).first()
    if name is None:
        raise ClinicNotFound("(the database has no clinics)")
    return name


class _Collect(logging.Handler):
    """Keeps nplus1loader's log messages, to print them after the table."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# -- commands -------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    url = args.url or default_url(args.size)
    engine = create_engine(url)
    try:
        _ensure_database(engine, url, args.size, args.seed, args.rebuild)
        counts = database_counts(engine)
        clinic = args.clinic or _first_clinic(engine)
        _say(f"Cat clinic demo: {_display_url(url)}")
        _say(
            f"  {counts['person'] - counts['veterinarian']:,} owners, "
            f"{counts['veterinarian']:,} veterinarians, {counts['clinic']:,} clinics, "
            f"{counts['cat']:,} cats, {counts['appointment']:,} appointments"
        )
        _say("")
        _say(f'list_cats_seen_at("{clinic}"), three ways:')
        _say("")
        _say(f"  {'version':<10} {'cats':>7} {'queries':>8} {'time':>11}")
        counter = StatementCounter(engine)
        log = _Collect()
        logger = logging.getLogger("nplus1loader")
        results: dict[str, list[int]] = {}
        statements_of: dict[str, list[str]] = {}
        for version in VERSIONS:
            if version == "protected":
                logger.addHandler(log)
            try:
                with Session(engine) as session, counter.record() as statements:
                    started = time.perf_counter()
                    cats = list_cats_seen_at(session, clinic, version)
                    elapsed = time.perf_counter() - started
                    results[version] = [cat.id for cat in cats]
            finally:
                logger.removeHandler(log)
            statements_of[version] = statements
            _say(
                f"  {version:<10} {len(cats):>7,} {len(statements):>8,} "
                f"{_format_seconds(elapsed):>11}   {DESCRIPTIONS[version]}"
            )
        counter.close()
        if log.messages:
            _say("")
            _say("nplus1loader's log for the protected version (one line per batch):")
            for message in log.messages:
                _say(f"  {message}")
        if args.show_sql:
            for version in VERSIONS:
                _say("")
                _say(f"SQL sent by the {version} version:")
                for times, sql in summarize(statements_of[version]):
                    _say(f"  {times:>6,} x  {sql}")
        _say("")
        if results["naive"] == results["protected"] == results["eager"]:
            _say(f"All three versions found the same {len(results['naive']):,} cats.")
            return 0
        _say("The versions DISAGREE:")
        for version in VERSIONS:
            ids = results[version]
            _say(f"  {version}: {len(ids):,} cats, ids {ids[:20]}{' ...' if len(ids) > 20 else ''}")
        return 1
    except ClinicNotFound as error:
        print(f"No clinic named {error.args[0]!r}.", file=sys.stderr)
        return 2
    finally:
        engine.dispose()


def _create(args: argparse.Namespace, size: str) -> int:
    url = args.url or default_url(size)
    spec = SIZES[size]
    _say(
        f"Building the {size} database at {_display_url(url)} (seed {args.seed}): "
        f"{spec.owners:,} owners, {spec.clinics:,} clinics, {spec.veterinarians:,} "
        f"veterinarians, {spec.cats:,} cats, {spec.appointments:,} appointments"
    )
    engine = create_engine(url)
    try:
        build_database(engine, size, args.seed, progress=_say)
    finally:
        engine.dispose()
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .app import create_app

    url = args.url or default_url(args.size)
    engine = create_engine(url)
    try:
        _ensure_database(engine, url, args.size, DEFAULT_SEED, rebuild=False)
    finally:
        engine.dispose()
    app = create_app(url)
    # nplus1loader only adds a NullHandler: print its one line per batch.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("nplus1loader").addHandler(handler)
    app.run(host=args.host, port=args.port, debug=args.debug)
    return 0


# -- argument parsing -------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.cat_clinic",
        description=(
            "The cat clinic example of nplus1loader: a Success Stories page that "
            "sent thousands of queries in production, and its one-line fix."
        ),
        epilog="Without a command, runs `demo`.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def url_option(command: argparse.ArgumentParser, what: str) -> None:
        command.add_argument(
            "--url",
            help=f"SQLAlchemy database URL (default: SQLite file {what})",
        )

    demo = commands.add_parser(
        "demo", help="compare the naive, protected and eager versions (default)"
    )
    demo.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="test",
        help="database size to build when it is missing (default: test)",
    )
    url_option(demo, "examples/cat_clinic/cat_clinic.db, or cat_clinic_prod.db")
    demo.add_argument("--clinic", help="clinic name (default: the first clinic)")
    demo.add_argument("--seed", type=int, default=DEFAULT_SEED, help=argparse.SUPPRESS)
    demo.add_argument(
        "--rebuild", action="store_true", help="rebuild the database even if it exists"
    )
    demo.add_argument(
        "--show-sql", action="store_true", help="print the SQL each version sent, grouped"
    )

    for size, filename in (("test", "cat_clinic.db"), ("prod", "cat_clinic_prod.db")):
        spec = SIZES[size]
        create = commands.add_parser(
            f"create-{size}-db",
            help=(
                f"(re)build the {size} database: {spec.owners:,} owners, "
                f"{spec.cats:,} cats, {spec.appointments:,} appointments"
            ),
        )
        url_option(create, f"examples/cat_clinic/{filename}")
        create.add_argument(
            "--seed", type=int, default=DEFAULT_SEED, help=f"default: {DEFAULT_SEED}"
        )

    serve = commands.add_parser("serve", help="run the Flask app")
    url_option(serve, "examples/cat_clinic/cat_clinic.db, built if missing")
    serve.add_argument("--size", choices=sorted(SIZES), default="test")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=5000)
    serve.add_argument("--debug", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or (arguments[0].startswith("-") and arguments[0] not in ("-h", "--help")):
        arguments.insert(0, "demo")
    args = _parser().parse_args(arguments)
    if args.command == "demo":
        return _demo(args)
    if args.command == "create-test-db":
        return _create(args, "test")
    if args.command == "create-prod-db":
        return _create(args, "prod")
    return _serve(args)
