"""Key shapes: composite primary keys and composite foreign keys (both
directions), attribute names that differ from column names, string and UUID
keys, nullable foreign keys (None without a query), and the default chunk
size of 500 on a composite key.  Each check compares with stock lazy
loading."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select

from nplus1loader import nplus1loader
from tests._shapes import check_shape, chunks, targets, zoo_sessions
from tests.zoo_models import (
    BULK,
    ZooAccount,
    ZooBulk,
    ZooBulkItem,
    ZooDevice,
    ZooLogin,
    ZooPrice,
    ZooReading,
    ZooRegion,
    ZooSku,
    ZooStore,
)

REGIONS = select(ZooRegion).order_by(ZooRegion.country, ZooRegion.code)
STORES = select(ZooStore).order_by(ZooStore.id)
ACCOUNTS = select(ZooAccount).order_by(ZooAccount.id)
LOGINS = select(ZooLogin).order_by(ZooLogin.id)
SKUS = select(ZooSku).order_by(ZooSku.code)
PRICES = select(ZooPrice).order_by(ZooPrice.id)
DEVICES = select(ZooDevice).order_by(ZooDevice.name)
READINGS = select(ZooReading).order_by(ZooReading.id)


@pytest.mark.parametrize(
    ("stmt", "attr"),
    [
        pytest.param(REGIONS, "description", id="composite-pk-deferred-column"),
        pytest.param(ACCOUNTS, "email", id="renamed-pk-renamed-deferred-column"),
        pytest.param(SKUS, "details", id="string-pk-deferred-column"),
        pytest.param(DEVICES, "firmware", id="uuid-pk-deferred-column"),
    ],
)
def test_key_columns(engine: Engine, stmt, attr: str) -> None:
    check_shape(engine, stmt, attr)


@pytest.mark.parametrize(
    ("stmt", "attr"),
    [
        pytest.param(REGIONS, "stores", id="composite-pk-composite-fk-one-to-many"),
        pytest.param(ACCOUNTS, "logins", id="renamed-pk-renamed-fk-one-to-many"),
        pytest.param(SKUS, "prices", id="string-pk-one-to-many"),
        pytest.param(DEVICES, "readings", id="uuid-pk-one-to-many"),
    ],
)
def test_key_collections(engine: Engine, stmt, attr: str) -> None:
    check_shape(engine, stmt, attr, ordered=False)


@pytest.mark.parametrize(
    ("stmt", "attr"),
    [
        pytest.param(STORES, "region", id="composite-fk-many-to-one-nullable"),
        pytest.param(LOGINS, "account", id="renamed-fk-many-to-one"),
        pytest.param(READINGS, "device", id="uuid-fk-many-to-one-nullable"),
    ],
)
def test_key_many_to_one(engine: Engine, stmt, attr: str) -> None:
    # Loaded by the targets' primary keys: one statement per chunk of
    # distinct targets; a NULL foreign key is None without a query.
    run = check_shape(engine, stmt, attr, queries=lambda run: chunks(targets(run)))
    assert targets(run) < run.instances  # peers share targets: the data can tell


def test_renamed_self_referential_many_to_one(engine: Engine) -> None:
    # The sponsors are accounts of the same result: all in the identity map.
    run = check_shape(engine, ACCOUNTS, "sponsor", queries=0)
    assert targets(run) > 1


@pytest.mark.parametrize(
    ("stmt", "attr"),
    [
        pytest.param(STORES.where(ZooStore.region_code.is_(None)), "region", id="composite"),
        pytest.param(READINGS.where(ZooReading.device_id.is_(None)), "device", id="uuid"),
        pytest.param(ACCOUNTS.where(ZooAccount.sponsor_id.is_(None)), "sponsor", id="renamed"),
    ],
)
def test_null_foreign_keys_cost_no_query(engine: Engine, stmt, attr: str) -> None:
    run = check_shape_all_none(engine, stmt, attr)
    assert run.instances > 1


def check_shape_all_none(engine: Engine, stmt, attr: str):
    from tests._shapes import batch_run, stock_values

    run = batch_run(engine, stmt, attr)
    assert run.queries == 0, run.statements
    assert run.values == stock_values(engine, stmt, attr)
    assert set(run.values.values()) == {None}
    return run


@pytest.mark.parametrize(
    ("stmt", "attr", "loaded"),
    [
        pytest.param(STORES, "region", REGIONS, id="composite"),
        pytest.param(READINGS, "device", DEVICES, id="uuid"),
    ],
)
def test_many_to_one_targets_in_session_cost_no_query(engine: Engine, stmt, attr, loaded) -> None:
    def load_targets(session, instances) -> None:
        # The identity map is weak: keep the targets alive for the check.
        session.info["keep"] = session.scalars(loaded).all()

    check_shape(engine, stmt, attr, queries=0, prepare=load_targets)


def _price_keys(engine: Engine) -> tuple[list[str], list[str]]:
    """The prices' foreign keys, and those spelt unlike their SKU's key."""
    with zoo_sessions(engine)() as session:
        codes = set(session.scalars(select(ZooSku.code)))
        keys = list(session.scalars(select(ZooPrice.sku_code)))
    return keys, [key for key in keys if key not in codes]


@pytest.mark.parametrize("in_session", [False, True], ids=["targets-not-loaded", "targets-loaded"])
def test_string_fk_many_to_one(engine: Engine, db_name: str, in_session: bool) -> None:
    """On MySQL a price points at its SKU through a key spelt in another
    case: the database matches it, so must the batch.  Such a key is not
    found by primary key (nor in the identity map); the parents it leaves
    undecided are loaded through the join: one more statement per chunk."""
    keys, spelt_otherwise = _price_keys(engine)
    assert bool(spelt_otherwise) == (db_name == "mysql")

    def load_targets(session, instances) -> None:
        session.info["keep"] = session.scalars(SKUS).all()

    def expected(run) -> int:
        by_key = len(set(spelt_otherwise)) if in_session else len(set(keys))
        return chunks(by_key) + chunks(len(spelt_otherwise))

    run = check_shape(
        engine, PRICES, "sku", queries=expected, prepare=load_targets if in_session else None
    )
    assert targets(run) < run.instances


@pytest.mark.parametrize(
    ("stmt", "attr", "ordered"),
    [
        pytest.param(select(ZooBulk), "payload", True, id="column"),
        pytest.param(select(ZooBulk), "items", False, id="one-to-many"),
    ],
)
def test_default_chunk_of_500_with_composite_key(engine: Engine, stmt, attr, ordered) -> None:
    run = check_shape(
        engine, stmt, attr, ordered=ordered, options=[nplus1loader("*")],
        queries=lambda run: chunks(run.instances, 500),
    )
    assert run.instances == BULK
    assert run.queries == 3


def test_default_chunk_of_500_many_to_one_composite_key(engine: Engine) -> None:
    run = check_shape(
        engine, select(ZooBulkItem), "bulk", options=[nplus1loader("*")],
        queries=lambda run: chunks(targets(run), 500),
    )
    assert targets(run) > 500
