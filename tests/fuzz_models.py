"""The shape zoo of the differential fuzzer (issue 9), built twice.

The fuzzer runs every generated program side by side in two sessions: one
with nplus1loader options, one with stock lazy loading (the oracle).  Both
sessions modify, flush, delete and commit, so each needs its own copy of the
data: :func:`build_zoo` declares the same classes on a fresh
``DeclarativeBase`` with its own table prefix, and the fuzzer builds one
copy for each session (``fz_n_*`` and ``fz_o_*``).  Class names are the same
in both copies, so values compare by ``(class name, primary key)``.

The zoo is small but covers the shapes that make batch loading hard:

* ``Author``: a self-referential many-to-one (``mentor``) and its
  collection (``mentees``), a deferred group (``bio``, ``motto``) and a
  deferred column outside any group (``email``);
* ``Post``: an ordered collection on its author (``order_by`` descending, so
  key order is not the answer), a many-to-many ordered by a column that is
  not the key (``tags``), a keyed collection (``notes``,
  ``attribute_keyed_dict``);
* ``Note``: a composite primary key; ``Review`` points at it with a
  composite foreign key (a many-to-one SQLAlchemy resolves with ``get``);
* ``Animal``, ``Dog``, ``Cat``: joined-table inheritance, an unordered
  polymorphic collection on ``Author`` (``pets``), a deferred subclass
  column and a relationship declared on a subclass (``Dog.friend``).

Every primary key is given explicitly (``autoincrement=False``), so both
copies get the same keys and a generated program can name them in advance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, ForeignKey, ForeignKeyConstraint, MetaData, String, Table
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    attribute_keyed_dict,
    deferred,
    mapped_column,
    relationship,
)

LANGS = ("de", "en", "fr")
"""The keys of ``Post.notes`` (``Note.lang``)."""


@dataclass(frozen=True)
class Zoo:
    """One copy of the zoo: its metadata and its mapped classes by name."""

    prefix: str
    base: type[DeclarativeBase]
    metadata: MetaData
    classes: dict[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.classes[name]

    def table(self, name: str) -> Table:
        return self.metadata.tables[self.prefix + name]


def build_zoo(prefix: str) -> Zoo:
    """Declare the zoo on a new base whose tables are named ``prefix + name``."""

    class Base(DeclarativeBase):
        pass

    post_tag = Table(
        prefix + "post_tag",
        Base.metadata,
        Column("post_id", ForeignKey(f"{prefix}post.id"), primary_key=True),
        Column("tag_id", ForeignKey(f"{prefix}tag.id"), primary_key=True),
    )

    class Author(Base):
        __tablename__ = prefix + "author"

        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(String(40))
        bio: Mapped[str | None] = deferred(mapped_column(String(80)), group="profile")
        motto: Mapped[str | None] = deferred(mapped_column(String(80)), group="profile")
        email: Mapped[str | None] = deferred(mapped_column(String(80)))
        mentor_id: Mapped[int | None] = mapped_column(ForeignKey(f"{prefix}author.id"))
        mentor: Mapped[Author | None] = relationship(remote_side=[id], back_populates="mentees")
        mentees: Mapped[list[Author]] = relationship(
            back_populates="mentor", order_by=lambda: Author.id
        )
        posts: Mapped[list[Post]] = relationship(
            back_populates="author",
            cascade="all, delete-orphan",
            order_by=lambda: Post.id.desc(),
        )
        pets: Mapped[list[Animal]] = relationship(back_populates="owner")

    class Post(Base):
        __tablename__ = prefix + "post"

        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        author_id: Mapped[int | None] = mapped_column(ForeignKey(f"{prefix}author.id"))
        title: Mapped[str] = mapped_column(String(40))
        body: Mapped[str | None] = deferred(mapped_column(String(80)))
        author: Mapped[Author | None] = relationship(back_populates="posts")
        tags: Mapped[list[Tag]] = relationship(
            secondary=post_tag, back_populates="posts", order_by=lambda: Tag.label
        )
        notes: Mapped[dict[str, Note]] = relationship(
            collection_class=attribute_keyed_dict("lang"),
            back_populates="post",
            cascade="all, delete-orphan",
        )

    class Tag(Base):
        __tablename__ = prefix + "tag"

        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        label: Mapped[str] = mapped_column(String(40))
        posts: Mapped[list[Post]] = relationship(secondary=post_tag, back_populates="tags")

    class Note(Base):
        __tablename__ = prefix + "note"

        post_id: Mapped[int] = mapped_column(ForeignKey(f"{prefix}post.id"), primary_key=True)
        lang: Mapped[str] = mapped_column(String(5), primary_key=True)
        text: Mapped[str] = mapped_column(String(40))
        summary: Mapped[str | None] = deferred(mapped_column(String(80)))
        post: Mapped[Post] = relationship(back_populates="notes")
        reviews: Mapped[list[Review]] = relationship(
            back_populates="note", order_by=lambda: Review.id
        )

    class Review(Base):
        __tablename__ = prefix + "review"

        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        note_post_id: Mapped[int | None] = mapped_column()
        note_lang: Mapped[str | None] = mapped_column(String(5))
        stars: Mapped[int] = mapped_column()
        note: Mapped[Note | None] = relationship(back_populates="reviews")

        __table_args__ = (
            ForeignKeyConstraint(
                ["note_post_id", "note_lang"], [f"{prefix}note.post_id", f"{prefix}note.lang"]
            ),
        )

    class Animal(Base):
        __tablename__ = prefix + "animal"

        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        kind: Mapped[str] = mapped_column(String(10))
        name: Mapped[str] = mapped_column(String(40))
        owner_id: Mapped[int | None] = mapped_column(ForeignKey(f"{prefix}author.id"))
        owner: Mapped[Author | None] = relationship(back_populates="pets")

        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "animal"}

    class Cat(Animal):
        __tablename__ = prefix + "cat"

        id: Mapped[int] = mapped_column(ForeignKey(f"{prefix}animal.id"), primary_key=True)
        lives: Mapped[int] = mapped_column()

        __mapper_args__ = {"polymorphic_identity": "cat"}

    class Dog(Animal):
        __tablename__ = prefix + "dog"

        id: Mapped[int] = mapped_column(ForeignKey(f"{prefix}animal.id"), primary_key=True)
        bark: Mapped[str] = mapped_column(String(40))
        pedigree: Mapped[str | None] = deferred(mapped_column(String(80)))
        friend_id: Mapped[int | None] = mapped_column(ForeignKey(f"{prefix}cat.id"))
        friend: Mapped[Cat | None] = relationship(foreign_keys=[friend_id])

        __mapper_args__ = {"polymorphic_identity": "dog"}

    classes = {cls.__name__: cls for cls in (Author, Post, Tag, Note, Review, Animal, Cat, Dog)}
    return Zoo(prefix, Base, Base.metadata, classes)


NPLUS1_ZOO = build_zoo("fz_n_")
"""The copy the nplus1loader session works on."""

ORACLE_ZOO = build_zoo("fz_o_")
"""The copy the stock (oracle) session works on."""

DELETE_ORDER = ("post_tag", "review", "note", "post", "tag", "dog", "cat", "animal", "author")
"""Tables in an order that deleting all rows respects the foreign keys
(after ``author.mentor_id`` is set to NULL: a self-reference)."""
