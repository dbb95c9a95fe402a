"""The store's tables: traces, decisions, audits, tool lists, refits, leases, model versions.

Every worker and replica shares these through one database URL. Columns added in
later versions are nullable, and `create_schema` adds them to an existing database, so an
upgrade needs no manual step.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class TraceRow(Base):
    """One teacher answer on a task route: the labelled pair the surrogate learns from."""

    __tablename__ = "traces"
    __table_args__ = (Index("ix_traces_task_id", "task", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(128))
    input: Mapped[str] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(256))
    valid: Mapped[bool] = mapped_column(Boolean)
    raw_output: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(256))
    source: Mapped[str] = mapped_column(String(32), default="teacher")
    latency_ms: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class DecisionRow(Base):
    """Every request on a task route, whoever answered it, and what the model said."""

    __tablename__ = "decisions"
    __table_args__ = (Index("ix_decisions_task_id", "task", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(128))
    decision: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(256))
    accept_score: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(String(128))
    latency_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    lane: Mapped[str | None] = mapped_column(String(256), nullable=True)
    ood: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    cluster: Mapped[int | None] = mapped_column(Integer, nullable=True)
    input: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Shadow mode: what the model would have done, and whether it would have agreed.
    shadow: Mapped[str | None] = mapped_column(String(32), nullable=True)
    shadow_agrees: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)


class AuditRow(Base):
    """A served answer checked against the teacher's: the evidence of the live tests."""

    __tablename__ = "audits"
    __table_args__ = (Index("ix_audits_task_id", "task", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(128))
    version: Mapped[str | None] = mapped_column(String(128))
    lane: Mapped[str] = mapped_column(String(256), default="surrogate")
    cluster: Mapped[int | None] = mapped_column(Integer, nullable=True)
    agrees: Mapped[bool] = mapped_column(Boolean)
    input: Mapped[str | None] = mapped_column(Text, nullable=True)
    kind: Mapped[str] = mapped_column(String(16), default="audit")  # audit | confirm | shadow
    answer: Mapped[str | None] = mapped_column(String(256), nullable=True)  # a lane's label
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class ToolListRow(Base):
    """The tools a tool task's agent offered, each time they changed: what
    `/v1/classify` sends the teacher when its caller gives none, in any worker."""

    __tablename__ = "tool_lists"
    __table_args__ = (Index("ix_tool_lists_task_id", "task", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(128))
    tools: Mapped[str] = mapped_column(Text)  # the request's `tools`, as JSON
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class LeaseRow(Base):
    """Who may refit a task now: one holder across workers and replicas on one store."""

    __tablename__ = "leases"

    task: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str] = mapped_column(String(256))
    expires_at: Mapped[float] = mapped_column(Float)


class RefitRow(Base):
    """One fit attempt and its outcome; the newest says which traces it covered."""

    __tablename__ = "refits"
    __table_args__ = (Index("ix_refits_task_id", "task", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(128))
    # deployed | refused | not_better | failed | candidate | rejected | superseded
    outcome: Mapped[str] = mapped_column(String(32))
    version: Mapped[str | None] = mapped_column(String(64))
    n_traces: Mapped[int] = mapped_column(Integer)
    last_trace_id: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)  # k of delta_k
    delta: Mapped[float | None] = mapped_column(Float, nullable=True)  # what its certificate spent
    # A tool task's whole calls spend a budget of their own: what this fit spent of it.
    whole_delta: Mapped[float | None] = mapped_column(Float, nullable=True)


class ModelVersionRow(Base):
    """A model version of a task: reserved by a fit (its number), then published with its
    files. The (task, version) pair is unique, so two replicas never fit the same number."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("task", "version", name="uq_model_versions_task_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))  # reserved | published
    holder: Mapped[str] = mapped_column(String(256))  # who reserved, then who published it
    status: Mapped[str | None] = mapped_column(String(16), nullable=True)  # the manifest's
    manifest: Mapped[str | None] = mapped_column(Text, nullable=True)  # manifest.json as written
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class ModelFileRow(Base):
    """A part of one file of a published version; `sha256` and `size` are the whole file's."""

    __tablename__ = "model_files"
    __table_args__ = (
        UniqueConstraint("task", "version", "name", "part", name="uq_model_files_part"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(512))  # relative to the version's folder
    part: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ModelPointerRow(Base):
    """Which version a task serves: switching version is an update of this one row."""

    __tablename__ = "model_pointers"

    task: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    previous: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)  # epoch seconds
    holder: Mapped[str | None] = mapped_column(String(256), nullable=True)
    # `tracer models pin` (or a rollback): hold this version; refits wait as candidates.
    pinned: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
