"""``list_cats_seen_at``, the Success Stories query, written three ways.

* ``naive``: load the clinic, then walk its lazy relationships --
  ``clinic.veterinarians`` -> ``vet.appointments`` -> ``appointment.cat``.
  Readable, correct, and one query per veterinarian plus one per cat: fine on
  QA's 50-owner database, thousands of queries per page view in production.
* ``protected``: the very same walk (:func:`_walk` is shared, not copied); the
  only change is ``.options(nplus1loader("*"))`` on the query that loads the
  clinic.  Each level of the walk now costs one query per 500 instances.
* ``eager``: what you would write by hand once you know the page's shape: a
  single query that joins its way from the clinic to the cats.

All three return the same cats, de-duplicated and ordered by id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, contains_eager, joinedload

from nplus1loader import nplus1loader

from .models import Appointment, Cat, Clinic, Veterinarian

__all__ = [
    "VERSIONS",
    "ClinicNotFound",
    "Story",
    "list_cats_seen_at",
    "list_cats_seen_at_eager",
    "list_cats_seen_at_naive",
    "list_cats_seen_at_protected",
    "success_stories",
]

VERSIONS = ("naive", "protected", "eager")

Visit = tuple[Veterinarian, Appointment, Cat]


class ClinicNotFound(LookupError):
    """No clinic has the name asked for."""


@dataclass(frozen=True)
class Story:
    """One cat seen at a clinic: its latest visit there, and how many it had."""

    cat: Cat
    veterinarian: Veterinarian
    appointment: Appointment
    visits: int


# -- the loop the developer wrote (shared by naive and protected) ---------------


def _walk(clinic: Clinic) -> Iterator[Visit]:
    """Every appointment of every veterinarian of ``clinic``, with its cat.

    Plain attribute access on lazy relationships: whether this costs one
    query per object or one per level depends only on how ``clinic`` was
    loaded.
    """
    for veterinarian in clinic.veterinarians:
        for appointment in veterinarian.appointments:
            yield veterinarian, appointment, appointment.cat


def _load_clinic(session: Session, clinic_name: str, options: Sequence[Any] = ()) -> Clinic:
    statement = select(Clinic).where(Clinic.name == clinic_name).options(*options)
    clinic = session.scalars(statement).one_or_none()
    if clinic is None:
        raise ClinicNotFound(clinic_name)
    return clinic


def _naive_visits(session: Session, clinic_name: str) -> Iterator[Visit]:
    return _walk(_load_clinic(session, clinic_name))


def _protected_visits(session: Session, clinic_name: str) -> Iterator[Visit]:
    # The one-line fix: arm every lazy attribute of the clinic, and (nested)
    # of everything loaded through it.
    return _walk(_load_clinic(session, clinic_name, [nplus1loader("*")]))


# -- the hand-written eager version -------------------------------------------


def _seen_at(clinic_name: str) -> Any:
    """The appointments of the clinic's veterinarians, as a joinable select."""
    return (
        select(Appointment)
        .join(Appointment.veterinarian)
        .join(Veterinarian.clinic)
        .where(Clinic.name == clinic_name)
    )


def _check_clinic_exists(session: Session, clinic_name: str) -> None:
    # Only reached when the clinic has no visits at all, so the usual
    # page costs one query.
    if session.scalar(select(Clinic.id).where(Clinic.name == clinic_name)) is None:
        raise ClinicNotFound(clinic_name)


def _eager_visits(session: Session, clinic_name: str) -> Iterator[Visit]:
    statement = _seen_at(clinic_name).options(
        contains_eager(Appointment.veterinarian),
        joinedload(Appointment.cat).joinedload(Cat.owner),
    )
    appointments = session.scalars(statement).unique().all()
    if not appointments:
        _check_clinic_exists(session, clinic_name)
    return ((a.veterinarian, a, a.cat) for a in appointments)


# -- the three list_cats_seen_at -----------------------------------------------


def _distinct_cats(visits: Iterable[Visit]) -> list[Cat]:
    cats = {cat.id: cat for _, _, cat in visits}
    return [cats[cat_id] for cat_id in sorted(cats)]


def list_cats_seen_at_naive(session: Session, clinic_name: str) -> list[Cat]:
    """The code that shipped: walks lazy relationships, one query per object."""
    return _distinct_cats(_naive_visits(session, clinic_name))


def list_cats_seen_at_protected(session: Session, clinic_name: str) -> list[Cat]:
    """The same walk, the clinic loaded with ``nplus1loader("*")``."""
    return _distinct_cats(_protected_visits(session, clinic_name))


def list_cats_seen_at_eager(session: Session, clinic_name: str) -> list[Cat]:
    """One hand-written query: the cats whose appointments were with the
    clinic's veterinarians."""
    seen = _seen_at(clinic_name).with_only_columns(Appointment.cat_id)
    cats = list(session.scalars(select(Cat).where(Cat.id.in_(seen)).order_by(Cat.id)))
    if not cats:
        _check_clinic_exists(session, clinic_name)
    return cats


_LISTERS: dict[str, Callable[[Session, str], list[Cat]]] = {
    "naive": list_cats_seen_at_naive,
    "protected": list_cats_seen_at_protected,
    "eager": list_cats_seen_at_eager,
}
_VISITS: dict[str, Callable[[Session, str], Iterator[Visit]]] = {
    "naive": _naive_visits,
    "protected": _protected_visits,
    "eager": _eager_visits,
}


def _check_version(version: str) -> None:
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {', '.join(VERSIONS)}; got {version!r}")


def list_cats_seen_at(session: Session, clinic_name: str, version: str = "naive") -> list[Cat]:
    """Every cat seen by a veterinarian of ``clinic_name``, ordered by id.

    Raises :class:`ClinicNotFound` for an unknown clinic.
    """
    _check_version(version)
    return _LISTERS[version](session, clinic_name)


def success_stories(session: Session, clinic_name: str, version: str = "naive") -> list[Story]:
    """One story per cat seen at the clinic -- its latest visit -- newest first.

    The page then shows each cat's owner (``story.cat.owner``), one more lazy
    relationship: the naive version pays one query per owner for it.
    """
    _check_version(version)
    latest: dict[int, tuple[Veterinarian, Appointment, Cat]] = {}
    visits: dict[int, int] = {}
    for veterinarian, appointment, cat in _VISITS[version](session, clinic_name):
        visits[cat.id] = visits.get(cat.id, 0) + 1
        known = latest.get(cat.id)
        if known is None or (appointment.start, appointment.id) > (known[1].start, known[1].id):
            latest[cat.id] = (veterinarian, appointment, cat)
    stories = [
        Story(cat=cat, veterinarian=vet, appointment=appointment, visits=visits[cat.id])
        for vet, appointment, cat in latest.values()
    ]
    stories.sort(key=lambda s: (s.appointment.start, s.cat.id), reverse=True)
    return stories
