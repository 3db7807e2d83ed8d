"""Ids that are unique only within an owner: an event id within its tenant, a request id within its client.

Producers choose event ids and request ids, so two tenants (or two clients) may use the same
one. Wherever such an id keys something (the cleaning dedup window, MongoDB `_id` of events,
proofs and predictions, the settlement's count of requests), it is scoped by its owner:

    scoped_id("acme", "evt-1")        # '4:acme:evt-1'
    owner_and_id("4:acme:evt-1")      # ('acme', 'evt-1')

The owner is length-prefixed, so no choice of owner and id can produce another pair's key
(`("a:b", "c")` is '3:a:b:c', `("a", "b:c")` is '1:a:b:c'). A string rather than a compound
`{"t": ..., "e": ...}` document: it is hashable (the sink, the dedup table and the Merkle
batches key Python dicts by it), the dedup changelog's keys are strings, and MongoDB and FerretDB
compare it exactly, with no field order to get wrong in a query.
"""

from __future__ import annotations


class ScopedIdError(ValueError):
    """Text that is not a scoped id; the message says which part is wrong."""


def scoped_id(owner: str | None, local_id: str) -> str:
    """`local_id` scoped by `owner` (None, e.g. an anonymous client, is the empty owner)."""
    owner = owner or ""
    return f"{len(owner)}:{owner}:{local_id}"


def owner_and_id(text: str) -> tuple[str, str]:
    """The (owner, local id) a scoped id was made from; ScopedIdError for other text."""
    length, colon, rest = text.partition(":")
    if not colon or not (length.isascii() and length.isdigit()) or (length != "0" and length.startswith("0")):
        raise ScopedIdError(f"{text[:40]!r} does not start with the owner's length and ':'")
    size = int(length)
    if len(rest) <= size or rest[size] != ":":
        raise ScopedIdError(f"{text[:40]!r}: no ':' after an owner of {size} characters")
    return rest[:size], rest[size + 1:]
