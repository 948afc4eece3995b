"""A seeded, reproducible generator for the cat clinic's database.

Two sizes: ``test`` is the database QA clicked through (about 50 owners), and
``prod`` is what the clinic chain really has (100,000 owners, 1.5 million
cats, 2.5 million appointments).

Rows are made lazily by generators and written with Core bulk inserts
(``connection.execute(table.insert(), rows)``, 10,000 rows at a time), never
as ORM objects, so building ``prod`` takes minutes and a few tens of MB
whatever the database.  The same seed always gives the same rows.
"""

from __future__ import annotations

import random
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Index, Table, create_engine, func, inspect, select, text

from .models import Appointment, Base, Cat, CatColor, Clinic, Person, Veterinarian

__all__ = [
    "DEFAULT_SEED",
    "SIZES",
    "Size",
    "build_database",
    "database_counts",
    "default_url",
    "has_data",
]

DEFAULT_SEED = 2024
CHUNK_SIZE = 10_000
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Size:
    name: str
    owners: int
    clinics: int
    vets_per_clinic: int
    cats: int
    appointments: int
    home_clinic_share: float = 0.85
    """How often a cat is seen at its owner's usual clinic rather than any."""

    @property
    def veterinarians(self) -> int:
        return self.clinics * self.vets_per_clinic


SIZES: dict[str, Size] = {
    "test": Size("test", owners=50, clinics=3, vets_per_clinic=2, cats=75, appointments=125),
    "prod": Size(
        "prod",
        owners=100_000,
        clinics=200,
        vets_per_clinic=10,
        cats=1_500_000,
        appointments=2_500_000,
    ),
}


def default_url(size: str = "test") -> str:
    """The SQLite file a size is built into when no URL is given."""
    filename = "cat_clinic.db" if size == "test" else f"cat_clinic_{size}.db"
    return f"sqlite:///{HERE / filename}"


# -- vocabulary ---------------------------------------------------------------

FIRST_NAMES = (
    "Ada", "Ben", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas",
    "Keiko", "Liam", "Maya", "Nils", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tessa",
    "Umar", "Vera", "Wei", "Ximena", "Yusuf", "Zoe", "Amara", "Bruno", "Clara", "Diego",
    "Emil", "Freya", "Gus", "Hana", "Ivo", "Jade", "Kofi", "Lena", "Marek", "Nora",
)  # fmt: skip
LAST_NAMES = (
    "Abbott", "Baker", "Castillo", "Dubois", "Eriksen", "Fischer", "Garcia", "Hughes",
    "Ivanova", "Jensen", "Kowalski", "Lambert", "Moreau", "Nakamura", "Okafor", "Petrov",
    "Quigley", "Rossi", "Schmidt", "Tanaka", "Ueda", "Varga", "Walsh", "Xu", "Yilmaz",
    "Zimmer", "Alvarez", "Brennan", "Costa", "Dahl", "Ellis", "Novak", "Park", "Singh",
    "Torres", "Meyer", "Ortiz", "Larsen", "Kim", "Haddad",
)  # fmt: skip
CAT_NAMES = (
    "Luna", "Milo", "Oliver", "Leo", "Bella", "Simba", "Nala", "Chloe", "Loki", "Mochi",
    "Tiger", "Shadow", "Smokey", "Ginger", "Pumpkin", "Cleo", "Felix", "Jasper", "Willow",
    "Pepper", "Oreo", "Salem", "Mittens", "Biscuit", "Marmalade", "Socks", "Whiskers",
    "Tofu", "Pixel", "Noodle", "Sushi", "Pickles", "Figaro", "Garfield", "Misty", "Ziggy",
    "Hazel", "Olive", "Clementine", "Ruby", "Sir Pounce", "Duchess", "Kiki", "Momo",
    "Nugget", "Peaches", "Rocket", "Sprinkles", "Taco", "Waffles",
)  # fmt: skip
CLINIC_PREFIXES = (
    "Purrfect Paws", "Whisker Hill", "Velvet Paw", "Tabby Lane", "Catnip Corner",
    "Moonbeam", "Nine Lives", "Kitten Creek", "Meadowbrook", "Mouser's Rest",
    "Sunny Window", "Cozy Basket", "Silver Tail", "Little Lion", "Mittens & Co",
    "Fluffy Cloud", "Tuxedo Park", "Calico Court", "Purring Heart", "Soft Landing",
)  # fmt: skip
CLINIC_SUFFIXES = (
    "Cat Clinic", "Veterinary Hospital", "Animal Care", "Vet Center", "Feline Practice",
    "Pet Hospital", "Veterinary Clinic", "Animal Hospital", "Cat Care", "Vets",
)  # fmt: skip
CITIES = (
    "Lisbon", "Oslo", "Kyoto", "Montreal", "Nairobi", "Valparaiso", "Tallinn", "Porto",
    "Bergen", "Osaka", "Quebec", "Mombasa",
)  # fmt: skip
COLORS = tuple(CatColor)
DURATIONS = (15, 30, 30, 30, 45, 60)
FIRST_DAY = datetime(2022, 1, 3)
DAYS = 3 * 365
SLOTS_PER_DAY = 40  # 15-minute slots from 08:00 to 18:00


# -- row generators -------------------------------------------------------------


class _Plan:
    """Everything a size needs decided up front, plus the few arrays later
    tables look back into (a cat's owner, an owner's usual clinic)."""

    def __init__(self, size: Size, seed: int) -> None:
        self.size = size
        self.rng = random.Random(seed)
        names = [f"{p} {s}" for p in CLINIC_PREFIXES for s in CLINIC_SUFFIXES]
        if size.clinics > len(names):
            raise ValueError(f"at most {len(names)} clinics have names")
        self.clinic_names = self.rng.sample(names, size.clinics)
        self.first_vet_id = size.owners + 1
        self.owner_home_clinic = array("I")  # index: owner id - 1
        self.cat_owner = array("I")  # index: cat id - 1

    def _person_name(self) -> str:
        rng = self.rng
        return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"

    def clinics(self) -> Iterator[dict[str, Any]]:
        for i, name in enumerate(self.clinic_names, start=1):
            yield {"id": i, "name": name, "city": self.rng.choice(CITIES)}

    def people(self) -> Iterator[dict[str, Any]]:
        rng, size = self.rng, self.size
        for person_id in range(1, size.owners + size.veterinarians + 1):
            name = self._person_name()
            is_vet = person_id >= self.first_vet_id
            if is_vet:
                name = f"Dr. {name}"
                email = f"{name[4:].lower().replace(' ', '.')}.{person_id}@clinic.example"
            else:
                email = f"{name.lower().replace(' ', '.')}.{person_id}@mail.example"
                self.owner_home_clinic.append(rng.randrange(size.clinics) + 1)
            kind = "veterinarian" if is_vet else "person"
            yield {"id": person_id, "name": name, "email": email, "kind": kind}

    def veterinarians(self) -> Iterator[dict[str, Any]]:
        for i in range(self.size.veterinarians):
            vet_id = self.first_vet_id + i
            yield {
                "id": vet_id,
                "license_number": f"VET-{vet_id:07d}",
                "clinic_id": i // self.size.vets_per_clinic + 1,
            }

    def cats(self) -> Iterator[dict[str, Any]]:
        rng, owners = self.rng, self.size.owners
        for cat_id in range(1, self.size.cats + 1):
            owner_id = rng.randrange(owners) + 1
            self.cat_owner.append(owner_id)
            yield {
                "id": cat_id,
                "name": rng.choice(CAT_NAMES),
                "age": rng.randrange(21),
                "color": rng.choice(COLORS),
                "lives": rng.randint(1, 9),
                "owner_id": owner_id,
            }

    def appointments(self) -> Iterator[dict[str, Any]]:
        rng, size = self.rng, self.size
        random_ = rng.random
        for appointment_id in range(1, size.appointments + 1):
            cat_id = rng.randrange(size.cats) + 1
            owner_id = self.cat_owner[cat_id - 1]
            if random_() < size.home_clinic_share:
                clinic_id = self.owner_home_clinic[owner_id - 1]
            else:
                clinic_id = rng.randrange(size.clinics) + 1
            vet_index = (clinic_id - 1) * size.vets_per_clinic + rng.randrange(size.vets_per_clinic)
            slot = rng.randrange(SLOTS_PER_DAY)
            start = FIRST_DAY + timedelta(
                days=rng.randrange(DAYS), hours=8 + slot // 4, minutes=15 * (slot % 4)
            )
            yield {
                "id": appointment_id,
                "start": start,
                "duration_minutes": rng.choice(DURATIONS),
                "cat_id": cat_id,
                "clinic_id": clinic_id,
                "owner_id": owner_id,
                "veterinarian_id": self.first_vet_id + vet_index,
            }


# -- writing --------------------------------------------------------------------


def _table(entity: Any) -> Table:
    table = entity.__table__
    assert isinstance(table, Table)
    return table


def _insert(engine: Engine, table: Table, rows: Iterable[dict[str, Any]], chunk_size: int) -> int:
    """Bulk-insert ``rows`` ``chunk_size`` at a time, in one transaction."""
    written = 0
    rows = iter(rows)
    with engine.begin() as connection:
        while chunk := list(islice(rows, chunk_size)):
            connection.execute(table.insert(), chunk)
            written += len(chunk)
    return written


def _defer_indexes(engine: Engine) -> list[Index]:
    """Drop the plain (foreign key) indexes until the rows are in: building an
    index once from sorted data beats updating it row by row.  Not on MySQL,
    where InnoDB needs an index on every foreign key at all times."""
    if engine.dialect.name not in ("sqlite", "postgresql"):
        return []
    indexes = [
        index
        for table in Base.metadata.sorted_tables
        for index in sorted(table.indexes, key=lambda index: str(index.name))
        if not index.unique
    ]
    with engine.begin() as connection:
        for index in indexes:
            index.drop(connection)
    return indexes


def _after_load(engine: Engine) -> None:
    """Move sequences past the explicit ids, and refresh planner statistics."""
    tables = Base.metadata.sorted_tables
    name = engine.dialect.name
    with engine.begin() as connection:
        for table in tables:
            if name == "postgresql" and table.autoincrement_column is not None:
                connection.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"COALESCE((SELECT MAX(id) FROM {table.name}), 0) + 1, false)"
                    )
                )
            if name == "postgresql":
                connection.execute(text(f"ANALYZE {table.name}"))
            elif name in ("mysql", "mariadb"):
                connection.execute(text(f"ANALYZE TABLE {table.name}"))
        if name == "sqlite":
            connection.execute(text("ANALYZE"))


def build_database(
    bind: Engine | str,
    size: str | Size = "test",
    seed: int = DEFAULT_SEED,
    *,
    chunk_size: int = CHUNK_SIZE,
    progress: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Drop and recreate the example's tables at ``bind`` and fill them.

    Only the tables of :data:`models.Base.metadata` are dropped; anything else
    in the database is left alone.  Returns the number of rows per table.
    """
    spec = SIZES[size] if isinstance(size, str) else size
    engine = create_engine(bind) if isinstance(bind, str) else bind
    say = progress or (lambda message: None)
    plan = _Plan(spec, seed)
    started = time.perf_counter()
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    deferred = _defer_indexes(engine)
    counts: dict[str, int] = {}
    steps: list[tuple[Any, Iterator[dict[str, Any]]]] = [
        (Clinic, plan.clinics()),
        (Person, plan.people()),
        (Veterinarian, plan.veterinarians()),
        (Cat, plan.cats()),
        (Appointment, plan.appointments()),
    ]
    for entity, rows in steps:
        table = _table(entity)
        step_started = time.perf_counter()
        counts[table.name] = _insert(engine, table, rows, chunk_size)
        say(
            f"  {table.name:<13} {counts[table.name]:>10,} rows "
            f"in {time.perf_counter() - step_started:6.1f} s"
        )
    if deferred:
        step_started = time.perf_counter()
        with engine.begin() as connection:
            for index in deferred:
                index.create(connection)
        say(f"  {len(deferred)} indexes   built in {time.perf_counter() - step_started:6.1f} s")
    _after_load(engine)
    say(f"  built in {time.perf_counter() - started:.1f} s")
    if isinstance(bind, str):
        engine.dispose()
    return counts


def has_data(engine: Engine) -> bool:
    """Whether the example's tables exist at ``engine`` and hold appointments."""
    names = set(inspect(engine).get_table_names())
    if not {t.name for t in Base.metadata.sorted_tables} <= names:
        return False
    with engine.connect() as connection:
        return connection.execute(select(Appointment.id).limit(1)).first() is not None


def database_counts(engine: Engine) -> dict[str, int]:
    """Rows per table of the example, as the database has them now."""
    counts = {}
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            counts[table.name] = connection.execute(
                select(func.count()).select_from(table)
            ).scalar_one()
    return counts
