"""The Store on one SQLite file: WAL, every commit synced, work done off the event loop.

Writes go through one connection, one at a time (a ``threading.Lock``, and
one worker thread for them all, so waiting writers hold no threads), each
in a ``BEGIN IMMEDIATE`` transaction that holds SQLite's write lock from its
start, so an item's position (its owner's last + 1) is read and used without
another writer in between, also when another process shares the file. Reads
take a connection from a small pool: in WAL mode they see the last commit and
never wait for the writer. Every call runs in a worker thread
(``trio.to_thread.run_sync``), JSON encoding included, so a big write never
stalls the loop; a write returns after its COMMIT is on disk.

Rows: ``records`` (``seq`` is the save order, cursors are turned into it),
``record_metadata`` (one row a pair, indexed by pair for ``list``'s filter)
and ``items`` (numbered per owner by ``position``), both deleted with their
record by the foreign keys' cascade.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from pycompat.state.store import ASC, DuplicateId, Item, NotFound, Page, Record, Store

# Applied in order, each in the transaction that sets PRAGMA user_version to
# its number (1, 2, ...); append new ones, never edit a released one.
MIGRATIONS = [
    """
    CREATE TABLE records (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so a cursor never points at a newer record
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        model TEXT,
        body TEXT NOT NULL
    );
    CREATE INDEX records_by_kind ON records (kind, seq);
    CREATE INDEX records_by_model ON records (kind, model, seq);
    CREATE INDEX records_by_update ON records (updated_at);
    CREATE TABLE record_metadata (
        record_seq INTEGER NOT NULL REFERENCES records (seq) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (record_seq, key)
    ) WITHOUT ROWID;
    CREATE INDEX record_metadata_by_pair ON record_metadata (key, value, record_seq);
    CREATE TABLE items (
        owner_seq INTEGER NOT NULL REFERENCES records (seq) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        id TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (owner_seq, position),
        UNIQUE (owner_seq, id)
    ) WITHOUT ROWID;
    """,
    # 2: the record a record continues, so a chain of responses is read in one query.
    """
    ALTER TABLE records ADD COLUMN parent TEXT;
    UPDATE records SET parent = json_extract(body, '$.previous_response_id') WHERE kind = 'response';
    """,
]

PURGE_BATCH = 500  # records a purge transaction deletes, so other writers get the lock in between
BUSY_TIMEOUT_MS = 10_000  # how long to wait for another process's write (or a checkpoint) before failing

_RECORD_COLUMNS = ("records.seq, records.kind, records.id, records.created_at, records.updated_at, records.model, records.body, "
                   "records.parent")


class StateError(Exception):
    """The database cannot be used: not SQLite, newer than this code, unreachable, or closed."""


class SQLiteStore(Store):
    """Made by ``SQLiteStore.open(path)``."""

    def __init__(self, path: Path, writer: sqlite3.Connection):
        self.path = path
        self._writer = writer
        self._write_lock = threading.Lock()
        # Writers queue here, in trio, one in a thread at a time: queued on the lock
        # they would each hold one of trio's default worker threads (40 in all),
        # which JSON parsing and tokenizing for every other request wait for.
        self._write_limiter = trio.CapacityLimiter(1)
        self._readers: list[sqlite3.Connection] = []  # idle ones; as many get made as reads run at once
        self._readers_lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, path: str | Path) -> SQLiteStore:
        """Opens (making it and its directory if missing) and migrates the
        database. Synchronous, so it can run before trio starts; from a trio task
        call it with ``trio.to_thread.run_sync``. StateError when it cannot be used."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = _connect(path)
        except (OSError, sqlite3.Error) as e:
            raise StateError(f"cannot open the state database {path}: {e}") from e
        try:
            # WAL is a property of the file; FULL syncs the log at every commit, so a
            # write that returned survives a crash of the process or of the machine.
            mode = writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StateError(f"the state database {path} cannot use WAL (journal mode {mode!r})")
            writer.execute("PRAGMA synchronous = FULL")
            _migrate(writer, path)
        except sqlite3.DatabaseError as e:
            writer.close()
            raise StateError(f"{path} is not a usable SQLite database: {e}") from e
        except BaseException:
            writer.close()
            raise
        return cls(path, writer)

    # -- the Store's methods

    async def save(self, record: Record, items: Sequence[Item] = (), append_to: str | None = None,
                   appended: Sequence[Item] = ()) -> None:
        def work(db: sqlite3.Connection) -> None:
            owner = None if append_to is None else _seq_of(db, append_to)
            try:
                seq = db.execute(
                    "INSERT INTO records (id, kind, created_at, updated_at, model, body, parent) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (_bind(record.id), record.kind, record.created_at, record.created_at, _bind(record.model),
                     _dumps(record.body), _bind(record.parent))).lastrowid
            except sqlite3.IntegrityError as e:
                raise DuplicateId(record.id) from e
            _insert_metadata(db, seq, record.metadata)
            _append(db, seq, items)
            if owner is not None:
                _append(db, owner, appended)
                _touch(db, owner)
        await self._write(work)

    async def get(self, kind: str, id: str) -> Record | None:
        return await self._read(_get, kind, id)

    async def update_metadata(self, kind: str, id: str, metadata: dict[str, str]) -> Record | None:
        def work(db: sqlite3.Connection) -> Record | None:
            seq = _seq(db, id, kind)
            if seq is None:
                return None
            db.execute("DELETE FROM record_metadata WHERE record_seq = ?", (seq,))
            _insert_metadata(db, seq, metadata)
            _touch(db, seq)
            return _get(db, kind, id)
        return await self._write(work)

    async def delete(self, kind: str, id: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            return db.execute("DELETE FROM records WHERE id = ? AND kind = ?", (_bind(id), kind)).rowcount > 0
        return await self._write(work)

    async def list(self, kind: str, *, model: str | None = None, metadata: dict[str, str] | None = None,
                   after: str | None = None, limit: int = 20, order: str = ASC) -> Page:
        def work(db: sqlite3.Connection) -> Page:
            after_seq = None if after is None else _seq(db, after, kind)
            if after is not None and after_seq is None:
                raise NotFound(after)
            sql, params = list_query(kind, model, metadata or {}, after_seq, limit, order)
            rows = db.execute(sql, params).fetchall()
            pairs = _metadata_of(db, [row[0] for row in rows[:limit]])
            return Page([_record(row, pairs.get(row[0], {})) for row in rows[:limit]], len(rows) > limit)
        return await self._read(work)

    async def items(self, owner: str, *, after: str | None = None, limit: int = 20, order: str = ASC) -> Page:
        def work(db: sqlite3.Connection) -> Page:
            owner_seq = _seq_of(db, owner)
            sql = "SELECT id, body FROM items WHERE owner_seq = ?"
            params: list = [owner_seq]
            if after is not None:
                row = db.execute("SELECT position FROM items WHERE owner_seq = ? AND id = ?",
                                 (owner_seq, _bind(after))).fetchone()
                if row is None:
                    raise NotFound(after)
                sql += " AND position > ?" if order == ASC else " AND position < ?"
                params.append(row[0])
            sql += f" ORDER BY position {'ASC' if order == ASC else 'DESC'} LIMIT ?"
            rows = db.execute(sql, [*params, limit + 1]).fetchall()
            return Page([_item(row) for row in rows[:limit]], len(rows) > limit)
        return await self._read(work)

    async def ancestry(self, kind: str, id: str, limit: int) -> list[tuple[Record, list[Item]]] | None:
        # The chain as (seq, depth), followed by parent id through the unique index on id.
        chain = ("WITH RECURSIVE chain(seq, parent, depth) AS ("
                 " SELECT seq, parent, 0 FROM records WHERE id = ? AND kind = ?"
                 " UNION ALL SELECT records.seq, records.parent, chain.depth + 1 FROM chain"
                 " JOIN records ON records.id = chain.parent AND records.kind = ? WHERE chain.depth + 1 < ?) ")
        params = (_bind(id), kind, kind, limit)

        def work(db: sqlite3.Connection) -> list[tuple[Record, list[Item]]] | None:
            rows = db.execute(chain + f"SELECT {_RECORD_COLUMNS} FROM chain JOIN records ON records.seq = chain.seq "
                              "ORDER BY chain.depth", params).fetchall()
            if not rows:
                return None
            items: dict[int, list[Item]] = {row[0]: [] for row in rows}
            for seq, item_id, body in db.execute(chain + "SELECT items.owner_seq, items.id, items.body FROM chain "
                                                 "JOIN items ON items.owner_seq = chain.seq ORDER BY chain.depth, items.position", params):
                items[seq].append(_item((item_id, body)))
            metadata: dict[int, dict[str, str]] = {}
            for seq, key, value in db.execute(chain + "SELECT record_metadata.record_seq, key, value FROM chain "
                                              "JOIN record_metadata ON record_metadata.record_seq = chain.seq", params):
                metadata.setdefault(seq, {})[_unbind(key)] = _unbind(value)
            return [(_record(row, metadata.get(row[0], {})), items[row[0]]) for row in rows]
        return await self._read(work)

    async def all_items(self, owner: str) -> list[Item] | None:
        def work(db: sqlite3.Connection) -> list[Item] | None:
            seq = _seq(db, owner)
            if seq is None:
                return None
            return [_item(row) for row in db.execute("SELECT id, body FROM items WHERE owner_seq = ? ORDER BY position", (seq,))]
        return await self._read(work)

    async def get_item(self, owner: str, item_id: str) -> Item | None:
        def work(db: sqlite3.Connection) -> Item | None:
            row = db.execute("SELECT items.id, items.body FROM records JOIN items ON items.owner_seq = records.seq "
                             "WHERE records.id = ? AND items.id = ?", (_bind(owner), _bind(item_id))).fetchone()
            return None if row is None else _item(row)
        return await self._read(work)

    async def add_items(self, owner: str, items: Sequence[Item]) -> None:
        def work(db: sqlite3.Connection) -> None:
            owner_seq = _seq_of(db, owner)
            _append(db, owner_seq, items)
            _touch(db, owner_seq)
        await self._write(work)

    async def delete_item(self, owner: str, item_id: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            seq = _seq(db, owner)
            if seq is None or db.execute("DELETE FROM items WHERE owner_seq = ? AND id = ?", (seq, _bind(item_id))).rowcount == 0:
                return False
            _touch(db, seq)  # removing an item is a write to the owner too
            return True
        return await self._write(work)

    async def purge(self, updated_before: int) -> int:
        def batch(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM records WHERE seq IN (SELECT seq FROM records WHERE updated_at < ? LIMIT ?)",
                              (updated_before, PURGE_BATCH)).rowcount
        deleted = 0
        while True:  # one transaction a batch, so the write lock is never held for long
            count = await self._write(batch)
            deleted += count
            if count < PURGE_BATCH:
                return deleted

    async def close(self) -> None:
        def work() -> None:
            with self._write_lock, self._readers_lock:  # a write under way finishes first
                if self._closed:
                    return
                self._closed = True
                for reader in self._readers:
                    reader.close()
                self._readers.clear()
                self._writer.close()  # readers in use are closed when given back
        await trio.to_thread.run_sync(work)

    # -- running work in a worker thread

    async def _write(self, work: Callable[[sqlite3.Connection], object]):
        return await trio.to_thread.run_sync(self._write_now, work, limiter=self._write_limiter)

    def _write_now(self, work: Callable[[sqlite3.Connection], object]):
        with self._write_lock:
            if self._closed:
                raise StateError(f"the state database {self.path} is closed")
            db = self._writer
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")  # all or nothing: an error midway leaves nothing written
                raise
            return result

    async def _read(self, work: Callable, *args):
        return await trio.to_thread.run_sync(self._read_now, work, *args)

    def _read_now(self, work: Callable, *args):
        with self._readers_lock:
            if self._closed:
                raise StateError(f"the state database {self.path} is closed")
            db = self._readers.pop() if self._readers else None
        if db is None:
            db = _connect(self.path)
            db.execute("PRAGMA query_only = ON")
        try:
            db.execute("BEGIN")  # one snapshot for the call's several SELECTs
            try:
                return work(db, *args)
            finally:
                db.execute("ROLLBACK")
        finally:
            with self._readers_lock:
                if self._closed:
                    db.close()
                else:
                    self._readers.append(db)


def list_query(kind: str, model: str | None, metadata: dict[str, str], after_seq: int | None, limit: int,
               order: str) -> tuple[str, list]:
    """The SELECT of ``list`` (one row more than ``limit``, to tell has_more).

    With a metadata filter the walk starts at the first pair's index entries,
    already in ``seq`` order, and checks the other pairs by primary key: a
    CROSS JOIN keeps SQLite from starting at every record of the kind instead."""
    direction, compare = ("ASC", ">") if order == ASC else ("DESC", "<")
    pairs = [(_bind(key), _bind(value)) for key, value in metadata.items()]
    conditions, params = ["records.kind = ?"], [kind]
    if model is not None:
        conditions.append("records.model = ?")
        params.append(_bind(model))
    if not pairs:
        if after_seq is not None:
            conditions.append(f"records.seq {compare} ?")
            params.append(after_seq)
        sql = f"SELECT {_RECORD_COLUMNS} FROM records WHERE {' AND '.join(conditions)} ORDER BY records.seq {direction} LIMIT ?"
        return sql, [*params, limit + 1]
    joins, join_params = ["record_metadata AS m0"], []
    for n, pair in enumerate(pairs[1:], 1):
        joins.append(f"CROSS JOIN record_metadata AS m{n} ON m{n}.record_seq = m0.record_seq AND m{n}.key = ? AND m{n}.value = ?")
        join_params.extend(pair)
    joins.append("CROSS JOIN records ON records.seq = m0.record_seq")
    conditions[:0] = ["m0.key = ?", "m0.value = ?"]
    params[:0] = pairs[0]
    if after_seq is not None:
        conditions.append(f"m0.record_seq {compare} ?")
        params.append(after_seq)
    sql = (f"SELECT {_RECORD_COLUMNS} FROM {' '.join(joins)} WHERE {' AND '.join(conditions)} "
           f"ORDER BY m0.record_seq {direction} LIMIT ?")
    return sql, [*join_params, *params, limit + 1]


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: the module starts no transactions of its own; we BEGIN
    # and COMMIT. check_same_thread=False: a connection moves between worker
    # threads, but is only ever used by one at a time.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA foreign_keys = ON")  # per connection; the items' cascade needs it
    return db


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Brings the schema to the newest version in one transaction (also when
    another process opens the same file at once: BEGIN IMMEDIATE serializes them)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StateError(f"the state database {path} has schema version {version}, but this pycompat knows "
                             f"versions up to {len(MIGRATIONS)}: it was written by a newer pycompat")
        for number in range(version + 1, len(MIGRATIONS) + 1):
            for statement in _statements(MIGRATIONS[number - 1]):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _statements(script: str):
    """A script's statements, one at a time: ``executescript`` would commit the migration's transaction first."""
    statement = ""
    for piece in script.split(";"):
        statement += piece + ";"
        if sqlite3.complete_statement(statement):  # a ';' inside a string literal does not end it
            if statement.strip("; \n"):
                yield statement
            statement = ""


def _bind(text: str | None):
    """Text as SQLite can take it. A str with a lone surrogate (JSON allows
    them, UTF-8 does not) goes in as its bytes: stored, found and read back
    exactly, and never equal to any valid text."""
    if text is None:
        return None
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _unbind(value):
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


def _dumps(body: dict) -> str:
    # ASCII escapes: any Python str, lone surrogates included, is stored and read back exactly.
    return json.dumps(body, ensure_ascii=True, separators=(",", ":"))


def _seq(db: sqlite3.Connection, id: str, kind: str | None = None) -> int | None:
    """The record's place in the save order (its row's key); None when it is not stored."""
    if kind is None:
        row = db.execute("SELECT seq FROM records WHERE id = ?", (_bind(id),)).fetchone()
    else:
        row = db.execute("SELECT seq FROM records WHERE id = ? AND kind = ?", (_bind(id), kind)).fetchone()
    return None if row is None else row[0]


def _seq_of(db: sqlite3.Connection, id: str) -> int:
    """The seq of a record that must be stored (an owner): NotFound when it is not."""
    seq = _seq(db, id)
    if seq is None:
        raise NotFound(id)
    return seq


def _touch(db: sqlite3.Connection, seq: int) -> None:
    db.execute("UPDATE records SET updated_at = ? WHERE seq = ?", (int(time.time()), seq))


def _insert_metadata(db: sqlite3.Connection, seq: int, metadata: dict[str, str]) -> None:
    db.executemany("INSERT INTO record_metadata (record_seq, key, value) VALUES (?, ?, ?)",
                   [(seq, _bind(key), _bind(value)) for key, value in metadata.items()])


def _append(db: sqlite3.Connection, owner_seq: int, items: Sequence[Item]) -> None:
    """Numbers ``items`` after the owner's last; the write lock keeps another writer from numbering in between."""
    last = db.execute("SELECT coalesce(max(position), 0) FROM items WHERE owner_seq = ?", (owner_seq,)).fetchone()[0]
    for position, item in enumerate(items, last + 1):
        try:
            db.execute("INSERT INTO items (owner_seq, position, id, body) VALUES (?, ?, ?, ?)",
                       (owner_seq, position, _bind(item.id), _dumps(item.body)))
        except sqlite3.IntegrityError as e:
            raise DuplicateId(item.id) from e


def _get(db: sqlite3.Connection, kind: str, id: str) -> Record | None:
    row = db.execute(f"SELECT {_RECORD_COLUMNS} FROM records WHERE id = ? AND kind = ?", (_bind(id), kind)).fetchone()
    return None if row is None else _record(row, _metadata_of(db, [row[0]]).get(row[0], {}))


def _metadata_of(db: sqlite3.Connection, seqs: list[int]) -> dict[int, dict[str, str]]:
    found: dict[int, dict[str, str]] = {}
    if seqs:
        rows = db.execute(f"SELECT record_seq, key, value FROM record_metadata WHERE record_seq IN ({','.join('?' * len(seqs))})",
                          seqs)
        for seq, key, value in rows:
            found.setdefault(seq, {})[_unbind(key)] = _unbind(value)
    return found


def _record(row: tuple, metadata: dict[str, str]) -> Record:
    _seq, kind, id, created_at, updated_at, model, body, parent = row
    return Record(kind=kind, id=_unbind(id), created_at=created_at, body=json.loads(body), metadata=metadata,
                  model=_unbind(model), updated_at=updated_at, parent=_unbind(parent))


def _item(row: tuple) -> Item:
    return Item(id=_unbind(row[0]), body=json.loads(row[1]))
