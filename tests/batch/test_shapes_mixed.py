"""Mixed states in one batch: among the armed peers, some have the
attribute changed in memory, some expired, some already loaded.  The batch
loads exactly the ones that lack it, never overwrites a change, leaves
nothing dirty that was not, and every value equals what stock lazy loading
gives in a fresh session (plus the in-memory changes)."""

from __future__ import annotations

from sqlalchemy import Engine, inspect, select
from sqlalchemy.orm import undefer

from nplus1loader import nplus1loader
from tests import _oracle as oracle
from tests._db import QueryCounter
from tests._shapes import CHUNK, chunks, identity, snapshot, zoo_sessions
from tests.zoo_models import ZooArticle, ZooAuthor, ZooBook

ARTICLES = select(ZooArticle).order_by(ZooArticle.id)
AUTHORS = select(ZooAuthor).order_by(ZooAuthor.id)
BOOKS = select(ZooBook).order_by(ZooBook.id)
ARMED = nplus1loader("*", chunk_size=CHUNK)
COLUMNS = ("title", "body", "views", "likes", "shares")


def _stock_articles(engine: Engine) -> dict:
    return oracle.stock(
        zoo_sessions(engine),
        ARTICLES,
        lambda articles: {identity(a): {c: getattr(a, c) for c in COLUMNS} for a in articles},
    ).values


def test_mixed_column_states(engine: Engine) -> None:
    expected = _stock_articles(engine)
    with zoo_sessions(engine)(autoflush=False) as session:  # changes stay in memory
        articles = session.scalars(ARTICLES.options(ARMED)).all()
        changed, group_changed, expired, loaded, body_expired = articles[:5]
        session.scalars(
            select(ZooArticle).where(ZooArticle.id == loaded.id).options(undefer(ZooArticle.body))
        ).all()
        assert "body" in loaded.__dict__
        session.expire(expired, ["title"])
        session.expire(body_expired, ["body"])  # still armed: a peer
        # Last, as any query would autoflush them.
        changed.body = "changed in memory"
        group_changed.views = -1  # one column of the deferred group
        lacking = [a for a in articles if "body" not in a.__dict__]
        assert changed not in lacking and loaded not in lacking and body_expired in lacking

        with QueryCounter(engine) as q:
            assert articles[-1].body is not None
        q.assert_count(chunks(len(lacking)))
        with QueryCounter(engine) as q:
            assert articles[-1].likes is not None  # the group: every article lacks likes
        q.assert_count(chunks(len(articles)))

        with QueryCounter(engine) as q:
            got = {
                identity(a): {c: getattr(a, c) for c in COLUMNS if c != "title"}
                for a in articles
            }
        q.assert_count(0)
        # The changes are still changes; what the batch loaded is not.
        assert set(session.dirty) == {changed, group_changed}
        assert inspect(changed).attrs.body.history.added == ["changed in memory"]
        assert inspect(group_changed).attrs.views.history.added == [-1]
        assert not inspect(articles[-1]).attrs.body.history.has_changes()
        assert "title" not in expired.__dict__
        assert expired.title == expected[identity(expired)]["title"]

    for values in expected.values():
        values.pop("title")
    expected[identity(changed)]["body"] = "changed in memory"
    expected[identity(group_changed)]["views"] = -1
    assert got == expected


def test_mixed_relationship_states(engine: Engine) -> None:
    with zoo_sessions(engine)() as session:
        stock = {identity(a): snapshot(a.books) for a in session.scalars(AUTHORS)}
        spare = session.scalars(select(ZooBook).order_by(ZooBook.id.desc())).first()
        spare_id, spare_author = spare.id, identity(spare.author)

    with zoo_sessions(engine)(autoflush=False) as session:  # changes stay in memory
        authors = session.scalars(AUTHORS.options(ARMED)).all()
        replaced, pending_added, loaded = authors[:3]
        spare = session.get(ZooBook, spare_id)
        new_book = ZooBook(title="new", isbn="isbn-new", year=2024, hardcover=False)
        # A backref on an unloaded collection queues a pending mutation
        # instead of loading the collection.
        new_book.author = pending_added
        session.add(new_book)
        assert "books" not in pending_added.__dict__
        session.expire(loaded, ["books"])  # stays armed
        with QueryCounter(engine) as q:
            loaded_books = list(loaded.books)
        # That one touch loaded every author, pending changes merged in.
        assert [a for a in authors if "books" not in a.__dict__] == []
        q.assert_count(chunks(len(authors)))
        # Replacing a loaded collection is a change in memory.
        replaced.books = [spare]
        with QueryCounter(engine) as q:
            got = {identity(a): snapshot(a.books) for a in authors}
        q.assert_count(0)
        assert new_book.id is None  # the batch did not autoflush
        assert loaded.books == loaded_books

    expected = dict(stock)
    expected[identity(replaced)] = [identity(spare)]
    # The backref took the book out of its former author's loaded collection.
    expected[spare_author] = [b for b in stock[spare_author] if b != identity(spare)]
    expected[identity(pending_added)] = stock[identity(pending_added)] + [("ZooBook", (None,))]
    assert got == expected


def test_many_to_one_follows_foreign_key_changed_in_memory(engine: Engine) -> None:
    with zoo_sessions(engine)() as session:
        stock = {identity(b): snapshot(b.author) for b in session.scalars(BOOKS)}
        author_ids = sorted(set(session.scalars(select(ZooAuthor.id))))

    with zoo_sessions(engine)(autoflush=False) as session:  # changes stay in memory
        books = session.scalars(BOOKS.options(ARMED)).all()
        moved = books[1]
        new_author = next(i for i in author_ids if i != moved.author_id)
        moved.author_id = new_author  # the column changed, the relationship not loaded
        with QueryCounter(engine) as q:
            assert books[0].author is not None
        distinct = {b.author_id for b in books}
        q.assert_count(chunks(len(distinct)))
        got = {identity(b): snapshot(b.author) for b in books}

    expected = dict(stock)
    expected[identity(moved)] = ("ZooAuthor", (new_author,))
    assert got == expected
