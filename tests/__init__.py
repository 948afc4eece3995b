"""The test suite; its folders mirror the package's layers, top to bottom.

``options/``  the public options, their cache keys and state, the public
              surface, ``relationship(lazy="nplus1loader")``
``session/``  the session switch (``enable()``) and ``AsyncSession``
``touch/``    the one touch path: which peers a touch batches, raise
              mode, expired attributes, errors on touch
``peers/``    how a batch finds its peers
``batch/``    the batch loader: relationships, columns, the bulk API,
              statement shape, and the mapping-shape zoo (``test_shapes_*``)
``report/``   logging, stats, modes and N+1 patterns
``sqla/``     the SQLAlchemy internals the boundary module relies on
``parity/``   agreement with stock SQLAlchemy: stock parity, differential
              fuzz, documented integrations, safety, faults, memory, threads
``plugin/``   the pytest plugin and ``nplus1loader.testing``
``project/``  the test infrastructure itself
``typing/``   the README's code blocks under the type checkers
``examples/`` the example applications

Shared helpers stay at this level so every folder imports them alike:
``conftest.py`` (fixtures), ``_db.py`` (databases, statement counting),
``_oracle.py`` (what stock SQLAlchemy returns in a fresh session), the
model modules: ``zoo_models`` (every mapping shape, with the ``_shapes``
machinery), ``core_models`` (the core contract's blog schema),
``ergo_models`` (the session switch, modes, stats), ``fuzz_models`` (the
differential fuzzer's twin copies).
"""
