"""The storage interface: what the API's stored objects need, in no database's terms.

A ``Record`` is one stored object: a response, a conversation or a chat
completion. Its ``body`` is the object as the API shows it (JSON), except
``metadata``, which is kept beside it (and can be queried and updated) and
put into the body when it is served. A record owns an ordered list of
``Item``s: a response's input items, a conversation's items, a chat
completion's request messages. Items are numbered by the store as they are
added, so their order is the order they were added in, also when several
writers append at once.

Ids are made by the caller (random, with the API's prefixes: ``resp_``,
``conv_``, ``chatcmpl-``, ``msg_``), so replicas sharing one database never
need to coordinate. Every method is async and does its work off the event
loop; a method that writes returns once the write is durable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

RESPONSE = "response"
CONVERSATION = "conversation"
CHAT_COMPLETION = "chat.completion"
KINDS = (RESPONSE, CONVERSATION, CHAT_COMPLETION)

ASC, DESC = "asc", "desc"


@dataclass
class Record:
    kind: str  # RESPONSE, CONVERSATION or CHAT_COMPLETION
    id: str
    created_at: int  # unix seconds
    body: dict  # the object as served, but for its metadata
    metadata: dict[str, str] = field(default_factory=dict)
    model: str | None = None  # what list() filters on (chat completions)
    updated_at: int | None = None  # last write to it or its items (unix seconds); the store sets it
    parent: str | None = None  # the record of its kind it continues (a response's previous_response_id); see ancestry()


@dataclass
class Item:
    id: str  # unique among its owner's items
    body: dict  # the item as served


@dataclass
class Page:
    """A slice of a list, in the order asked for; ``has_more``: more follow it."""

    data: list  # Records or Items
    has_more: bool


class NotFound(Exception):
    """The record named (an owner, a cursor) is not stored."""


class DuplicateId(Exception):
    """A record or item with that id is stored already."""


class Store(ABC):
    """Stored records and their items. Implementations must be safe for many
    concurrent callers (streams finishing at once) and keep each call atomic."""

    @abstractmethod
    async def save(self, record: Record, items: Sequence[Item] = (), append_to: str | None = None,
                   appended: Sequence[Item] = ()) -> None:
        """Stores ``record`` with its ``items`` (in order) and, in the same
        transaction, adds ``appended`` to the end of record ``append_to``'s items
        (a response's input and output joining its conversation). All or
        nothing: NotFound when ``append_to`` is not stored, DuplicateId when
        ``record.id`` is stored already or an appended item's id is taken."""

    @abstractmethod
    async def get(self, kind: str, id: str) -> Record | None:
        """The record, or None when no record of that kind has that id."""

    @abstractmethod
    async def update_metadata(self, kind: str, id: str, metadata: dict[str, str]) -> Record | None:
        """Replaces the record's metadata; returns it updated, or None when it is not stored."""

    @abstractmethod
    async def delete(self, kind: str, id: str) -> bool:
        """Deletes the record and its items; False when it was not stored."""

    @abstractmethod
    async def list(self, kind: str, *, model: str | None = None, metadata: dict[str, str] | None = None,
                   after: str | None = None, limit: int = 20, order: str = ASC) -> Page:
        """Records of ``kind`` in the order they were saved (``DESC``: newest
        first), those with ``model`` and every ``metadata`` pair, starting after
        the record ``after`` (NotFound when it is not stored); at most ``limit``.
        Indexed: it never reads every record."""

    @abstractmethod
    async def ancestry(self, kind: str, id: str, limit: int) -> list[tuple[Record, list[Item]]] | None:
        """The record and those it continues (its ``parent``, that one's, ...),
        newest first, each with its items, read in one snapshot; at most
        ``limit`` records. The chain ends early at a parent that is not stored
        (deleted or expired). None when ``id`` itself is not stored."""

    @abstractmethod
    async def items(self, owner: str, *, after: str | None = None, limit: int = 20, order: str = ASC) -> Page:
        """The owner's items in order (``DESC``: last first), after the item
        ``after``; NotFound when the owner, or ``after`` among its items, is not stored."""

    @abstractmethod
    async def all_items(self, owner: str) -> list[Item] | None:
        """Every item of the owner, in order; None when the owner is not stored."""

    @abstractmethod
    async def get_item(self, owner: str, item_id: str) -> Item | None:
        """One item of the owner; None when either is not stored."""

    @abstractmethod
    async def add_items(self, owner: str, items: Sequence[Item]) -> None:
        """Adds ``items`` to the end of the owner's, atomically; NotFound when
        the owner is not stored, DuplicateId when an item's id is taken."""

    @abstractmethod
    async def delete_item(self, owner: str, item_id: str) -> bool:
        """Deletes one item; False when it (or its owner) is not stored."""

    @abstractmethod
    async def purge(self, updated_before: int) -> int:
        """Deletes every record last written before ``updated_before`` (unix
        seconds), with its items; returns how many records went."""

    @abstractmethod
    async def close(self) -> None:
        """Finishes pending work and releases the database; later calls fail."""
