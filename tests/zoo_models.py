"""A zoo of mapping shapes for the batch loader (issue 3).

Users' models are not textbook models: inheritance, composite and renamed
keys, keyed collections, deferred groups, SQL expressions.  Every shape the
``test_shapes_*`` modules check is declared here, on its own
:class:`ZooBase` with tables prefixed ``zoo_`` (all test modules share one
database per backend), together with the deterministic data they run on.

The data is built so that a wrong batch shows: collections of different
sizes (some empty), ``order_by`` orders that differ from primary-key order,
rows that custom join conditions and loader criteria must leave out,
``NULL`` foreign keys, and keys that collide once a column is renamed.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import (
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    String,
    Table,
    Uuid,
    and_,
    func,
    insert,
    select,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    DynamicMapped,
    Mapped,
    Session,
    WriteOnlyMapped,
    aliased,
    attribute_keyed_dict,
    column_property,
    mapped_column,
    query_expression,
    relationship,
)


class ZooBase(DeclarativeBase):
    pass


# ------------------------------------------------------------ inheritance


class ZooCompany(ZooBase):
    __tablename__ = "zoo_company"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    # A polymorphic target: one batch returns employees, engineers, managers.
    staff: Mapped[list[ZooEmployee]] = relationship(viewonly=True, order_by="ZooEmployee.id")


class ZooEmployee(ZooBase):
    """Joined-table inheritance base; ``Engineer`` and ``Manager`` below."""

    __tablename__ = "zoo_employee"

    id: Mapped[int] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(50))
    bio: Mapped[str | None] = mapped_column(String(200), deferred=True)
    company_id: Mapped[int | None] = mapped_column(ForeignKey("zoo_company.id"))
    company: Mapped[ZooCompany | None] = relationship()
    tasks: Mapped[list[ZooTask]] = relationship(back_populates="employee")

    __mapper_args__ = {"polymorphic_on": "type", "polymorphic_identity": "employee"}


class ZooEngineer(ZooEmployee):
    __tablename__ = "zoo_engineer"

    id: Mapped[int] = mapped_column(ForeignKey("zoo_employee.id"), primary_key=True)
    language: Mapped[str] = mapped_column(String(30))
    level: Mapped[int] = mapped_column()
    notes: Mapped[str | None] = mapped_column(String(200), deferred=True)
    machines: Mapped[list[ZooMachine]] = relationship(back_populates="engineer")

    __mapper_args__ = {"polymorphic_identity": "engineer"}


class ZooManager(ZooEmployee):
    __tablename__ = "zoo_manager"

    id: Mapped[int] = mapped_column(ForeignKey("zoo_employee.id"), primary_key=True)
    budget: Mapped[int] = mapped_column()
    office_id: Mapped[int | None] = mapped_column(ForeignKey("zoo_company.id"))
    office: Mapped[ZooCompany | None] = relationship()

    __mapper_args__ = {"polymorphic_identity": "manager"}


class ZooTask(ZooBase):
    __tablename__ = "zoo_task"

    id: Mapped[int] = mapped_column(primary_key=True)
    employee_id: Mapped[int] = mapped_column(ForeignKey("zoo_employee.id"))
    title: Mapped[str] = mapped_column(String(50))
    employee: Mapped[ZooEmployee] = relationship(back_populates="tasks")


class ZooMachine(ZooBase):
    __tablename__ = "zoo_machine"

    id: Mapped[int] = mapped_column(primary_key=True)
    engineer_id: Mapped[int] = mapped_column(ForeignKey("zoo_engineer.id"))
    label: Mapped[str] = mapped_column(String(50))
    engineer: Mapped[ZooEngineer] = relationship(back_populates="machines")


class ZooVehicle(ZooBase):
    """Single-table inheritance base; ``Car`` and ``Truck`` below."""

    __tablename__ = "zoo_vehicle"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(50))
    notes: Mapped[str] = mapped_column(String(200), deferred=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("zoo_company.id"))
    owner: Mapped[ZooCompany | None] = relationship()
    parts: Mapped[list[ZooPart]] = relationship(back_populates="vehicle")

    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "vehicle"}


class ZooCar(ZooVehicle):
    seats: Mapped[int | None] = mapped_column()
    spec: Mapped[str | None] = mapped_column(String(200), deferred=True)
    garage_id: Mapped[int | None] = mapped_column(ForeignKey("zoo_garage.id"))
    garage: Mapped[ZooGarage | None] = relationship()

    __mapper_args__ = {"polymorphic_identity": "car"}


class ZooTruck(ZooVehicle):
    payload: Mapped[int | None] = mapped_column()

    __mapper_args__ = {"polymorphic_identity": "truck"}


class ZooPart(ZooBase):
    __tablename__ = "zoo_part"

    id: Mapped[int] = mapped_column(primary_key=True)
    vehicle_id: Mapped[int] = mapped_column(ForeignKey("zoo_vehicle.id"))
    label: Mapped[str] = mapped_column(String(50))
    vehicle: Mapped[ZooVehicle] = relationship(back_populates="parts")


class ZooGarage(ZooBase):
    __tablename__ = "zoo_garage"

    id: Mapped[int] = mapped_column(primary_key=True)
    city: Mapped[str] = mapped_column(String(50))


# ------------------------------------------------------------------- keys


class ZooRegion(ZooBase):
    """Composite primary key (string, integer)."""

    __tablename__ = "zoo_region"

    country: Mapped[str] = mapped_column(String(2), primary_key=True)
    code: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    description: Mapped[str | None] = mapped_column(String(200), deferred=True)
    stores: Mapped[list[ZooStore]] = relationship(back_populates="region")


class ZooStore(ZooBase):
    """Composite foreign key to :class:`ZooRegion`, nullable."""

    __tablename__ = "zoo_store"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    region_country: Mapped[str | None] = mapped_column(String(2))
    region_code: Mapped[int | None] = mapped_column()
    region: Mapped[ZooRegion | None] = relationship(back_populates="stores")

    __table_args__ = (
        ForeignKeyConstraint(
            ["region_country", "region_code"], ["zoo_region.country", "zoo_region.code"]
        ),
    )


class ZooAccount(ZooBase):
    """Attribute names that differ from their column names, primary key
    included; the renamed columns are numbered so that confusing attribute
    and column, or key and value, gives wrong values."""

    __tablename__ = "zoo_account"

    id: Mapped[int] = mapped_column("account_pk", primary_key=True)
    login: Mapped[str] = mapped_column("login_name", String(50))
    email: Mapped[str | None] = mapped_column("email_addr", String(100), deferred=True)
    sponsor_id: Mapped[int | None] = mapped_column(
        "sponsor_fk", ForeignKey("zoo_account.account_pk")
    )
    sponsor: Mapped[ZooAccount | None] = relationship(remote_side=[id])
    logins: Mapped[list[ZooLogin]] = relationship(back_populates="account")


class ZooLogin(ZooBase):
    __tablename__ = "zoo_login"

    id: Mapped[int] = mapped_column("login_pk", primary_key=True)
    account_id: Mapped[int] = mapped_column("acct_fk", ForeignKey("zoo_account.account_pk"))
    at: Mapped[str] = mapped_column("happened_at", String(30))
    account: Mapped[ZooAccount] = relationship(back_populates="logins")


class ZooSku(ZooBase):
    """A string primary key."""

    __tablename__ = "zoo_sku"

    code: Mapped[str] = mapped_column(String(20), primary_key=True)
    label: Mapped[str] = mapped_column(String(50))
    details: Mapped[str | None] = mapped_column(String(200), deferred=True)
    prices: Mapped[list[ZooPrice]] = relationship(back_populates="sku")


class ZooPrice(ZooBase):
    __tablename__ = "zoo_price"

    id: Mapped[int] = mapped_column(primary_key=True)
    sku_code: Mapped[str] = mapped_column(ForeignKey("zoo_sku.code"))
    amount: Mapped[int] = mapped_column()
    sku: Mapped[ZooSku] = relationship(back_populates="prices")


class ZooDevice(ZooBase):
    """A UUID primary key."""

    __tablename__ = "zoo_device"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    firmware: Mapped[str | None] = mapped_column(String(50), deferred=True)
    readings: Mapped[list[ZooReading]] = relationship(back_populates="device")


class ZooReading(ZooBase):
    __tablename__ = "zoo_reading"

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("zoo_device.id"))
    value: Mapped[int] = mapped_column()
    device: Mapped[ZooDevice | None] = relationship(back_populates="readings")


class ZooBulk(ZooBase):
    """Enough rows (:data:`BULK`) for more than two default chunks of 500,
    with a composite key: 1001 keys x 2 columns in one IN list per chunk."""

    __tablename__ = "zoo_bulk"

    a: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    b: Mapped[str] = mapped_column(String(10), primary_key=True)
    payload: Mapped[str] = mapped_column(String(50), deferred=True)
    items: Mapped[list[ZooBulkItem]] = relationship(back_populates="bulk")


class ZooBulkItem(ZooBase):
    __tablename__ = "zoo_bulk_item"

    id: Mapped[int] = mapped_column(primary_key=True)
    bulk_a: Mapped[int] = mapped_column()
    bulk_b: Mapped[str] = mapped_column(String(10))
    bulk: Mapped[ZooBulk] = relationship(back_populates="items")

    __table_args__ = (
        ForeignKeyConstraint(["bulk_a", "bulk_b"], ["zoo_bulk.a", "zoo_bulk.b"]),
    )


# ---------------------------------------------------------- relationships


zoo_book_tag = Table(
    "zoo_book_tag",
    ZooBase.metadata,
    Column("book_id", ForeignKey("zoo_book.id"), primary_key=True),
    Column("tag_id", ForeignKey("zoo_tag.id"), primary_key=True),
)

zoo_node_link = Table(
    "zoo_node_link",
    ZooBase.metadata,
    Column("source_id", ForeignKey("zoo_node.id"), primary_key=True),
    Column("target_id", ForeignKey("zoo_node.id"), primary_key=True),
)


class ZooAuthor(ZooBase):
    __tablename__ = "zoo_author"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    # Title order is not insertion order: a batch that ignores order_by shows.
    books: Mapped[list[ZooBook]] = relationship(
        back_populates="author", order_by="ZooBook.title.desc()"
    )
    book_set: Mapped[set[ZooBook]] = relationship(collection_class=set, overlaps="books,author")
    books_by_isbn: Mapped[dict[str, ZooBook]] = relationship(
        collection_class=attribute_keyed_dict("isbn"), overlaps="books,book_set,author"
    )
    modern_books: Mapped[list[ZooBook]] = relationship(
        primaryjoin="and_(ZooAuthor.id == ZooBook.author_id, ZooBook.year >= 2000)",
        viewonly=True,
        order_by="ZooBook.id",
    )
    hardcovers: Mapped[list[ZooBook]] = relationship(
        primaryjoin="and_(ZooAuthor.id == ZooBook.author_id, ZooBook.hardcover == True)",
        overlaps="books,book_set,books_by_isbn,author",
        order_by="ZooBook.id",
    )
    # An extra condition on the parent's own column.
    books_unless_3: Mapped[list[ZooBook]] = relationship(
        primaryjoin="and_(ZooAuthor.id == ZooBook.author_id, ZooAuthor.name != 'author 3')",
        viewonly=True,
        order_by="ZooBook.id",
    )
    all_books_view: Mapped[list[ZooBook]] = relationship(
        viewonly=True, order_by=lambda: (ZooBook.year, ZooBook.id)
    )
    books_dynamic: DynamicMapped[ZooBook] = relationship(viewonly=True, order_by="ZooBook.id")
    books_write_only: WriteOnlyMapped[ZooBook] = relationship(
        overlaps="books,book_set,books_by_isbn,hardcovers,author"
    )


class ZooBook(ZooBase):
    __tablename__ = "zoo_book"

    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("zoo_author.id"))
    title: Mapped[str] = mapped_column(String(50))
    isbn: Mapped[str] = mapped_column(String(20), unique=True)
    year: Mapped[int] = mapped_column()
    hardcover: Mapped[bool] = mapped_column()
    author: Mapped[ZooAuthor] = relationship(back_populates="books")
    detail: Mapped[ZooBookDetail | None] = relationship(back_populates="book", uselist=False)
    tags: Mapped[list[ZooTag]] = relationship(
        secondary=zoo_book_tag, back_populates="books", order_by="ZooTag.id"
    )
    reviews: Mapped[list[ZooReview]] = relationship(back_populates="book")
    same_year: Mapped[list[ZooBook]] = relationship(
        primaryjoin="foreign(ZooBook.year) == remote(ZooBook.year)",
        viewonly=True,
        uselist=True,
        order_by="ZooBook.id",
    )
    active_tags: Mapped[list[ZooTag]] = relationship(
        secondary=zoo_book_tag,
        secondaryjoin="and_(ZooTag.id == zoo_book_tag.c.tag_id, ZooTag.active == True)",
        viewonly=True,
    )


class ZooReview(ZooBase):
    """Joined to its book through a unique column that is not the key."""

    __tablename__ = "zoo_review"

    id: Mapped[int] = mapped_column(primary_key=True)
    book_isbn: Mapped[str | None] = mapped_column(ForeignKey("zoo_book.isbn"))
    stars: Mapped[int] = mapped_column()
    book: Mapped[ZooBook | None] = relationship(back_populates="reviews")


class ZooBookDetail(ZooBase):
    """One-to-one (``uselist=False``); some books have none."""

    __tablename__ = "zoo_book_detail"

    id: Mapped[int] = mapped_column(primary_key=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("zoo_book.id"), unique=True)
    pages: Mapped[int] = mapped_column()
    book: Mapped[ZooBook] = relationship(back_populates="detail")


class ZooTag(ZooBase):
    __tablename__ = "zoo_tag"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    active: Mapped[bool] = mapped_column()
    books: Mapped[list[ZooBook]] = relationship(
        secondary=zoo_book_tag, back_populates="tags", order_by="ZooBook.id"
    )


class ZooNode(ZooBase):
    """Self-referential: one-to-many, many-to-one and many-to-many."""

    __tablename__ = "zoo_node"

    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("zoo_node.id"))
    name: Mapped[str] = mapped_column(String(30))
    children: Mapped[list[ZooNode]] = relationship(
        back_populates="parent", order_by="ZooNode.name"
    )
    parent: Mapped[ZooNode | None] = relationship(back_populates="children", remote_side=[id])
    links: Mapped[list[ZooNode]] = relationship(
        secondary=zoo_node_link,
        primaryjoin=id == zoo_node_link.c.source_id,
        secondaryjoin=id == zoo_node_link.c.target_id,
    )


class ZooStudent(ZooBase):
    """The association-object pattern: Student -> Enrollment -> Course."""

    __tablename__ = "zoo_student"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    enrollments: Mapped[list[ZooEnrollment]] = relationship(back_populates="student")
    courses: Mapped[list[ZooCourse]] = relationship(
        secondary="zoo_enrollment", viewonly=True, order_by="ZooCourse.title"
    )


class ZooCourse(ZooBase):
    __tablename__ = "zoo_course"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(30))
    enrollments: Mapped[list[ZooEnrollment]] = relationship(back_populates="course")


class ZooEnrollment(ZooBase):
    __tablename__ = "zoo_enrollment"

    student_id: Mapped[int] = mapped_column(ForeignKey("zoo_student.id"), primary_key=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("zoo_course.id"), primary_key=True)
    grade: Mapped[str] = mapped_column(String(2))
    note: Mapped[str | None] = mapped_column(String(100), deferred=True)
    student: Mapped[ZooStudent] = relationship(back_populates="enrollments")
    course: Mapped[ZooCourse] = relationship(back_populates="enrollments")


class ZooPublisher(ZooBase):
    """Relationships whose model default is an eager strategy."""

    __tablename__ = "zoo_publisher"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    home_id: Mapped[int | None] = mapped_column(ForeignKey("zoo_company.id"))
    home: Mapped[ZooCompany | None] = relationship(lazy="joined")
    imprints: Mapped[list[ZooImprint]] = relationship(lazy="selectin", order_by="ZooImprint.id")
    catalogues: Mapped[list[ZooCatalogue]] = relationship(order_by="ZooCatalogue.id")


class ZooImprint(ZooBase):
    __tablename__ = "zoo_imprint"

    id: Mapped[int] = mapped_column(primary_key=True)
    publisher_id: Mapped[int] = mapped_column(ForeignKey("zoo_publisher.id"))
    name: Mapped[str] = mapped_column(String(50))


class ZooCatalogue(ZooBase):
    """Loaded lazily itself, with an eager collection of its own: a batch of
    catalogues must still load ``entries`` the way the model asks."""

    __tablename__ = "zoo_catalogue"

    id: Mapped[int] = mapped_column(primary_key=True)
    publisher_id: Mapped[int] = mapped_column(ForeignKey("zoo_publisher.id"))
    year: Mapped[int] = mapped_column()
    entries: Mapped[list[ZooEntry]] = relationship(lazy="joined", order_by="ZooEntry.id")
    owner: Mapped[ZooPublisher] = relationship(lazy="selectin", overlaps="catalogues")


class ZooEntry(ZooBase):
    __tablename__ = "zoo_entry"

    id: Mapped[int] = mapped_column(primary_key=True)
    catalogue_id: Mapped[int] = mapped_column(ForeignKey("zoo_catalogue.id"))
    title: Mapped[str] = mapped_column(String(50))


# ---------------------------------------------------------------- columns


class ZooComment(ZooBase):
    __tablename__ = "zoo_comment"

    id: Mapped[int] = mapped_column(primary_key=True)
    article_id: Mapped[int] = mapped_column(ForeignKey("zoo_article.id"))
    text: Mapped[str] = mapped_column(String(100))
    approved: Mapped[bool] = mapped_column()


class ZooArticle(ZooBase):
    __tablename__ = "zoo_article"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50))
    subtitle: Mapped[str | None] = mapped_column(String(100))
    body: Mapped[str | None] = mapped_column(String(500), deferred=True)
    views: Mapped[int] = mapped_column(deferred=True, deferred_group="stats")
    likes: Mapped[int] = mapped_column(deferred=True, deferred_group="stats")
    shares: Mapped[int] = mapped_column(deferred=True, deferred_group="stats")
    title_upper: Mapped[str] = column_property(func.upper(title), deferred=True)
    score: Mapped[int | None] = query_expression()
    comments: Mapped[list[ZooComment]] = relationship(order_by="ZooComment.id")


# A correlated subquery needs both tables; declared after them.
ZooArticle.comment_count = column_property(
    select(func.count(ZooComment.id))
    .where(ZooComment.article_id == ZooArticle.id)
    .correlate_except(ZooComment)
    .scalar_subquery(),
    deferred=True,
)


# ------------------------------------------- joins that are not a foreign key
# (from the stock-parity suite: lazy clauses stock SQLAlchemy builds from
# more than one foreign key, so a batch must reuse stock's own clause)

zoo_item_keyword = Table(
    "zoo_item_keyword",
    ZooBase.metadata,
    Column("item_id", ForeignKey("zoo_item.id")),
    Column("keyword_id", ForeignKey("zoo_keyword.id")),
)


class ZooKeyword(ZooBase):
    __tablename__ = "zoo_keyword"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(20))


class ZooItem(ZooBase):
    """A many-to-many ordered by a column of the ``secondary`` table."""

    __tablename__ = "zoo_item"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    keywords: Mapped[list[ZooKeyword]] = relationship(
        secondary=zoo_item_keyword, order_by=zoo_item_keyword.c.keyword_id
    )


zoo_t1 = Table(
    "zoo_t1", ZooBase.metadata, Column("id", Integer, primary_key=True, autoincrement=False)
)
zoo_t2 = Table(
    "zoo_t2",
    ZooBase.metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("t1id", ForeignKey("zoo_t1.id")),
)
zoo_t2tot3 = Table(
    "zoo_t2tot3",
    ZooBase.metadata,
    Column("t2id", ForeignKey("zoo_t2.id")),
    Column("t3id", ForeignKey("zoo_t3.id")),
)
zoo_t3 = Table(
    "zoo_t3",
    ZooBase.metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("data", String(20)),
)


class ZooT3(ZooBase):
    __table__ = zoo_t3


class ZooT1(ZooBase):
    """A ``viewonly`` relationship through two further tables."""

    __table__ = zoo_t1
    t3s = relationship(
        ZooT3,
        primaryjoin=and_(
            zoo_t1.c.id == zoo_t2.c.t1id,
            zoo_t2.c.id == zoo_t2tot3.c.t2id,
            zoo_t3.c.id == zoo_t2tot3.c.t3id,
        ),
        viewonly=True,
        foreign_keys=zoo_t3.c.id,
        remote_side=zoo_t2.c.t1id,
    )


class ZooChild(ZooBase):
    __tablename__ = "zoo_child"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    parent_id: Mapped[int] = mapped_column(ForeignKey("zoo_parent.id"))
    is_open: Mapped[int] = mapped_column()


class ZooParent(ZooBase):
    """Relationships to aliased classes: over a filtering subquery
    (``open_children``) and over a window function that keeps each
    parent's first two children (``first_two``)."""

    __tablename__ = "zoo_parent"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)


_open_child = aliased(
    ZooChild, select(ZooChild.__table__).where(ZooChild.is_open == 1).subquery()
)
ZooParent.open_children = relationship(_open_child, viewonly=True)  # type: ignore[attr-defined]
_partition = select(
    ZooChild,
    func.row_number().over(order_by=ZooChild.id, partition_by=ZooChild.parent_id).label("index"),
).alias()
_first_two = aliased(ZooChild, _partition)
ZooParent.first_two = relationship(  # type: ignore[attr-defined]
    _first_two,
    primaryjoin=and_(_first_two.parent_id == ZooParent.id, _partition.c.index < 3),
    viewonly=True,
)


# --------------------------------------------------------- the zoo's data

N = 12
"""Instances per shape: enough for several chunks with ``chunk_size=5``."""

BULK = 1001
"""Rows of :class:`ZooBulk`: three chunks at the default chunk size of 500."""

COUNTRIES = ("fr", "de", "it")
DEVICE_NAMESPACE = uuid.UUID("6f1d3c4e-2b1a-4c1e-9f3a-000000000000")


def device_id(n: int) -> uuid.UUID:
    return uuid.uuid5(DEVICE_NAMESPACE, str(n))


def region_key(n: int) -> tuple[str, int]:
    return (COUNTRIES[n % 3], n // 3)


def populate(session: Session) -> None:
    """Insert the zoo's data: deterministic, with the traps described in the
    module docstring."""
    companies = [ZooCompany(id=i, name=f"company {i}") for i in range(1, 5)]
    session.add_all(companies)
    session.add_all(ZooGarage(id=i, city=f"city {i}") for i in range(1, 4))
    session.flush()

    for i in range(1, N + 1):
        common: dict[str, Any] = {
            "id": i,
            "name": f"employee {i}",
            "bio": f"bio of {i}" if i % 4 else None,
            "company_id": (i % 4) or None,
        }
        if i % 3 == 0:
            session.add(ZooEmployee(**common))
        elif i % 3 == 1:
            session.add(
                ZooEngineer(**common, language=("py", "rust", "c", "go")[i % 4], level=i,
                            notes=f"notes {i}")
            )
        else:
            session.add(ZooManager(**common, budget=1000 * i, office_id=(i % 4) or None))
    session.flush()
    session.add_all(
        ZooTask(id=100 + k, employee_id=1 + (k * 5) % (N - 1), title=f"task {k}") for k in range(20)
    )
    engineers = [i for i in range(1, N + 1) if i % 3 == 1]
    session.add_all(
        ZooMachine(id=200 + k, engineer_id=engineers[k % len(engineers)], label=f"machine {k}")
        for k in range(7)
    )
    for i in range(1, N + 1):
        common = {"id": i, "name": f"vehicle {i}", "notes": f"notes on vehicle {i}",
                  "owner_id": (i % 4) or None}
        if i % 3 == 0:
            session.add(ZooVehicle(**common))
        elif i % 3 == 1:
            session.add(ZooCar(**common, seats=i % 5 + 2, spec=f"spec {i}",
                               garage_id=(i % 4) or None))
        else:
            session.add(ZooTruck(**common, payload=100 * i))
    session.flush()
    session.add_all(
        ZooPart(id=300 + k, vehicle_id=1 + (k * 7) % N, label=f"part {k}") for k in range(25)
    )

    for n in range(N):
        country, code = region_key(n)
        session.add(ZooRegion(country=country, code=code, name=f"region {n}",
                              description=f"about {country}-{code}" if n % 5 else None))
    session.flush()
    for k in range(2 * N):
        key = region_key((k * 5) % N) if k % 6 else (None, None)
        session.add(ZooStore(id=400 + k, name=f"store {k}", region_country=key[0],
                             region_code=key[1]))

    for i in range(1, N + 1):
        # The primary-key column is named account_pk; each login's own key
        # (login_pk) overlaps the account keys, so a mix-up shows.
        session.add(ZooAccount(id=i, login=f"login {i}", email=f"user{i}@example.org",
                               sponsor_id=(i - 1) // 2 or None))
        session.flush()
    session.add_all(
        ZooLogin(id=k + 1, account_id=N - (k % (N - 3)), at=f"2024-01-{k % 28 + 1:02d}")
        for k in range(3 * N)
    )

    for i in range(N):
        session.add(ZooSku(code=f"SKU-{chr(65 + i)}{i}", label=f"sku {i}",
                           details=f"details {i}" if i % 2 else None))
    session.flush()
    session.add_all(
        ZooPrice(id=500 + k, sku_code=f"SKU-{chr(65 + k % N)}{k % N}", amount=10 * k)
        for k in range(2 * N)
        if k % N != 4
    )
    if session.get_bind().dialect.name in ("mysql", "mariadb"):
        # MySQL compares strings case-insensitively, foreign keys included:
        # this price points at SKU-B1 through a key spelt differently.
        session.add(ZooPrice(id=599, sku_code="sku-b1", amount=599))

    for i in range(N):
        session.add(ZooDevice(id=device_id(i), name=f"device {i}", firmware=f"fw {i}.0"))
    session.flush()
    session.add_all(
        ZooReading(id=600 + k, device_id=device_id((k * 7) % N) if k % 5 else None, value=k)
        for k in range(3 * N)
    )

    tags = [ZooTag(id=700 + t, name=f"tag {t}", active=t % 3 != 0) for t in range(6)]
    session.add_all(tags)
    for i in range(1, N + 1):
        session.add(ZooAuthor(id=i, name=f"author {i}"))
    session.flush()
    for k in range(4 * N):
        author = 1 + (k * 7) % (N - 2)  # the last two authors have no books
        book = ZooBook(
            id=800 + k,
            author_id=author,
            title=f"title {(k * 7919) % 97:02d}",
            isbn=f"isbn-{k:04d}",
            year=1980 + (k * 13) % 45,
            hardcover=k % 3 == 0,
        )
        session.add(book)
        session.flush()
        if k % 4:
            session.add(ZooBookDetail(id=900 + k, book_id=book.id, pages=100 + k))
        session.execute(
            zoo_book_tag.insert(),
            [{"book_id": book.id, "tag_id": 700 + t} for t in range(6) if (k + t) % 4 == 0],
        )

    session.add_all(
        ZooReview(id=1400 + k, book_isbn=f"isbn-{(k * 11) % 40:04d}" if k % 7 else None,
                  stars=k % 5)
        for k in range(3 * N)
    )

    for i in range(1, 2 * N + 1):
        session.add(ZooNode(id=i, parent_id=(i // 3) or None, name=f"node {(i * 37) % 50:02d}"))
        session.flush()
    session.execute(
        zoo_node_link.insert(),
        [
            {"source_id": s, "target_id": t}
            for s in range(1, 2 * N + 1)
            for t in range(1, 2 * N + 1)
            if s != t and (s * t) % 7 == 1
        ],
    )

    session.add_all(ZooStudent(id=i, name=f"student {i}") for i in range(1, N + 1))
    session.add_all(ZooCourse(id=i, title=f"course {(i * 5) % 7}") for i in range(1, 7))
    session.flush()
    session.add_all(
        ZooEnrollment(student_id=s, course_id=c, grade="ABCDF"[(s + c) % 5],
                      note=f"note {s}/{c}" if (s + c) % 2 else None)
        for s in range(1, N + 1)
        for c in range(1, 7)
        if (s * c) % 4 != 0
    )

    for i in range(1, N + 1):
        session.add(ZooPublisher(id=i, name=f"publisher {i}", home_id=(i % 4) or None))
    session.flush()
    session.add_all(
        ZooImprint(id=1000 + k, publisher_id=1 + (k * 3) % N, name=f"imprint {k}")
        for k in range(2 * N)
    )
    session.add_all(
        ZooCatalogue(id=1100 + k, publisher_id=1 + (k * 5) % N, year=2000 + k)
        for k in range(2 * N)
    )
    session.flush()
    session.add_all(
        ZooEntry(id=1200 + k, catalogue_id=1100 + (k * 7) % (2 * N), title=f"entry {k}")
        for k in range(5 * N)
    )

    for i in range(1, N + 1):
        session.add(
            ZooArticle(id=i, title=f"article {i}", subtitle=f"sub {i}",
                       body=f"body {i}" * (i % 4), views=i * 10, likes=i * 3, shares=i % 5)
        )
    session.execute(
        insert(ZooBulk), [{"a": k // 3, "b": f"b{k % 3}", "payload": f"p{k}"} for k in range(BULK)]
    )
    session.execute(
        insert(ZooBulkItem),
        [
            {"id": k, "bulk_a": (k % BULK) // 3, "bulk_b": f"b{k % BULK % 3}"}
            for k in range(BULK + 200)
            if k % 7
        ],
    )
    session.flush()
    session.add_all(
        ZooComment(id=1300 + k, article_id=1 + (k * 7) % (N - 1), text=f"comment {k}",
                   approved=k % 3 != 0)
        for k in range(3 * N)
    )
    session.flush()

    # Two parents of each of the non-foreign-key joins, as the stock-parity
    # suite had them: stock lazy loading costs exactly two statements.
    session.add_all([ZooKeyword(id=1, name="k1"), ZooKeyword(id=2, name="k2")])
    session.add_all([ZooItem(id=1), ZooItem(id=2), ZooParent(id=1), ZooParent(id=2)])
    session.add(ZooT3(id=1, data="t3"))
    session.flush()
    session.execute(
        zoo_item_keyword.insert(),
        [
            {"item_id": 1, "keyword_id": 2},
            {"item_id": 1, "keyword_id": 1},
            {"item_id": 2, "keyword_id": 1},
        ],
    )
    session.execute(zoo_t1.insert(), [{"id": 1}, {"id": 2}])
    session.execute(zoo_t2.insert(), [{"id": 1, "t1id": 1}])
    session.execute(zoo_t2tot3.insert(), [{"t2id": 1, "t3id": 1}])
    session.add_all(
        [ZooChild(id=i, parent_id=1 + i % 2, is_open=int(i % 3 == 0)) for i in range(1, 9)]
    )
    session.flush()
