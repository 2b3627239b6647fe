"""The one store layer: every actor's database is opened, migrated and written through here.

Rule 1 (opening): ``open_store(target, schemas)`` takes a filesystem path (SQLite, the embedded
default: one file per actor instance under the data dir) or a SQLAlchemy URL
(``postgresql://user@host/db`` runs on psycopg 3). A SQLite file is created 0600 inside a 0700
directory; its ``-wal``/``-shm`` files inherit the 0600 mode from it (SQLite copies the
database file's mode), and modes of existing files are tightened on open. Every SQLite
connection runs WAL, ``foreign_keys=ON``, a busy timeout, and ``synchronous=FULL``: the
runtime acks a message only after its effects commit (at-least-once transport,
exactly-once effects), so a commit must survive power loss, not only a process crash. With
NORMAL, WAL may lose the last commits on power loss after the ack went out, and the
redelivery that would have re-run them never comes. FULL costs one fsync per commit.

Rule 2 (schema): each component of a database (a party's own tables, the shared reply store,
...) is a ``Schema``: SQLAlchemy Core ``Table`` metadata for its *current* shape plus an
ordered tuple of upgrade steps. The version of every component is recorded in
``setpay_schema``. On open, in one write transaction: a fresh component gets ``create_all``
of its current metadata and is stamped at its latest version (the Alembic cookbook's
"create_all, then stamp head"); an existing one runs the steps after its recorded version,
each once, in order; a database newer than the code, or tables of a component without a
version row (made before this layer), are refused with ``SchemaError``. Steps receive an
Alembic ``Operations`` object, so DDL (``add_column``, ``create_index``,
``batch_alter_table`` for SQLite's limited ALTER) is written once for SQLite and PostgreSQL.
Why not Alembic's script directories and ``alembic_version``: the stores are many and small,
they are embedded per actor instance and share components (the reply store lives inside the
merchant's, the CA's and the gateway's databases, committed in their transactions), and
Alembic records one linear head per version table with scripts found on disk; an ordered
tuple of Python steps per component, recorded per component, is what these stores need, and
Alembic's ``Operations`` keeps the DDL itself backend-neutral.

Rule 3 (transactions): ``Store.transaction()`` is the only way to change data. It takes the
write lock up front (SQLite: ``BEGIN IMMEDIATE`` through SQLAlchemy's documented pysqlite
recipe, the driver's own transaction handling switched off; PostgreSQL: a transaction-scoped
advisory lock on the store's name), so a read-decide-write sequence never interleaves with
another writer, on either backend. It commits on normal exit; any exception, asyncio
cancellation included, rolls back. Reads (``Store.read()``, ``one``/``all``/``scalar``) run
inside the open transaction when there is one (they see its own writes), else in a short
read transaction of their own. One ``Store`` holds one connection, guarded by a lock, so it
may be shared by the coroutines and threads of one process.

Hot paths (the gateway ledger, the reply store) compile their statements once per store with
``Store.prepare`` and run them on the driver cursor: plain Core costs about 20 us a statement
in SQLAlchemy's execution machinery, which tripled the ledger's CPU time per commit; prepared,
it is within ~15 us of hand-written sqlite3 (and fsync, not CPU, dominates a FULL commit).

Rule 4 (replies): ``ReplyStore`` (schema ``REPLIES``) is the one idempotent reply store:
request id -> request digest, reply type, reply bytes, created at. The same id with the same
digest gets the stored reply; the same id with another digest is a replay (``ReplyConflict``).
Its row is written inside the caller's transaction, together with the effects it answers.

Rule 5 (group commit): ``open_store(..., group_commit=True)`` opens a SQLite store whose
commits do not sync by themselves (``synchronous=NORMAL``) and are reported to the process's
barrier (``setpay/durability.py``), which brings them to disk, many commits in one
``fdatasync`` of the WAL, before anything that could reveal them leaves the process (a
publish, an ack, an HTTPS answer). An acked effect survives power loss as under FULL; what
changes is that the event loop does not wait for the disk at each commit. Only a running
actor opts in (the POS, the wallet, the gateway's ledger and journal); commands, tests and
every other store keep FULL. A transaction on any store of the process (a PostgreSQL one
too) first syncs what other stores still owe, so commits reach the disk across files in the
order they were made (setpay/durability.py Rule 2). Closing such a store syncs it first.

Rule 6 (placement): by default each store is the SQLite file its owner names under the data
dir. When the process is configured with a server database (``store_url``, applied once per
process by ``use_database``, from the CLI's entry point and each spawned keystore worker),
every store whose path lies under the data dir lives instead in that database, in a schema
(namespace) of its own named after the path (``merchant/pos1.sqlite`` -> ``merchant_pos1``),
so that the same code, the same tables and the same lock names serve both backends, every
replica of an actor instance and every CLI acting on its store (``setpay ca revoke``,
``setpay gateway batches``) meet in one place, and nothing of a party is split between a
file and a server. Paths outside the data dir (tests' temporary files) stay SQLite.
``store_exists(path)`` answers for either placement.

Every store of the tree stands on this layer (merchant, wallet, CA, gateway ledger, trust
cache, issuer accounts, the ISO 8583 store-and-forward journal, the keystore's used-PI
register). A schema change appends a step, ``Schema(..., steps=(add_flag,))`` where
``def add_flag(op: Operations) -> None: op.add_column("t", sa.Column(...))``, and changes the
``Table`` to the new shape (fresh databases are created from it).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.dml import Insert

from setpay.durability import GROUP, GroupCommit
from setpay.logs import get_logger

log = get_logger(component="store")

__all__ = [
    "REPLIES",
    "Connection",
    "IntegrityError",
    "Prepared",
    "ReplyConflict",
    "ReplyStore",
    "Schema",
    "SchemaError",
    "Step",
    "Store",
    "StoreError",
    "StoredReply",
    "open_store",
]

FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700
BUSY_TIMEOUT_S: Final = 10.0
SYNCHRONOUS: Final = "FULL"  # Rule 1: an acked effect survives power loss

Step = Callable[[Operations], None]


class StoreError(Exception):
    """Root of the store layer's errors."""


class SchemaError(StoreError):
    """The database's schema cannot be used by this code (newer, or made before the layer)."""


class ReplyConflict(StoreError):
    """A request id already answered for another request (a replay), or answered twice."""


@dataclass(frozen=True)
class Schema:
    """One component of a database: its current tables and its ordered upgrade steps.

    ``steps[i]`` upgrades version ``i + 1`` to ``i + 2``; the latest version is
    ``len(steps) + 1``. ``metadata`` always describes the latest shape."""

    name: str
    metadata: sa.MetaData
    steps: tuple[Step, ...] = ()

    @property
    def version(self) -> int:
        return len(self.steps) + 1


_VERSIONS_MD = sa.MetaData()
_VERSIONS = sa.Table(
    "setpay_schema",
    _VERSIONS_MD,
    sa.Column("component", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)


def _is_url(target: str | Path) -> bool:
    return isinstance(target, str) and "://" in target


def _url(target: str | Path) -> sa.URL:
    if _is_url(target):
        url = sa.make_url(str(target))
        if url.drivername == "postgresql":  # psycopg 3, not the psycopg2 default
            url = url.set(drivername="postgresql+psycopg")
        return url
    return sa.URL.create("sqlite", database=str(Path(target)))


def _private_file(path: Path) -> None:
    """Create ``path`` 0600 in a 0700 directory; tighten modes of what exists already."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    parent = path.parent.stat()
    if parent.st_uid == os.getuid() and stat.S_IMODE(parent.st_mode) != DIR_MODE:
        os.chmod(path.parent, DIR_MODE)
    # Never open an existing database file here: closing any descriptor of a file drops
    # every POSIX lock this process holds on it, including those of a live SQLite connection.
    if not path.exists():
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
        except FileExistsError:
            pass  # created meanwhile by another opener: its mode is checked below
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        try:
            if stat.S_IMODE(p.stat().st_mode) != FILE_MODE:
                os.chmod(p, FILE_MODE)
        except FileNotFoundError:
            pass  # absent, or removed meanwhile by another connection's checkpoint


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for ``name`` (PostgreSQL)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class Store:
    """One database: one connection, one write-transaction helper, migrated schemas."""

    def __init__(
        self, engine: Engine, name: str, path: Path | None, group: GroupCommit | None = None
    ) -> None:
        self.engine = engine
        self.name = name
        self.path = path  # the SQLite file; None on a server database
        self.dialect = engine.dialect.name
        # Rule 5: commits synced by the process's barrier instead of one by one.
        self.group = group if self.dialect == "sqlite" and path is not None else None
        self._dir_synced = False
        self._lock = threading.RLock()
        self._immediate = False  # read by the SQLite "begin" listener
        if self.dialect == "sqlite":
            event.listen(engine, "connect", _sqlite_connect)
            event.listen(engine, "begin", self._sqlite_begin)
        self.lock_key = _lock_key(name)  # PostgreSQL's stand-in for SQLite's write lock
        self._conn = engine.connect()
        if self.group is not None:  # on the driver, outside any transaction (autocommit)
            raw = self._conn.connection.driver_connection
            assert raw is not None
            raw.execute("PRAGMA synchronous=NORMAL")
        self._pg_lock = sa.select(sa.func.pg_advisory_xact_lock(self.lock_key))

    def _sqlite_begin(self, conn: Connection) -> None:
        # The pysqlite recipe: the driver never begins by itself, we do, and a write
        # transaction takes the write lock now rather than at its first write. Sent on the
        # driver connection (the recipe uses exec_driver_sql): it is one statement per
        # transaction on the hot path, and needs no result handling.
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.execute("BEGIN IMMEDIATE" if self._immediate else "BEGIN")

    def close(self) -> None:
        if self.group is not None:
            self.group.sync()  # Rule 5: nothing committed stays unsynced past close
        with self._lock:
            self._conn.close()
            self.engine.dispose()

    def sync_to_disk(self) -> None:
        """Bring this store's committed WAL to disk (Rule 5; called by the barrier)."""
        assert self.path is not None
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            return  # no WAL: the last connection checkpointed it, and that syncs the file
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)  # SQLite locks the database and -shm files, never the -wal
        if not self._dir_synced:  # the WAL's directory entry, once
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            self._dir_synced = True

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One atomic write (Rule 3): write lock taken up front, committed on normal exit,
        rolled back on any exception (cancellation included)."""
        if GROUP.pending_elsewhere(self):
            GROUP.sync()  # Rule 5: another store's earlier commits reach the disk first
        with self._lock:
            conn = self._conn
            if conn.in_transaction():
                raise StoreError(f"{self.name}: a transaction is already open on this store")
            self._immediate = True
            try:
                tx = conn.begin()
            finally:
                self._immediate = False
            try:
                if self.dialect == "postgresql":
                    conn.execute(self._pg_lock)
                yield conn
            except BaseException:
                tx.rollback()
                raise
            try:
                tx.commit()
            except BaseException:
                if tx.is_active:
                    tx.rollback()
                raise
            if self.group is not None:
                self.group.committed(self)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection to read from: the open transaction's, else a short read transaction."""
        with self._lock:
            conn = self._conn
            if conn.in_transaction():
                yield conn
                return
            with conn.begin():
                yield conn

    def one(self, stmt: sa.Executable, params: dict[str, Any] | None = None) -> Row[Any] | None:
        """The first row of ``stmt``, or None."""
        with self.read() as conn:
            return conn.execute(stmt, params).first()

    def all(self, stmt: sa.Executable, params: dict[str, Any] | None = None) -> list[Row[Any]]:
        """Every row of ``stmt``."""
        with self.read() as conn:
            return list(conn.execute(stmt, params).all())

    def scalar(self, stmt: sa.Executable, params: dict[str, Any] | None = None) -> Any:
        """The first column of the first row of ``stmt``, or None."""
        with self.read() as conn:
            return conn.execute(stmt, params).scalar()

    def insert_ignore(self, table: sa.Table) -> Insert:
        """``INSERT`` that skips a row whose primary key exists (any other unique column still
        raises ``IntegrityError``); it returns the key of the row it inserted and no row when
        it skipped (``rowcount`` is not portable: psycopg says -1)."""
        keys = list(table.primary_key.columns)
        return self._insert(table).on_conflict_do_nothing(index_elements=keys).returning(*keys)

    def prepare(self, stmt: sa.Executable) -> Prepared:
        """``stmt`` compiled once for this store's backend, for a hot path (see ``Prepared``)."""
        return Prepared(self, stmt)

    def upsert(self, table: sa.Table, values: dict[str, Any]) -> Insert:
        """``INSERT`` of ``values`` that replaces the non-key columns of an existing row."""
        stmt = self._insert(table).values(values)
        keys = [c.name for c in table.primary_key.columns]
        return stmt.on_conflict_do_update(
            index_elements=keys,
            set_={k: stmt.excluded[k] for k in values if k not in keys},
        )

    def _insert(self, table: sa.Table) -> Any:
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def checkpoint(self) -> None:
        """Fold the WAL into the database file (SQLite; nothing to do on a server)."""
        if self.dialect != "sqlite":
            return
        with self._lock:
            if self._conn.in_transaction():
                raise StoreError("checkpoint inside a transaction")
            # The raw driver connection runs it outside any transaction (autocommit).
            self._conn.connection.driver_connection.execute(  # type: ignore[union-attr]
                "PRAGMA wal_checkpoint(TRUNCATE)"
            )

    def versions(self) -> dict[str, int]:
        """Recorded schema version of every component."""
        return {r.component: r.version for r in self.all(sa.select(_VERSIONS))}

    def migrate(self, schemas: Sequence[Schema]) -> None:
        """Create or upgrade every component (Rule 2), all in one write transaction."""
        names = [t for s in schemas for t in s.metadata.tables]
        if len(names) != len(set(names)):
            raise SchemaError(f"{self.name}: two components define the same table")
        with self.transaction() as conn:
            _VERSIONS_MD.create_all(conn)
            ops = Operations(MigrationContext.configure(connection=conn))
            existing = set(sa.inspect(conn).get_table_names())
            for schema in schemas:
                _migrate_one(conn, ops, schema, existing, self.name)


class Prepared:
    """A Core statement compiled once for one store's dialect and run on the driver cursor
    inside an open ``read()``/``transaction()``: the hot-path form, without SQLAlchemy's
    per-call cache lookup, bind processing and ``Result`` (about 20 us a statement saved).
    Bind plain driver values only (bytes, str, int, float, bool, None); rows come back as
    tuples. Name every bound column (``insert(t).values(c=bindparam("c"))``): a statement
    compiled without values binds all columns, and a missing one is a ``KeyError``.
    Driver errors are raised as SQLAlchemy's (``IntegrityError`` ...), as elsewhere."""

    def __init__(self, store: Store, stmt: sa.Executable) -> None:
        dialect = store.engine.dialect
        compiled = stmt.compile(dialect=dialect)  # type: ignore[attr-defined]
        self.sql = str(compiled)
        # Values fixed in the statement (``.values(state="done")``, ``id == 1``).
        self._fixed = {
            name: bind.effective_value
            for bind, name in compiled.bind_names.items()
            if not bind.required
        }
        self._order: list[str] | None = (
            list(compiled.positiontup or []) if compiled.positional else None
        )
        self._dbapi_error = dialect.loaded_dbapi.Error

    def run(self, db: Connection, params: dict[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
        """Execute on ``db``'s driver connection: (rows, rowcount)."""
        merged = {**self._fixed, **params} if self._fixed else params
        args: Any = merged if self._order is None else tuple(merged[n] for n in self._order)
        raw = db.connection.driver_connection
        assert raw is not None
        cur = raw.cursor()
        try:
            cur.execute(self.sql, args)
            rows = cur.fetchall() if cur.description else []
            return [tuple(r) for r in rows], cur.rowcount
        except self._dbapi_error as exc:
            raise sa.exc.DBAPIError.instance(self.sql, args, exc, self._dbapi_error) from exc
        finally:
            cur.close()


def _migrate_one(
    conn: Connection, ops: Operations, schema: Schema, existing: set[str], store: str
) -> None:
    where = _VERSIONS.c.component == schema.name
    current = conn.execute(sa.select(_VERSIONS.c.version).where(where)).scalar()
    if current is None:
        clash = existing & set(schema.metadata.tables)
        if clash and _adoptable(conn, schema, existing):
            # A database made before this layer, whose tables already have the columns of
            # version 1: recorded as version 1 (nothing rewritten), then upgraded below.
            conn.execute(sa.insert(_VERSIONS).values(component=schema.name, version=1))
            log.info("store_adopted", store=store, component=schema.name)
            current = 1
        elif clash:
            raise SchemaError(
                f"{store}: tables {sorted(clash)} exist without a recorded version of"
                f" {schema.name!r} and not in its shape (a database made before the store"
                " layer): move it away"
            )
        else:
            schema.metadata.create_all(conn)
            conn.execute(
                sa.insert(_VERSIONS).values(component=schema.name, version=schema.version)
            )
            return
    if current > schema.version:
        raise SchemaError(
            f"{store}: {schema.name!r} is at version {current}, this code knows {schema.version}"
        )
    for version in range(current, schema.version):
        schema.steps[version - 1](ops)
        conn.execute(sa.update(_VERSIONS).where(where).values(version=version + 1))


def _adoptable(conn: Connection, schema: Schema, existing: set[str]) -> bool:
    """Whether every table of ``schema``'s version 1 exists with at least its columns. Only a
    component with no upgrade steps yet has its version-1 shape in ``metadata``."""
    if schema.steps or not set(schema.metadata.tables) <= existing:
        return False
    inspector = sa.inspect(conn)
    for name, table in schema.metadata.tables.items():
        have = {c["name"] for c in inspector.get_columns(name)}
        if not {c.name for c in table.columns} <= have:
            return False
    return True


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # the recipe: SQLAlchemy's "begin" listener emits BEGIN
    cur = dbapi_conn.cursor()
    try:
        # The busy timeout first: switching a fresh file to WAL takes a lock that another
        # connection opening the same new file at the same moment may hold briefly.
        cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()


def widen(op: Operations, table: str, column: str, old: sa.types.TypeEngine[Any],
          new: sa.types.TypeEngine[Any]) -> None:
    """An upgrade step's way to lengthen a string column: PostgreSQL enforces lengths, SQLite
    stores any length in any column and needs no change (nor its table rebuilt)."""
    if op.get_context().dialect.name != "sqlite":
        op.alter_column(table, column, type_=new, existing_type=old)


# --- placement: a data dir's stores in one server database (Rule 6) -------------------------

_NAMESPACE_CHARS = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True, slots=True)
class _Database:
    url: str
    data_dir: Path


_database: _Database | None = None


def use_database(url: str, data_dir: Path) -> None:
    """Place every store under ``data_dir`` in the server database at ``url`` (Rule 6);
    an empty ``url`` keeps them SQLite files. Called once per process."""
    global _database
    if not url:
        _database = None
        return
    if not _is_url(url) or sa.make_url(url).get_backend_name() != "postgresql":
        raise StoreError("store_url must be a postgresql:// URL")  # config.load() says more
    _database = _Database(url, Path(data_dir).resolve())


def namespace_of(path: Path, data_dir: Path) -> str:
    """The schema a store at ``path`` under ``data_dir`` lives in (Rule 6): its relative
    path without the suffix, lower-cased, runs of other characters as one ``_``; names
    over PostgreSQL's 63 bytes end in a digest of the whole."""
    relative = path.resolve().relative_to(data_dir.resolve()).with_suffix("")
    name = _NAMESPACE_CHARS.sub("_", str(relative).lower()).strip("_") or "store"
    if len(name) > 63:
        name = f"{name[:50]}_{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return name


def _placed(target: str | Path) -> tuple[str, str] | None:
    """(server URL, namespace) when ``target`` is a path placed on the server (Rule 6)."""
    if _database is None or _is_url(target):
        return None
    path = Path(target).resolve()
    if not path.is_relative_to(_database.data_dir):
        return None
    return _database.url, namespace_of(path, _database.data_dir)


def store_exists(target: str | Path) -> bool:
    """Whether the store at ``target`` was ever created, wherever it is placed (Rule 6)."""
    placed = _placed(target)
    if placed is None:
        return Path(target).exists() if not _is_url(target) else True
    url, namespace = placed
    engine = sa.create_engine(_url(url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.text("SELECT 1 FROM information_schema.tables "
                        "WHERE table_schema = :ns AND table_name = :t"),
                {"ns": namespace, "t": _VERSIONS.name},
            ).first()  # fmt: skip
        return found is not None
    finally:
        engine.dispose()


def _create_namespace(url: sa.URL, namespace: str) -> None:
    """``CREATE SCHEMA`` once, under an advisory lock: two replicas opening the same store at
    once must not both try (IF NOT EXISTS alone races on the catalogue's unique index)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_key("schema:" + namespace))))
            conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{namespace}"'))
    finally:
        engine.dispose()


def open_store(
    target: str | Path,
    schemas: Sequence[Schema],
    *,
    name: str | None = None,
    group_commit: bool = False,
) -> Store:
    """Open (creating and migrating as needed) the database at ``target``: a path (SQLite,
    Rule 1, or its place in the configured server database, Rule 6) or a SQLAlchemy URL.
    ``name`` (default: the components' names) keys the PostgreSQL write lock and names the
    store in errors. ``group_commit``: Rule 5 (SQLite; a server database commits as always)."""
    placed = _placed(target)
    url = _url(placed[0] if placed else target)
    path: Path | None = None
    kwargs: dict[str, Any] = {}
    name = name or "+".join(s.name for s in schemas)
    if placed is not None:
        namespace = placed[1]
        _create_namespace(url, namespace)
        # every connection of this store sees its own schema first (and only it, for DDL)
        kwargs["connect_args"] = {"options": f"-c search_path={namespace}"}
        name = f"{namespace}:{name}"
    elif url.get_backend_name() == "sqlite":
        path = Path(url.database or "")
        _private_file(path)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": BUSY_TIMEOUT_S}
    store = Store(sa.create_engine(url, **kwargs), name, path,
                  GROUP if group_commit else None)  # fmt: skip
    try:
        store.migrate(schemas)
    except BaseException:
        store.close()
        raise
    return store


# --- the one idempotent reply store (Rule 4) -------------------------------------------------

_REPLIES_MD = sa.MetaData()
REPLIES_TABLE: Final = sa.Table(
    "replies",
    _REPLIES_MD,
    sa.Column("request_id", sa.LargeBinary, primary_key=True),
    sa.Column("digest", sa.LargeBinary, nullable=False),  # of the request: other body = replay
    sa.Column("reply_type", sa.String(64), nullable=False),
    sa.Column("reply", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),  # ms since the epoch
)
REPLIES: Final = Schema("replies", _REPLIES_MD)


@dataclass(frozen=True, slots=True)
class StoredReply:
    digest: bytes
    reply_type: str
    reply: bytes
    created_at: int


class ReplyStore:
    """Request id -> the reply sent to it, in ``store`` (which must include ``REPLIES``)."""

    table: Final = REPLIES_TABLE

    def __init__(self, store: Store) -> None:
        self.store = store
        t = REPLIES_TABLE
        self._get = store.prepare(
            sa.select(t.c.digest, t.c.reply_type, t.c.reply, t.c.created_at).where(
                t.c.request_id == sa.bindparam("rid")
            )
        )
        self._put = store.prepare(store.insert_ignore(t))
        self._count = sa.select(sa.func.count()).select_from(t)

    def get(self, request_id: bytes) -> StoredReply | None:
        """The reply stored under ``request_id`` (inside an open transaction: as it sees it)."""
        with self.store.read() as db:
            rows, _ = self._get.run(db, {"rid": request_id})
        if not rows:
            return None
        r = rows[0]
        return StoredReply(bytes(r[0]), str(r[1]), bytes(r[2]), int(r[3]))

    def lookup(self, request_id: bytes, digest: bytes) -> StoredReply | None:
        """The stored reply of an identical earlier request; None if ``request_id`` is new.
        Raises ``ReplyConflict`` if it answered a request with another digest."""
        stored = self.get(request_id)
        if stored is not None and stored.digest != digest:
            raise ReplyConflict("request id already used by another request")
        return stored

    def save(
        self,
        db: Connection,
        request_id: bytes,
        digest: bytes,
        reply_type: str,
        reply: bytes,
        created_at: int,
    ) -> None:
        """Store the reply inside the caller's transaction ``db``; ``ReplyConflict`` if
        ``request_id`` was answered already (the first reply stays)."""
        inserted, _ = self._put.run(
            db,
            {
                "request_id": request_id,
                "digest": digest,
                "reply_type": reply_type,
                "reply": reply,
                "created_at": created_at,
            },
        )
        if not inserted:
            raise ReplyConflict("request id already answered")

    def count(self) -> int:
        return int(self.store.scalar(self._count))
