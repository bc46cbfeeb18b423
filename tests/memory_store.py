"""A ``Store`` in a few dicts, for tests that need stored state without a
database: every method does what store.py's docstrings say, so the routes
behave as they will on SQLite. Values are copied in and out, as a database's
would be, so a route that changes what it got back changes nothing stored."""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Sequence

import trio

from pycompat.state.store import ASC, DESC, DuplicateId, Item, NotFound, Page, Record, Store


class MemoryStore(Store):
    def __init__(self) -> None:
        self._records: dict[str, tuple[int, Record]] = {}  # id -> (order saved, record)
        self._items: dict[str, dict[str, tuple[int, Item]]] = {}  # owner id -> item id -> (order added, item)
        self._order = itertools.count()
        self._closed = False

    async def _enter(self) -> None:
        """A checkpoint, as every real store's call is; then fails once closed."""
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise RuntimeError("the store is closed")

    def _touch(self, id: str) -> None:
        self._records[id][1].updated_at = int(time.time())

    def _check_new_items(self, owner: str | None, items: Sequence[Item]) -> None:
        taken = set(self._items.get(owner, {})) if owner is not None else set()
        for item in items:
            if item.id in taken:
                raise DuplicateId(item.id)
            taken.add(item.id)

    def _append(self, owner: str, items: Sequence[Item]) -> None:
        mine = self._items.setdefault(owner, {})
        for item in items:
            mine[item.id] = (next(self._order), copy.deepcopy(item))

    async def save(self, record: Record, items: Sequence[Item] = (), append_to: str | None = None,
                   appended: Sequence[Item] = ()) -> None:
        await self._enter()
        if record.id in self._records:
            raise DuplicateId(record.id)
        if append_to is not None and append_to not in self._records:
            raise NotFound(append_to)
        self._check_new_items(None, items)
        if append_to is not None:
            self._check_new_items(append_to, appended)
        stored = copy.deepcopy(record)
        stored.updated_at = int(time.time())
        self._records[record.id] = (next(self._order), stored)
        self._items[record.id] = {}
        self._append(record.id, items)
        if append_to is not None:
            self._append(append_to, appended)
            self._touch(append_to)

    def _record(self, kind: str, id: str) -> Record | None:
        entry = self._records.get(id)
        return entry[1] if entry is not None and entry[1].kind == kind else None

    async def get(self, kind: str, id: str) -> Record | None:
        await self._enter()
        return copy.deepcopy(self._record(kind, id))

    async def update_metadata(self, kind: str, id: str, metadata: dict[str, str]) -> Record | None:
        await self._enter()
        record = self._record(kind, id)
        if record is None:
            return None
        record.metadata = dict(metadata)
        self._touch(id)
        return copy.deepcopy(record)

    async def delete(self, kind: str, id: str) -> bool:
        await self._enter()
        if self._record(kind, id) is None:
            return False
        del self._records[id]
        self._items.pop(id, None)
        return True

    @staticmethod
    def _page(entries: list[tuple[int, object]], after: str | None, after_order: int | None, limit: int, order: str) -> Page:
        """``entries`` (order, value) sorted as asked, those past the cursor, at most ``limit``."""
        entries = sorted(entries, key=lambda e: e[0], reverse=order == DESC)
        if after is not None:
            entries = [e for e in entries if (e[0] > after_order if order == ASC else e[0] < after_order)]
        return Page([copy.deepcopy(v) for _, v in entries[:limit]], has_more=len(entries) > limit)

    async def list(self, kind: str, *, model: str | None = None, metadata: dict[str, str] | None = None,
                   after: str | None = None, limit: int = 20, order: str = ASC) -> Page:
        await self._enter()
        after_order = None
        if after is not None:
            if self._record(kind, after) is None:
                raise NotFound(after)
            after_order = self._records[after][0]
        wanted = [(n, r) for n, r in self._records.values()
                  if r.kind == kind and (model is None or r.model == model)
                  and all(r.metadata.get(k) == v for k, v in (metadata or {}).items())]
        return self._page(wanted, after, after_order, limit, order)

    async def items(self, owner: str, *, after: str | None = None, limit: int = 20, order: str = ASC) -> Page:
        await self._enter()
        if owner not in self._records:
            raise NotFound(owner)
        mine = self._items[owner]
        if after is not None and after not in mine:
            raise NotFound(after)
        return self._page(list(mine.values()), after, mine[after][0] if after is not None else None, limit, order)

    async def ancestry(self, kind: str, id: str, limit: int) -> list[tuple[Record, list[Item]]] | None:
        await self._enter()
        chain = []
        while id is not None and id in self._records and self._records[id][1].kind == kind and len(chain) < limit:
            record = copy.deepcopy(self._records[id][1])
            chain.append((record, [copy.deepcopy(item) for _, item in sorted(self._items[id].values(), key=lambda e: e[0])]))
            id = record.parent
        return chain or None

    async def all_items(self, owner: str) -> list[Item] | None:
        await self._enter()
        if owner not in self._records:
            return None
        return [copy.deepcopy(item) for _, item in sorted(self._items[owner].values(), key=lambda e: e[0])]

    async def get_item(self, owner: str, item_id: str) -> Item | None:
        await self._enter()
        entry = self._items.get(owner, {}).get(item_id)
        return copy.deepcopy(entry[1]) if entry is not None else None

    async def add_items(self, owner: str, items: Sequence[Item]) -> None:
        await self._enter()
        if owner not in self._records:
            raise NotFound(owner)
        self._check_new_items(owner, items)
        self._append(owner, items)
        self._touch(owner)

    async def delete_item(self, owner: str, item_id: str) -> bool:
        await self._enter()
        if item_id not in self._items.get(owner, {}):
            return False
        del self._items[owner][item_id]
        self._touch(owner)
        return True

    async def purge(self, updated_before: int) -> int:
        await self._enter()
        old = [id for id, (_, r) in self._records.items() if r.updated_at < updated_before]
        for id in old:
            del self._records[id]
            self._items.pop(id, None)
        return len(old)

    async def close(self) -> None:
        self._closed = True
