"""The cat clinic's data model.

Owners (``Person``) own cats; veterinarians are people too (joined-table
inheritance) and work at one clinic; an appointment brings one cat and its
owner to one veterinarian at one clinic.

Every relationship keeps SQLAlchemy's default ``lazy="select"``: nothing is
loaded until it is touched.  That is what makes the models pleasant to write
code against, and what makes the naive Success Stories page send one query
per veterinarian and one per cat.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import DateTime, Enum, ForeignKey, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = ["Appointment", "Base", "Cat", "CatColor", "Clinic", "Person", "Veterinarian"]


class Base(DeclarativeBase):
    # The example's own MetaData: create_all()/drop_all() on it touch only the
    # six tables below, never anything else living in the same database.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class CatColor(enum.Enum):
    BLACK = "black"
    WHITE = "white"
    GINGER = "ginger"
    GREY = "grey"
    TABBY = "tabby"
    TORTOISESHELL = "tortoiseshell"
    CALICO = "calico"
    SIAMESE = "siamese"


class Person(Base):
    """A cat owner (and, through :class:`Veterinarian`, every vet)."""

    __tablename__ = "person"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))

    cats: Mapped[list[Cat]] = relationship(back_populates="owner", order_by="Cat.id")
    booked_appointments: Mapped[list[Appointment]] = relationship(
        back_populates="owner",
        foreign_keys="Appointment.owner_id",
        order_by="Appointment.start",
    )

    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "person"}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.name!r}>"


class Veterinarian(Person):
    """A vet: a person with a license, working at one clinic."""

    __tablename__ = "veterinarian"

    id: Mapped[int] = mapped_column(ForeignKey("person.id"), primary_key=True)
    license_number: Mapped[str] = mapped_column(String(20), unique=True)
    clinic_id: Mapped[int] = mapped_column(ForeignKey("clinic.id"), index=True)

    clinic: Mapped[Clinic] = relationship(back_populates="veterinarians")
    appointments: Mapped[list[Appointment]] = relationship(
        back_populates="veterinarian",
        foreign_keys="Appointment.veterinarian_id",
        order_by="Appointment.start",
    )

    __mapper_args__ = {"polymorphic_identity": "veterinarian"}


class Clinic(Base):
    __tablename__ = "clinic"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    city: Mapped[str] = mapped_column(String(100))

    veterinarians: Mapped[list[Veterinarian]] = relationship(
        back_populates="clinic", order_by="Veterinarian.id"
    )
    appointments: Mapped[list[Appointment]] = relationship(
        back_populates="clinic", order_by="Appointment.start"
    )

    def __repr__(self) -> str:
        return f"<Clinic {self.id} {self.name!r}>"


class Cat(Base):
    __tablename__ = "cat"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    age: Mapped[int] = mapped_column(Integer)
    color: Mapped[CatColor] = mapped_column(Enum(CatColor, name="cat_color"))
    lives: Mapped[int] = mapped_column(Integer, doc="Lives left, out of nine.")
    owner_id: Mapped[int] = mapped_column(ForeignKey("person.id"), index=True)

    owner: Mapped[Person] = relationship(back_populates="cats")
    appointments: Mapped[list[Appointment]] = relationship(
        back_populates="cat", order_by="Appointment.start"
    )

    def __repr__(self) -> str:
        return f"<Cat {self.id} {self.name!r}>"


class Appointment(Base):
    __tablename__ = "appointment"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    start: Mapped[datetime] = mapped_column(DateTime)
    duration_minutes: Mapped[int] = mapped_column(Integer)
    cat_id: Mapped[int] = mapped_column(ForeignKey("cat.id"), index=True)
    clinic_id: Mapped[int] = mapped_column(ForeignKey("clinic.id"), index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("person.id"), index=True)
    veterinarian_id: Mapped[int] = mapped_column(ForeignKey("veterinarian.id"), index=True)

    cat: Mapped[Cat] = relationship(back_populates="appointments")
    clinic: Mapped[Clinic] = relationship(back_populates="appointments")
    owner: Mapped[Person] = relationship(
        back_populates="booked_appointments", foreign_keys=[owner_id]
    )
    veterinarian: Mapped[Veterinarian] = relationship(
        back_populates="appointments", foreign_keys=[veterinarian_id]
    )

    def __repr__(self) -> str:
        return f"<Appointment {self.id} cat={self.cat_id} at {self.start:%Y-%m-%d %H:%M}>"
