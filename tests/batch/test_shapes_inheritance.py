"""Inheritance shapes: joined-table and single-table, queried on the base
(one batch mixes subclasses) and on a subclass, subclass-only columns
deferred or not loaded at all, relationships on the base and on a subclass,
``with_polymorphic``.  Each check compares with stock lazy loading."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import defer, load_only, selectin_polymorphic, with_polymorphic

from tests._shapes import check_shape, chunks, targets
from tests.zoo_models import (
    ZooCar,
    ZooCompany,
    ZooEmployee,
    ZooEngineer,
    ZooMachine,
    ZooManager,
    ZooPart,
    ZooTask,
    ZooTruck,
    ZooVehicle,
)

JOINED_BASE = select(ZooEmployee).order_by(ZooEmployee.id)
ENGINEERS = select(ZooEngineer).order_by(ZooEngineer.id)
MANAGERS = select(ZooManager).order_by(ZooManager.id)
POLY = with_polymorphic(ZooEmployee, [ZooEngineer])
WITH_POLY = select(POLY).order_by(POLY.id)
SINGLE_BASE = select(ZooVehicle).order_by(ZooVehicle.id)
CARS = select(ZooCar).order_by(ZooCar.id)


@pytest.mark.parametrize(
    ("stmt", "attr"),
    [
        pytest.param(JOINED_BASE, "bio", id="base-query-base-deferred-column"),
        pytest.param(JOINED_BASE, "language", id="base-query-subclass-column-not-loaded"),
        pytest.param(JOINED_BASE, "notes", id="base-query-subclass-deferred-column"),
        pytest.param(JOINED_BASE, "budget", id="base-query-other-subclass-column"),
        pytest.param(ENGINEERS, "bio", id="subclass-query-base-deferred-column"),
        pytest.param(ENGINEERS, "notes", id="subclass-query-subclass-deferred-column"),
        pytest.param(
            ENGINEERS.options(defer(ZooEngineer.language)), "language",
            id="subclass-query-defer-subclass-column",
        ),
        pytest.param(
            ENGINEERS.options(load_only(ZooEngineer.name)), "level",
            id="subclass-query-load-only",
        ),
        pytest.param(
            JOINED_BASE.options(defer(ZooEmployee.name)), "name",
            id="base-query-defer-base-column",
        ),
        pytest.param(WITH_POLY, "notes", id="with-polymorphic-deferred-column"),
        pytest.param(WITH_POLY, "budget", id="with-polymorphic-unlisted-subclass-column"),
        pytest.param(SINGLE_BASE, "spec", id="single-base-query-subclass-deferred-column"),
        pytest.param(CARS, "spec", id="single-subclass-query-deferred-column"),
        pytest.param(
            CARS.options(defer(ZooCar.seats)), "seats", id="single-subclass-defer-column"
        ),
        pytest.param(
            SINGLE_BASE.options(defer(ZooVehicle.name)), "name",
            id="single-base-query-defer-base-column",
        ),
    ],
)
def test_inheritance_columns(engine: Engine, stmt, attr: str) -> None:
    check_shape(engine, stmt, attr)


@pytest.mark.parametrize(
    ("stmt", "attr", "ordered"),
    [
        pytest.param(JOINED_BASE, "tasks", False, id="base-query-base-collection"),
        pytest.param(JOINED_BASE, "machines", False, id="base-query-subclass-collection"),
        pytest.param(ENGINEERS, "tasks", False, id="subclass-query-base-collection"),
        pytest.param(ENGINEERS, "machines", False, id="subclass-query-subclass-collection"),
        pytest.param(WITH_POLY, "machines", False, id="with-polymorphic-collection"),
        pytest.param(WITH_POLY, "tasks", False, id="with-polymorphic-base-collection"),
        pytest.param(SINGLE_BASE, "parts", False, id="single-base-query-collection"),
        pytest.param(CARS, "parts", False, id="single-subclass-query-collection"),
    ],
)
def test_inheritance_collections(engine: Engine, stmt, attr: str, ordered: bool) -> None:
    check_shape(engine, stmt, attr, ordered=ordered)


@pytest.mark.parametrize(
    ("stmt", "attr", "key_unloaded"),
    [
        pytest.param(JOINED_BASE, "company", False, id="base-query-base-many-to-one"),
        pytest.param(JOINED_BASE, "office", True, id="base-query-subclass-many-to-one"),
        pytest.param(MANAGERS, "company", False, id="subclass-query-base-many-to-one"),
        pytest.param(MANAGERS, "office", False, id="subclass-query-subclass-many-to-one"),
        pytest.param(SINGLE_BASE, "owner", False, id="single-base-query-many-to-one"),
        pytest.param(SINGLE_BASE, "garage", True, id="single-base-query-subclass-many-to-one"),
        pytest.param(CARS, "garage", False, id="single-subclass-query-many-to-one"),
    ],
)
def test_inheritance_many_to_one(engine: Engine, stmt, attr: str, key_unloaded: bool) -> None:
    # A many-to-one is loaded by the targets' primary keys: one statement per
    # chunk of distinct targets, none for a NULL foreign key.  Where the
    # base query left the subclass's foreign key unloaded, stock reads it
    # first: one more statement per chunk of instances, for all of them.
    check_shape(
        engine,
        stmt,
        attr,
        queries=lambda run: chunks(targets(run)) + (chunks(run.instances) if key_unloaded else 0),
    )


def test_base_query_batch_mixes_subclasses(engine: Engine) -> None:
    run = check_shape(engine, JOINED_BASE, "bio")
    kinds = {kind for kind, _ in run.values}
    assert kinds == {"ZooEmployee", "ZooEngineer", "ZooManager"}
    assert run.instances == len(run.values)


def test_single_base_query_batch_mixes_subclasses(engine: Engine) -> None:
    run = check_shape(engine, SINGLE_BASE, "parts", ordered=False)
    assert {kind for kind, _ in run.values} == {"ZooVehicle", "ZooCar", "ZooTruck"}


def test_selectin_polymorphic_keeps_working(engine: Engine) -> None:
    stmt = JOINED_BASE.options(selectin_polymorphic(ZooEmployee, [ZooEngineer, ZooManager]))
    check_shape(engine, stmt, "notes")
    check_shape(engine, stmt, "tasks", ordered=False)


def test_single_table_subclass_column_left_unloaded_by_base_query(engine: Engine) -> None:
    # A base query leaves single-table subclass columns unloaded (stock
    # loads them one instance at a time): one batch for all the trucks.
    run = check_shape(engine, SINGLE_BASE, "payload")
    assert {kind for kind, _ in run.values} == {"ZooTruck"}
    assert ZooTruck.__table__ is ZooVehicle.__table__


@pytest.mark.parametrize(
    ("stmt", "attr"),
    [
        pytest.param(select(ZooTask).order_by(ZooTask.id), "employee", id="many-to-one-to-base"),
        pytest.param(
            select(ZooMachine).order_by(ZooMachine.id), "engineer", id="many-to-one-to-subclass"
        ),
        pytest.param(select(ZooPart).order_by(ZooPart.id), "vehicle", id="single-table-base"),
    ],
)
def test_polymorphic_many_to_one_targets(engine: Engine, stmt, attr: str) -> None:
    # The snapshot names each target's class: the batch must build the
    # right subclass for each row, as a stock load does.
    run = check_shape(engine, stmt, attr, queries=lambda run: chunks(targets(run)))
    assert len({kind for kind, _ in run.values.values()}) > 1 or attr == "engineer"


def test_polymorphic_collection_target(engine: Engine) -> None:
    run = check_shape(engine, select(ZooCompany).order_by(ZooCompany.id), "staff")
    kinds = {kind for staff in run.values.values() for kind, _ in staff}
    assert kinds == {"ZooEmployee", "ZooEngineer", "ZooManager"}
