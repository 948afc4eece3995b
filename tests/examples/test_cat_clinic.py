"""The cat clinic example (examples/cat_clinic), at the test size, on every
backend of the shared ``engine`` fixture.

The query counts asserted here are the example's story in numbers: the naive
Success Stories query costs one query per veterinarian and per cat (computed
from the data, not hard-coded), the protected one a fixed four.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, distinct, func, select
from sqlalchemy.orm import Session, selectinload

from examples.cat_clinic import cli, generate
from examples.cat_clinic.app import create_app
from examples.cat_clinic.generate import SIZES, build_database, database_counts
from examples.cat_clinic.models import Appointment, Base, Cat, Clinic, Veterinarian
from examples.cat_clinic.queries import (
    VERSIONS,
    ClinicNotFound,
    _walk,
    list_cats_seen_at,
    success_stories,
)
from nplus1loader import LazyLoadingAttributeError, _modes, raiseload_all
from tests._db import QueryCounter, setup_schema

TEST = SIZES["test"]


@dataclass(frozen=True)
class ClinicFacts:
    """What the database says about one clinic, computed with plain Core
    queries (no relationship involved)."""

    name: str
    veterinarians: int
    cat_ids: list[int]
    owners: int


def _facts(engine: Engine) -> list[ClinicFacts]:
    vet = Veterinarian.__table__
    appointment = Appointment.__table__
    cat = Cat.__table__
    facts = []
    with engine.connect() as connection:
        for clinic_id, name in connection.execute(
            select(Clinic.id, Clinic.name).order_by(Clinic.id)
        ):
            n_vets = connection.execute(
                select(func.count()).select_from(vet).where(vet.c.clinic_id == clinic_id)
            ).scalar_one()
            seen = (
                select(appointment.c.cat_id)
                .join(vet, vet.c.id == appointment.c.veterinarian_id)
                .where(vet.c.clinic_id == clinic_id)
            )
            cat_ids = list(
                connection.execute(
                    select(cat.c.id).where(cat.c.id.in_(seen)).order_by(cat.c.id)
                ).scalars()
            )
            owners = connection.execute(
                select(func.count(distinct(cat.c.owner_id))).where(cat.c.id.in_(seen))
            ).scalar_one()
            facts.append(ClinicFacts(name, n_vets, cat_ids, owners))
    return facts


@pytest.fixture(autouse=True)
def _declared_modes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The counts below are those of the modes the example's code declares;
    the suite itself may run under NPLUS1LOADER_MODE or --nplus1-mode."""
    monkeypatch.delenv(_modes.ENV_VAR, raising=False)
    previous = _modes.set_forced_mode(None)
    yield
    _modes.set_forced_mode(previous)


@pytest.fixture
def clinic_db(engine: Engine) -> Iterator[list[ClinicFacts]]:
    """The test-size database, freshly built; yields the facts per clinic."""
    # setup_schema clears same-named tables other test modules may have left
    # (with whatever references them); build_database then rebuilds ours.
    setup_schema(engine, Base.metadata)
    build_database(engine, "test")
    yield _facts(engine)


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _cat_ids(engine: Engine, clinic: str, version: str) -> list[int]:
    with Session(engine) as session:
        return [cat.id for cat in list_cats_seen_at(session, clinic, version)]


def _count_statements(engine: Engine, clinic: str, version: str) -> QueryCounter:
    with Session(engine) as session, QueryCounter(engine) as counter:
        list_cats_seen_at(session, clinic, version)
    return counter


# -- the data -------------------------------------------------------------------


def test_generator_builds_the_test_size(engine: Engine, clinic_db: list[ClinicFacts]) -> None:
    counts = database_counts(engine)
    assert counts == {
        "clinic": TEST.clinics,
        "person": TEST.owners + TEST.veterinarians,
        "veterinarian": TEST.veterinarians,
        "cat": TEST.cats,
        "appointment": TEST.appointments,
    }
    assert [f.veterinarians for f in clinic_db] == [TEST.vets_per_clinic] * TEST.clinics
    # Every clinic has a story worth telling: several vets, dozens of cats.
    assert all(len(f.cat_ids) >= 10 for f in clinic_db)


def _snapshot(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    with engine.connect() as connection:
        return {
            table.name: [
                tuple(row)
                for row in connection.execute(select(table).order_by(*table.primary_key.columns))
            ]
            for table in Base.metadata.sorted_tables
        }


def test_generator_is_reproducible(engine: Engine, clinic_db: list[ClinicFacts]) -> None:
    first = _snapshot(engine)
    build_database(engine, "test")
    assert _snapshot(engine) == first
    build_database(engine, "test", seed=generate.DEFAULT_SEED + 1)
    assert _snapshot(engine) != first


def test_generator_inserts_in_chunks(engine: Engine, clinic_db: list[ClinicFacts]) -> None:
    # Bulk inserts, `chunk_size` rows per executemany, never one per row.
    with QueryCounter(engine) as counter:
        build_database(engine, "test", chunk_size=40)
    inserts = [s for s in counter.statements if s.lstrip().upper().startswith("INSERT")]
    assert len(inserts) == sum(-(-rows // 40) for rows in database_counts(engine).values())


# -- list_cats_seen_at ----------------------------------------------------------


def test_three_versions_find_the_same_cats(engine: Engine, clinic_db: list[ClinicFacts]) -> None:
    for facts in clinic_db:
        for version in VERSIONS:
            assert _cat_ids(engine, facts.name, version) == facts.cat_ids, version


def test_naive_sends_one_query_per_vet_and_per_cat(
    engine: Engine, clinic_db: list[ClinicFacts]
) -> None:
    for facts in clinic_db:
        counter = _count_statements(engine, facts.name, "naive")
        # The clinic, its vets, then each vet's appointments, then each cat
        # (an appointment whose cat is already in the session costs nothing).
        counter.assert_count(1 + 1 + facts.veterinarians + len(facts.cat_ids))


def test_protected_sends_one_query_per_level(engine: Engine, clinic_db: list[ClinicFacts]) -> None:
    for facts in clinic_db:
        counter = _count_statements(engine, facts.name, "protected")
        # The clinic; clinic.veterinarians; the appointments of all its vets
        # at once; the cats of all those appointments at once.  Four,
        # whatever the clinic's size, as long as each level holds at most
        # 500 objects (nplus1loader's chunk size): at the test size it does.
        counter.assert_count(4)
        assert len(set(counter.statements)) == 4


def test_eager_sends_one_query(engine: Engine, clinic_db: list[ClinicFacts]) -> None:
    for facts in clinic_db:
        _count_statements(engine, facts.name, "eager").assert_count(1)


def test_unknown_clinic_and_version(engine: Engine, clinic_db: list[ClinicFacts]) -> None:
    with Session(engine) as session:
        for version in VERSIONS:
            with pytest.raises(ClinicNotFound):
                list_cats_seen_at(session, "No Such Clinic", version)
            with pytest.raises(ClinicNotFound):
                success_stories(session, "No Such Clinic", version)
        with pytest.raises(ValueError, match="version"):
            list_cats_seen_at(session, clinic_db[0].name, "lazy")


def test_success_stories_agree(engine: Engine, clinic_db: list[ClinicFacts]) -> None:
    for facts in clinic_db:
        seen = {}
        for version in VERSIONS:
            with Session(engine) as session:
                seen[version] = [
                    (s.cat.id, s.veterinarian.id, s.appointment.id, s.visits, s.cat.owner.id)
                    for s in success_stories(session, facts.name, version)
                ]
        assert seen["naive"] == seen["protected"] == seen["eager"]
        assert sorted(cat_id for cat_id, *_ in seen["naive"]) == facts.cat_ids


# -- what a test suite with raiseload_all would have said -----------------------


def test_raiseload_all_catches_the_n_plus_one(engine: Engine, clinic_db: list[ClinicFacts]) -> None:
    with Session(engine) as session:
        clinic = session.scalars(
            select(Clinic).where(Clinic.name == clinic_db[0].name).options(raiseload_all("*"))
        ).one()
        with pytest.raises(LazyLoadingAttributeError) as caught:
            list(_walk(clinic))
    assert (caught.value.model_name, caught.value.attribute_name) == ("Clinic", "veterinarians")


def test_raiseload_all_passes_once_the_walk_is_eager(
    engine: Engine, clinic_db: list[ClinicFacts]
) -> None:
    facts = clinic_db[0]
    statement = (
        select(Clinic)
        .where(Clinic.name == facts.name)
        .options(
            selectinload(Clinic.veterinarians)
            .selectinload(Veterinarian.appointments)
            .selectinload(Appointment.cat),
            raiseload_all("*"),
        )
    )
    with Session(engine) as session, QueryCounter(engine) as counter:
        clinic = session.scalars(statement).one()
        cats = {cat.id for _, _, cat in _walk(clinic)}
    assert sorted(cats) == facts.cat_ids
    counter.assert_count(4)


# -- the Flask app ----------------------------------------------------------------

QUERY_COUNT = re.compile(r"This page took\s+([\d,]+) SQL\s+quer(?:y|ies)")


@pytest.fixture
def client(engine: Engine, clinic_db: list[ClinicFacts]) -> Iterator[FlaskClient]:
    app = create_app(_url(engine))
    app.testing = True
    yield app.test_client()
    app.extensions["cat_clinic"]["counter"].close()
    app.extensions["cat_clinic"]["engine"].dispose()


def test_index_lists_the_clinics(client: FlaskClient, clinic_db: list[ClinicFacts]) -> None:
    page = client.get("/")
    assert page.status_code == 200
    for facts in clinic_db:
        assert facts.name in page.text
        assert "/success-stories" in page.text


@pytest.mark.parametrize("version", ["naive", "protected", "eager"])
def test_success_stories_page(
    client: FlaskClient, clinic_db: list[ClinicFacts], version: str
) -> None:
    facts = clinic_db[0]
    page = client.get(f"/clinics/{facts.name}/success-stories", query_string={"version": version})
    assert page.status_code == 200
    match = QUERY_COUNT.search(page.text)
    assert match, page.text
    queries = int(match.group(1).replace(",", ""))
    expected = {
        # list_cats_seen_at's walk, then each cat's owner once.
        "naive": 1 + 1 + facts.veterinarians + len(facts.cat_ids) + facts.owners,
        # the walk's four levels, then all the owners in one query.
        "protected": 5,
        "eager": 1,
    }[version]
    assert queries == expected
    assert page.text.count('<tr><td><span class="swatch"') == len(facts.cat_ids)
    for other in VERSIONS:
        assert f"version={other}" in page.text


def test_success_stories_page_errors(client: FlaskClient) -> None:
    assert client.get("/clinics/Nowhere/success-stories").status_code == 404
    assert client.get("/clinics/Nowhere/success-stories?version=x").status_code == 400


# -- the command line -------------------------------------------------------------

ROW = re.compile(r"^\s+(naive|protected|eager)\s+([\d,]+)\s+([\d,]+)\s", re.MULTILINE)


def _rows(output: str) -> dict[str, tuple[int, int]]:
    return {
        version: (int(cats.replace(",", "")), int(queries.replace(",", "")))
        for version, cats, queries in ROW.findall(output)
    }


def test_cli_demo(
    engine: Engine, clinic_db: list[ClinicFacts], capsys: pytest.CaptureFixture[str]
) -> None:
    facts = clinic_db[0]
    assert cli.main(["demo", "--url", _url(engine)]) == 0
    output = capsys.readouterr().out
    assert "Building" not in output  # the database was there: reused
    assert _rows(output) == {
        "naive": (len(facts.cat_ids), 2 + facts.veterinarians + len(facts.cat_ids)),
        "protected": (len(facts.cat_ids), 4),
        "eager": (len(facts.cat_ids), 1),
    }
    assert f"All three versions found the same {len(facts.cat_ids)} cats." in output


def test_cli_demo_other_clinic_and_sql(
    engine: Engine, clinic_db: list[ClinicFacts], capsys: pytest.CaptureFixture[str]
) -> None:
    facts = clinic_db[-1]
    url = _url(engine)
    assert cli.main(["--url", url, "--clinic", facts.name, "--show-sql"]) == 0
    output = capsys.readouterr().out
    assert _rows(output)["naive"][0] == len(facts.cat_ids)
    # --show-sql groups the statements: the N+1 is one SELECT repeated per cat.
    assert re.search(rf"^\s+{len(facts.cat_ids)} x\s+SELECT cat\.", output, re.MULTILINE)
    assert cli.main(["demo", "--url", url, "--clinic", "Nowhere"]) == 2


def test_cli_create_test_db_then_demo(
    engine: Engine, clinic_db: list[ClinicFacts], capsys: pytest.CaptureFixture[str]
) -> None:
    url = _url(engine)
    assert cli.main(["create-test-db", "--url", url, "--seed", "7"]) == 0
    assert database_counts(engine)["appointment"] == TEST.appointments
    assert cli.main(["demo", "--url", url]) == 0
    assert "All three versions found the same" in capsys.readouterr().out


@pytest.mark.sqlite
def test_cli_demo_builds_a_missing_sqlite_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cat_clinic.db"
    monkeypatch.setattr(cli, "default_url", lambda size="test": f"sqlite:///{path}")
    assert cli.main([]) == 0
    output = capsys.readouterr().out
    assert "Building the test database" in output
    assert "All three versions found the same" in output
    assert path.exists()
