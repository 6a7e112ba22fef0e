"""Witness slots (DESIGN §2, §4): which slot a key's writes raise and its reads check.

A slot is `xxh3_64(encoded bucket, key) mod WITNESS_SLOTS` — never Python's salted
`hash()`, so every process computes the same slot. Bucket operations touch the
bucket's own slot (key ""), object operations the object's slot; a conservative
witness may share slots between keys: it can say "stale" when nothing changed,
never "current" when something did.
"""

from __future__ import annotations

import xxhash

from common import seams
from index import keys


def slot_of(bucket: str, key: str, slots: int) -> int:
    return xxhash.xxh3_64_intdigest(keys.encode_string(bucket) + keys.encode_string(key)) % slots


def slots_of(mutation: seams.Mutation, slots: int) -> tuple[int, ...]:
    """The slots a mutation's entry raises: its key's, and its bucket's for bucket
    operations; none for maintenance (Reaped, ReplacePlacement), which changes no
    answer a cache holds that a reader must see at once (a GET that finds a moved
    shard re-reads, DESIGN §4 step 5)."""
    if isinstance(mutation, seams.MAINTENANCE):
        return ()
    if isinstance(mutation, (seams.CreateBucket, seams.DeleteBucket)):
        return (slot_of(mutation.bucket, "", slots),)
    return (slot_of(mutation.bucket, mutation.key, slots),)
