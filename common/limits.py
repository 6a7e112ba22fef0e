"""Every limit, named once (DESIGN §15).

One frozen dataclass, read from the cluster TOML's `[limits]` table (tests shrink
them) and validated on load. Names are upper case as in the design document.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB


@dataclass(frozen=True)
class Limits:
    # Erasure coding and the byte path (DESIGN §7).
    EC_K: int = 4
    EC_M: int = 2
    INLINE_MAX: int = 4 * KiB
    SMALL_OBJECT_MAX: int = 256 * KiB
    CHUNK_MAX: int = 1 * MiB
    CHECKSUM_BLOCK: int = 64 * KiB
    PUT_HEDGE_MS: int = 250
    READ_HEDGE_MS: int = 50
    # Metadata (DESIGN §3, §4).
    READ_WAIT_MS: int = 50
    COMMIT_DEADLINE_MS: int = 20_000
    MAX_CLOCK_SKEW_MS: int = 1_000
    DEDUP_WINDOW_MS: int = 15 * 60 * 1000
    MAX_WRITE_AGE_MS: int = 24 * 3600 * 1000
    REAP_DELAY_MS: int = 3600 * 1000
    DELETE_OBJECTS_CONCURRENCY: int = 64
    WITNESS_SLOTS: int = 1 << 20
    CACHE_MAX_BYTES: int = 256 * MiB
    # S3 limits, as AWS.
    MAX_OBJECT_SIZE: int = 5 * TiB
    MAX_PUT_SIZE: int = 5 * GiB
    MIN_PART_SIZE: int = 5 * MiB
    MAX_PART_SIZE: int = 5 * GiB
    MAX_PART_NUMBER: int = 10_000
    MAX_KEY_BYTES: int = 1024
    MAX_USER_METADATA_BYTES: int = 2 * KiB
    MAX_KEYS: int = 1000
    MAX_DELETE_OBJECTS: int = 1000
    MAX_PRESIGN_EXPIRES_S: int = 7 * 24 * 3600
    MAX_REQUEST_XML_BYTES: int = 2 * MiB
    MAX_BUCKETS_PER_OWNER: int = 10_000
    # HTTP front door.
    MAX_HEADER_BYTES: int = 64 * KiB
    MAX_AWS_CHUNK_BYTES: int = 16 * MiB
    MAX_INFLIGHT_REQUESTS: int = 1024
    # Shardstore (DESIGN §9).
    SHARD_MAX_BYTES: int = 64 * MiB
    SHARD_CHUNK_MAX_BYTES: int = 4 * MiB
    SHARD_STREAMS_MAX: int = 256
    EXTENT_MAX_BYTES: int = 256 * MiB
    DISK_RESERVE_FRACTION: float = 0.02
    SHARD_LIST_MAX: int = 1000
    SHARD_INDEX_FLUSH_ENTRIES: int = 4096
    SHARD_INDEX_FLUSH_MS: int = 1000
    SHARD_WRITE_STEP_BYTES: int = 1 * MiB
    SHARD_COMPACT_LIVE_FRACTION: float = 0.5
    SHARD_SCRUB_BYTES_PER_S: int = 32 * MiB
    SHARD_COMPACT_INTERVAL_MS: int = 60_000     # the background compactor's pause between passes
    SHARD_COMPACT_BYTES_PER_S: int = 64 * MiB   # ... and the read rate of its copies
    SHARD_HEAT_HALF_LIFE_MS: int = 5000
    # The cluster BlobStore over shardstores (shardstore/blobstore.py).
    HOT_FACTOR: float = 2.0                     # a disk above this × the median bytes/s is hot (DESIGN §8)
    DISK_STAT_INTERVAL_MS: int = 1000           # the disk monitor's Stat round
    SHARD_CALL_TIMEOUT_MS: int = 10_000         # deadline of one shard call (put, get, delete, stat)
    BLOB_READ_PREFETCH_STRIPES: int = 3         # stripes a GET fetches ahead of the one it yields
    SMALL_PUT_BATCH_MAX: int = 64               # small shards per put_many call to one disk
    SMALL_PUT_BATCH_MAX_BYTES: int = 8 * MiB    # ... and their bytes
    SMALL_GET_BATCH_MAX: int = 64               # small shard reads per get_many call to one disk
    SMALL_GET_BATCH_MAX_BYTES: int = 8 * MiB    # ... and the bytes of the blocks they may be sent
    # Garbage and repair (DESIGN §14: index/reaper.py, index/sweep.py, index/repair.py, index/maintain.py).
    REAP_INTERVAL_MS: int = 10_000              # between reaper passes over the reap queue
    SWEEP_INTERVAL_MS: int = 3600 * 1000        # between orphan sweeps of every disk
    REPAIR_INTERVAL_MS: int = 10_000            # between repair passes (DEGRADED, out disks, scrub findings)
    MAINTENANCE_PAGE: int = 1000                # reap queue entries, R entries, listed shards per read
    REPAIR_PROGRESS_EVERY: int = 100            # repair logs a progress line every this many objects

    def __post_init__(self) -> None:
        problems = []
        if not (1 <= self.EC_K and 0 <= self.EC_M and self.EC_K + self.EC_M <= 255):
            problems.append("EC_K + EC_M must be at most 255 (the GF(2^8) codeword length)")
        if not self.INLINE_MAX < self.SMALL_OBJECT_MAX:
            problems.append("INLINE_MAX must be below SMALL_OBJECT_MAX")
        if self.CHUNK_MAX % self.CHECKSUM_BLOCK:
            problems.append("CHUNK_MAX must be a multiple of CHECKSUM_BLOCK")
        if not self.COMMIT_DEADLINE_MS + self.MAX_CLOCK_SKEW_MS < 60_000:
            problems.append("COMMIT_DEADLINE + MAX_CLOCK_SKEW must stay below 60 s (boto3's read timeout)")
        if not self.COMMIT_DEADLINE_MS + self.MAX_CLOCK_SKEW_MS < self.DEDUP_WINDOW_MS:
            problems.append("COMMIT_DEADLINE + MAX_CLOCK_SKEW must stay below DEDUP_WINDOW")
        if not self.REAP_DELAY_MS < self.MAX_WRITE_AGE_MS:
            problems.append("REAP_DELAY must be below MAX_WRITE_AGE")
        if not self.MIN_PART_SIZE <= self.MAX_PART_SIZE <= self.MAX_OBJECT_SIZE:
            problems.append("MIN_PART_SIZE <= MAX_PART_SIZE <= MAX_OBJECT_SIZE")
        if not 0 < self.MAX_KEYS <= 100_000:
            problems.append("MAX_KEYS must be in 1..100000")
        if not (self.SHARD_CHUNK_MAX_BYTES <= self.SHARD_MAX_BYTES and self.CHECKSUM_BLOCK <= self.SHARD_WRITE_STEP_BYTES
                and self.SHARD_WRITE_STEP_BYTES % self.CHECKSUM_BLOCK == 0):
            problems.append("need CHUNK <= SHARD_MAX and SHARD_WRITE_STEP a multiple of CHECKSUM_BLOCK")
        if not (0 < self.DISK_RESERVE_FRACTION < 1 and 0 < self.SHARD_COMPACT_LIVE_FRACTION < 1):
            problems.append("DISK_RESERVE_FRACTION and SHARD_COMPACT_LIVE_FRACTION must be in (0, 1)")
        if not (self.SHARD_COMPACT_INTERVAL_MS > 0 and self.SHARD_COMPACT_BYTES_PER_S > 0):
            problems.append("SHARD_COMPACT_INTERVAL_MS and SHARD_COMPACT_BYTES_PER_S must be positive")
        if not (self.HOT_FACTOR >= 1 and self.DISK_STAT_INTERVAL_MS > 0 and self.SHARD_CALL_TIMEOUT_MS > 0
                and self.BLOB_READ_PREFETCH_STRIPES >= 1 and self.SMALL_PUT_BATCH_MAX >= 1
                and self.SMALL_PUT_BATCH_MAX_BYTES >= self.SMALL_OBJECT_MAX and self.SMALL_GET_BATCH_MAX >= 1
                and self.SMALL_GET_BATCH_MAX_BYTES >= self.SMALL_OBJECT_MAX):
            problems.append("need HOT_FACTOR >= 1, positive DISK_STAT_INTERVAL_MS, SHARD_CALL_TIMEOUT_MS, "
                            "BLOB_READ_PREFETCH_STRIPES, SMALL_PUT_BATCH_MAX, SMALL_GET_BATCH_MAX, and "
                            "SMALL_PUT_BATCH_MAX_BYTES, SMALL_GET_BATCH_MAX_BYTES >= SMALL_OBJECT_MAX")
        if not (self.REAP_INTERVAL_MS > 0 and self.SWEEP_INTERVAL_MS > 0 and self.REPAIR_INTERVAL_MS > 0
                and 1 <= self.MAINTENANCE_PAGE <= self.SHARD_LIST_MAX and self.REPAIR_PROGRESS_EVERY >= 1):
            problems.append("need positive REAP/SWEEP/REPAIR_INTERVAL_MS, MAINTENANCE_PAGE in 1..SHARD_LIST_MAX "
                            "and REPAIR_PROGRESS_EVERY >= 1")
        if problems:
            raise ValueError("invalid limits: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> "Limits":
        """Build from a TOML `[limits]` table; unknown names are an error, not ignored."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"unknown limits in config: {', '.join(unknown)}")
        return cls(**dict(table))


DEFAULT_LIMITS = Limits()
