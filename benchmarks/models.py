"""The benchmark schema: its own metadata and ``bench_`` tables, so it never
collides with the test suite's tables in the shared databases.

Every relationship is a plain ``lazy="select"`` one, as in most
applications: what a query leaves unloaded is what the contenders differ on.
Relationships have no ``order_by``: the checksums are order-insensitive.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Integer, String, Table, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


parent_tag = Table(
    "bench_parent_tag",
    Base.metadata,
    Column("parent_id", ForeignKey("bench_parent.id"), primary_key=True),
    Column("tag_id", ForeignKey("bench_tag.id"), primary_key=True, index=True),
)


class Owner(Base):
    """Target of the many-to-one: one distinct owner per parent, the worst
    case for stock lazy loading (no identity-map hits)."""

    __tablename__ = "bench_owner"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))


class Tag(Base):
    """Target of the many-to-many: a fixed pool shared by all parents."""

    __tablename__ = "bench_tag"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))


class GrandChild(Base):
    __tablename__ = "bench_grandchild"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    child_id: Mapped[int] = mapped_column(ForeignKey("bench_child.id"), index=True)
    name: Mapped[str] = mapped_column(String(50))


class Child(Base):
    __tablename__ = "bench_child"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    parent_id: Mapped[int] = mapped_column(ForeignKey("bench_parent.id"), index=True)
    name: Mapped[str] = mapped_column(String(50))
    grandchildren: Mapped[list[GrandChild]] = relationship()


class Parent(Base):
    """The rows every scenario starts from (N of them)."""

    __tablename__ = "bench_parent"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    bio: Mapped[str] = mapped_column(Text, deferred=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("bench_owner.id"), index=True)
    owner: Mapped[Owner] = relationship()
    children: Mapped[list[Child]] = relationship()
    tags: Mapped[list[Tag]] = relationship(secondary=parent_tag)


class Filler(Base):
    """The unrelated rows of the long-session scenario (``paging``): armed
    by their query (a deferred column and a many-to-one to arm), never
    touched.  Mapped here, not in ``paging``, so that every entry point's
    ``drop_all`` knows the table (its foreign key blocks dropping
    ``bench_owner`` otherwise)."""

    __tablename__ = "bench_filler"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    note: Mapped[str] = mapped_column(Text, deferred=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("bench_owner.id"))
    owner: Mapped[Owner] = relationship()
