"""The SQLite store: what the routes rely on (round trips, filters, order,
pages, atomic writes) and what the file must survive (reopening, a killed
process, an old or newer or foreign file)."""

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from pycompat.state import sqlite as sqlite_module
from pycompat.state.sqlite import MIGRATIONS, SQLiteStore, StateError, list_query
from pycompat.state.store import (ASC, CHAT_COMPLETION, CONVERSATION, DESC, RESPONSE, DuplicateId, Item, NotFound,
                                  Record)


@pytest.fixture
async def store(tmp_path):
    store = SQLiteStore.open(tmp_path / "state" / "db.sqlite")
    yield store
    await store.close()


def record(kind, id, created_at=1_700_000_000, **fields):
    return Record(kind=kind, id=id, created_at=created_at, body={"id": id, "object": kind, **fields.pop("body", {})},
                  **fields)


def message(id, text="hi"):
    return Item(id=id, body={"type": "message", "id": id, "content": [{"type": "input_text", "text": text}]})


def ids(page_or_list):
    return [x.id for x in getattr(page_or_list, "data", page_or_list)]


async def test_each_kind_round_trips(store):
    for kind in (RESPONSE, CONVERSATION, CHAT_COMPLETION):
        saved = record(kind, f"{kind}-1", metadata={"user": "ann", "ü": "日本"}, model="m1",
                       body={"nested": [1, 2.5, None, True, {"s": "é\u2028"}]})
        await store.save(saved, [message("a"), message("b")])
        got = await store.get(kind, saved.id)
        assert got == Record(kind, saved.id, saved.created_at, saved.body, saved.metadata, "m1", updated_at=saved.created_at)
        assert ids(await store.all_items(saved.id)) == ["a", "b"]
        assert await store.get_item(saved.id, "b") == message("b")
    assert await store.get(RESPONSE, f"{CONVERSATION}-1") is None  # the kind is part of the address
    assert await store.get(RESPONSE, "nope") is None
    assert await store.all_items("nope") is None
    assert await store.get_item(f"{RESPONSE}-1", "nope") is None


async def test_any_python_text_round_trips(store):
    """Lone surrogates are valid in JSON strings, so a client can send them: ids, metadata and bodies keep them exactly."""
    odd = "x\ud800y\udfff"
    await store.save(record(CONVERSATION, "conv_1", metadata={odd: odd}, body={odd: odd}), [message(odd, odd)])
    got = await store.get(CONVERSATION, "conv_1")
    assert got.metadata == {odd: odd} and got.body[odd] == odd
    assert await store.get_item("conv_1", odd) == message(odd, odd)
    assert ids(await store.list(CONVERSATION, metadata={odd: odd})) == ["conv_1"]
    assert ids(await store.list(CONVERSATION, metadata={odd: "x\ufffdy\ufffd"})) == []
    with pytest.raises(NotFound):
        await store.list(CONVERSATION, after="\ud800")


async def test_metadata_filter_needs_every_pair(store):
    await store.save(record(CHAT_COMPLETION, "c1", metadata={"user": "ann", "team": "red"}, model="m1"))
    await store.save(record(CHAT_COMPLETION, "c2", metadata={"user": "ann", "team": "blue"}, model="m1"))
    await store.save(record(CHAT_COMPLETION, "c3", metadata={"user": "ann", "team": "red", "x": "1"}, model="m2"))
    await store.save(record(RESPONSE, "r1", metadata={"user": "ann", "team": "red"}))
    assert ids(await store.list(CHAT_COMPLETION, metadata={"user": "ann"})) == ["c1", "c2", "c3"]
    assert ids(await store.list(CHAT_COMPLETION, metadata={"user": "ann", "team": "red"})) == ["c1", "c3"]
    assert ids(await store.list(CHAT_COMPLETION, metadata={"team": "red", "user": "ann", "x": "1"})) == ["c3"]
    assert ids(await store.list(CHAT_COMPLETION, metadata={"user": "ann", "team": "red"}, model="m1")) == ["c1"]
    assert ids(await store.list(CHAT_COMPLETION, model="m2")) == ["c3"]
    assert ids(await store.list(CHAT_COMPLETION, metadata={"user": "bob"})) == []
    assert ids(await store.list(CHAT_COMPLETION, metadata={"team": "red"}, order=DESC, after="c3")) == ["c1"]
    assert ids(await store.list(CHAT_COMPLETION, metadata={})) == ["c1", "c2", "c3"]


@pytest.mark.parametrize("model, metadata, after_seq", [
    (None, {}, None), ("m", {}, 5), (None, {"a": "1"}, None), ("m", {"a": "1", "b": "2", "c": "3"}, 7)])
@pytest.mark.parametrize("order", [ASC, DESC])
def test_list_walks_an_index_in_order(tmp_path, model, metadata, after_seq, order):
    """No scan of the records, and no sort: the index already gives the order asked for."""
    store = SQLiteStore.open(tmp_path / "db.sqlite")
    sql, params = list_query(CHAT_COMPLETION, model, metadata, after_seq, 20, order)
    with sqlite3.connect(store.path) as db:
        plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params)]
    trio.run(store.close)
    assert all(step.startswith("SEARCH") for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan


async def test_pages_of_records_and_items(store):
    for n in range(7):
        await store.save(record(RESPONSE, f"r{n}"))
    await store.save(record(CONVERSATION, "conv"), [message(f"i{n}") for n in range(7)])
    for read in (lambda **kw: store.list(RESPONSE, **kw), lambda **kw: store.items("conv", **kw)):
        prefix = ids((await read(limit=1)).data)[0][0]
        names = [f"{prefix}{n}" for n in range(7)]
        page = await read(limit=3)
        assert (ids(page), page.has_more) == (names[:3], True)
        page = await read(after=names[2], limit=3)
        assert (ids(page), page.has_more) == (names[3:6], True)
        page = await read(after=names[3], limit=3)
        assert (ids(page), page.has_more) == (names[4:7], False)
        page = await read(after=names[6])
        assert (ids(page), page.has_more) == ([], False)
        page = await read(order=DESC, limit=2)
        assert (ids(page), page.has_more) == (names[:-3:-1], True)
        page = await read(order=DESC, after=names[2], limit=5)
        assert (ids(page), page.has_more) == (names[1::-1], False)
        page = await read(limit=7)
        assert (ids(page), page.has_more) == (names, False)
        with pytest.raises(NotFound):
            await read(after="unknown")
    with pytest.raises(NotFound):
        await store.list(CONVERSATION, after="r1")  # a record of another kind is no cursor here
    with pytest.raises(NotFound):
        await store.items("nope")


async def test_items_keep_the_order_they_were_added_in(store):
    await store.save(record(CONVERSATION, "conv"), [message("a"), message("b")])
    await store.add_items("conv", [message("c")])
    await store.save(record(RESPONSE, "resp"), [message("in")], append_to="conv", appended=[message("d"), message("e")])
    assert await store.delete_item("conv", "b")
    await store.add_items("conv", [message("f")])
    assert ids(await store.all_items("conv")) == ["a", "c", "d", "e", "f"]
    assert ids(await store.all_items("resp")) == ["in"]
    assert not await store.delete_item("conv", "b")
    assert not await store.delete_item("nope", "a")
    with pytest.raises(NotFound):
        await store.add_items("nope", [message("x")])


async def test_concurrent_writers_never_interleave_or_collide(store):
    await store.save(record(CONVERSATION, "conv"))

    async def add(n):
        await store.add_items("conv", [message(f"add{n}.{k}") for k in range(5)])

    async def save(n):
        await store.save(record(RESPONSE, f"resp{n}"), [message(f"own{n}")], append_to="conv",
                         appended=[message(f"save{n}.{k}") for k in range(3)])

    async with trio.open_nursery() as nursery:
        for n in range(32):
            nursery.start_soon(add, n)
            nursery.start_soon(save, n)
    got = ids(await store.all_items("conv"))
    assert len(got) == 32 * 5 + 32 * 3
    i = 0
    while i < len(got):  # every call's items side by side, in the order given
        call = got[i].split(".")[0]
        size = 5 if call.startswith("add") else 3
        assert got[i:i + size] == [f"{call}.{k}" for k in range(size)], got[i:i + size]
        i += size
    assert len(ids(await store.list(RESPONSE, limit=100))) == 32


async def test_a_failed_save_writes_nothing(store):
    with pytest.raises(NotFound):
        await store.save(record(RESPONSE, "resp"), [message("a")], append_to="conv_missing", appended=[message("b")])
    assert await store.get(RESPONSE, "resp") is None
    await store.save(record(CONVERSATION, "conv"), [message("a")])
    with pytest.raises(DuplicateId):
        await store.save(record(CONVERSATION, "conv"))
    with pytest.raises(DuplicateId):  # an appended id the conversation has already
        await store.save(record(RESPONSE, "resp"), [message("x")], append_to="conv", appended=[message("b"), message("a")])
    assert await store.get(RESPONSE, "resp") is None
    with pytest.raises(DuplicateId):  # twice in one call
        await store.add_items("conv", [message("c"), message("c")])
    assert ids(await store.all_items("conv")) == ["a"]
    assert (await store.get(CONVERSATION, "conv")).updated_at == record(CONVERSATION, "conv").created_at


async def test_updates_and_deletes(store):
    await store.save(record(CONVERSATION, "conv", metadata={"a": "1", "b": "2"}), [message("x")])
    before = int(time.time())
    updated = await store.update_metadata(CONVERSATION, "conv", {"c": "3"})
    assert updated.metadata == {"c": "3"} and updated.updated_at >= before
    assert await store.get(CONVERSATION, "conv") == updated
    assert ids(await store.list(CONVERSATION, metadata={"a": "1"})) == []
    assert await store.update_metadata(RESPONSE, "conv", {}) is None
    assert not await store.delete(RESPONSE, "conv")
    assert await store.delete(CONVERSATION, "conv")
    assert not await store.delete(CONVERSATION, "conv")
    assert await store.get_item("conv", "x") is None
    with sqlite3.connect(store.path) as db:  # the cascade took the items and metadata along
        assert db.execute("SELECT (SELECT count(*) FROM items) + (SELECT count(*) FROM record_metadata)").fetchone() == (0,)


async def test_purge_takes_what_was_not_written_since(store, monkeypatch):
    monkeypatch.setattr(sqlite_module, "PURGE_BATCH", 2)  # several batches
    for n in range(5):
        await store.save(record(RESPONSE, f"old{n}", created_at=1000, metadata={"k": "v"}), [message("a")])
    await store.save(record(CONVERSATION, "touched", created_at=1000))
    await store.add_items("touched", [message("b")])  # written now: stays
    await store.save(record(RESPONSE, "new", created_at=3000))
    assert await store.purge(2000) == 5
    assert ids(await store.list(RESPONSE)) == ["new"]
    assert ids(await store.all_items("touched")) == ["b"]
    assert await store.purge(2000) == 0


async def test_everything_is_there_after_reopening(tmp_path):
    path = tmp_path / "db.sqlite"
    store = SQLiteStore.open(path)
    await store.save(record(CONVERSATION, "conv", metadata={"a": "1"}), [message("x"), message("y")])
    await store.close()
    with pytest.raises(StateError, match="closed"):
        await store.get(CONVERSATION, "conv")
    with pytest.raises(StateError, match="closed"):
        await store.add_items("conv", [message("z")])
    store = SQLiteStore.open(path)
    assert (await store.get(CONVERSATION, "conv")).metadata == {"a": "1"}
    assert ids(await store.all_items("conv")) == ["x", "y"]
    await store.close()


def test_a_returned_write_survives_a_killed_process(tmp_path):
    path = tmp_path / "db.sqlite"
    script = f"""
import os, signal, trio
from pycompat.state.sqlite import SQLiteStore
from pycompat.state.store import Item, Record
store = SQLiteStore.open({str(path)!r})
async def write():
    await store.save(Record("conversation", "conv", 1, {{"id": "conv"}}), [Item("x", {{"n": 1}})])
    await store.add_items("conv", [Item("y", {{"n": 2}})])
trio.run(write)
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    store = SQLiteStore.open(path)
    assert ids(trio.run(store.all_items, "conv")) == ["x", "y"]
    trio.run(store.close)


def test_an_empty_file_is_migrated(tmp_path):
    path = tmp_path / "db.sqlite"
    path.write_bytes(b"")
    trio.run(SQLiteStore.open(path).close)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    trio.run(SQLiteStore.open(path).close)  # migrated already: nothing to do


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "db.sqlite"
    trio.run(SQLiteStore.open(path).close)
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StateError) as refused:
        SQLiteStore.open(path)
    assert str(path) in str(refused.value)
    assert f"version {len(MIGRATIONS) + 1}" in str(refused.value) and f"up to {len(MIGRATIONS)}" in str(refused.value)


def test_a_file_that_is_no_database_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are not the tables you are looking for\n" * 100)
    with pytest.raises(StateError, match=f"{path} is not a usable SQLite database"):
        SQLiteStore.open(path)
    assert path.read_bytes().startswith(b"these are not")
    with pytest.raises(StateError, match="cannot open"):
        SQLiteStore.open(path / "under_a_file.db")


async def test_a_big_write_does_not_block_the_loop(store):
    await store.save(record(CONVERSATION, "conv"))
    items = [message(f"i{n}", "word " * 200) for n in range(20_000)]
    ticks = 0
    gaps = []

    async def tick():
        nonlocal ticks
        last = time.monotonic()
        while True:
            await trio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            ticks += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        start = time.monotonic()
        await store.add_items("conv", items)
        took = time.monotonic() - start
        nursery.cancel_scope.cancel()
    assert took > 0.1, "too small a write to tell"
    assert ticks >= 5 and max(gaps, default=took) < max(0.1, took / 4), (ticks, gaps[:10], took)


async def test_queued_writers_hold_no_worker_threads(store, monkeypatch):
    """Writes are one at a time; the others wait for their turn in trio, not each
    in one of trio's 40 default worker threads, which every request's JSON
    parsing and tokenizing need (on a slow disk those waited seconds)."""
    write_now = store._write_now

    def slow_disk(work):
        def slowly(db):
            time.sleep(0.02)  # a commit's fsync on a slow disk, under the write lock
            return work(db)
        return write_now(slowly)

    monkeypatch.setattr(store, "_write_now", slow_disk)
    waits = []

    async def other_request():
        for _ in range(10):
            start = time.monotonic()
            await trio.to_thread.run_sync(lambda: None)
            waits.append(time.monotonic() - start)
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        for n in range(60):
            nursery.start_soon(store.save, record(RESPONSE, f"resp_{n}"))
        await trio.sleep(0.05)  # the writers are queued
        nursery.start_soon(other_request)
    assert len((await store.list(RESPONSE, limit=100)).data) == 60
    assert max(waits) < 0.1, f"a worker thread took {max(waits):.2f} s to get"


async def test_ancestry_follows_parents_in_one_read(store):
    await store.save(record(RESPONSE, "resp_a", metadata={"k": "v"}), [message("msg_a")])
    await store.save(record(RESPONSE, "resp_b", parent="resp_a"), [message("msg_b1"), message("msg_b2")])
    await store.save(record(RESPONSE, "resp_c", parent="resp_b"), [message("msg_c")])
    await store.save(record(CONVERSATION, "conv_x", parent="resp_c"))  # another kind is never followed into
    chain = await store.ancestry(RESPONSE, "resp_c", 10)
    assert [(r.id, ids(items)) for r, items in chain] == [("resp_c", ["msg_c"]), ("resp_b", ["msg_b1", "msg_b2"]), ("resp_a", ["msg_a"])]
    assert chain[2][0].metadata == {"k": "v"} and chain[0][0].parent == "resp_b"
    assert ids(r for r, _ in await store.ancestry(RESPONSE, "resp_c", 2)) == ["resp_c", "resp_b"]
    assert await store.ancestry(RESPONSE, "resp_nope", 10) is None
    assert await store.ancestry(RESPONSE, "conv_x", 10) is None
    await store.delete(RESPONSE, "resp_b")  # a deleted turn: the chain ends before it
    assert ids(r for r, _ in await store.ancestry(RESPONSE, "resp_c", 10)) == ["resp_c"]


def test_a_version_1_database_is_migrated_with_its_chains(tmp_path, monkeypatch):
    """Version 2 added the parent column: responses stored before it get theirs from their bodies."""
    path = tmp_path / "db.sqlite"
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", MIGRATIONS[:1])
    trio.run(SQLiteStore.open(path).close)
    with sqlite3.connect(path) as db:  # rows as version 1 wrote them
        for seq, id, previous in ((1, "resp_1", None), (2, "resp_2", "resp_1")):
            body = json.dumps({"id": id, "previous_response_id": previous})
            db.execute("INSERT INTO records (seq, id, kind, created_at, updated_at, model, body) VALUES (?, ?, 'response', 0, 0, NULL, ?)",
                       (seq, id, body))
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", MIGRATIONS)
    store = SQLiteStore.open(path)

    async def check():
        chain = await store.ancestry(RESPONSE, "resp_2", 10)
        assert [(r.id, r.parent) for r, _ in chain] == [("resp_2", "resp_1"), ("resp_1", None)]
        await store.close()

    trio.run(check)
