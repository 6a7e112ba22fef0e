"""The one narrow interface through which the shardstore touches its extent files.

Two implementations:
- `RealDisk`: files in one directory, `os.pwrite`/`os.pread`, `os.fdatasync`, and an
  fsync of the directory after a file is created or removed; `write_direct` goes
  through a second descriptor per file opened with O_DIRECT (the page cache is
  bypassed: no copy into it, and the fdatasync that follows has no dirty pages to
  write back). A filesystem that refuses O_DIRECT (tmpfs before Linux 6.6: EINVAL
  at open or write) is found by a probe at start, or by the first refused write;
  `direct_alignment` is then 0 and `write_direct` falls back to `write`. Large reads
  may use `read_direct` through the same descriptor.
- `SimDisk`: in memory, for tests. Each file has a durable prefix and unsynced bytes
  past it; `crash()` keeps the durable prefix plus a random prefix of the unsynced
  bytes (a torn last write) and forgets the rest. `flip_byte()` models bit rot.
  `write_direct` checks the alignment rules and is otherwise a `write`: lost or torn
  at a crash unless synced, like any write.

Contract (both implementations):
1. Files are append-mostly: `write` may only write at or below the current size
   (never leaves a hole).
2. After `sync(name)` returns, every byte written to that file before it is durable.
3. `create` and `remove` are durable on return (the directory is synced).
4. `truncate` is durable on return (used only to cut a torn or aborted tail).
5. `write` raises `OSError(ENOSPC)` when the disk is full, having written nothing.
6. `blocking` says whether calls may block (the node then runs them on a thread).
7. `write_direct(name, offset, data)` is a `write` (rules 1, 2 and 5 hold) that may
   bypass the page cache. Only when `direct_alignment` > 0; then `offset` and
   `len(data)` are multiples of it and `data` is page-aligned memory (an anonymous
   mmap). The caller never lets a direct write share a page with a buffered write
   of bytes it has not yet synced or that it still means to write (see node.py for
   how records are cut); Linux keeps the page cache coherent anyway (a direct write
   writes back and then invalidates the cached pages of its range), so this keeps
   the bypass cheap rather than correct.
8. `read_direct(name, offset, length)` returns what `read` returns, bypassing the page
   cache where the disk can (any offset and length: it reads the aligned pages around
   them into a page-aligned buffer of the calling thread, then copies them out). Meant
   for committed bytes; Linux writes back any dirty cached page of the range first, so
   it is coherent either way. A cold large read then costs no page-cache fill
   (measured here: ~2 ms of CPU per MiB cold buffered, ~0.15 direct with the copy).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import random
import threading
from dataclasses import dataclass, field
from typing import Protocol

from common.errors import invariant


DIRECT_ALIGNMENT_BYTES = max(4096, mmap.PAGESIZE)     # covers 512 and 4096-byte sectors
_DIRECT_PROBE = ".direct-probe"                        # hidden: list_files skips dot files


def aligned_buffer(size: int) -> mmap.mmap:
    """Page-aligned, zeroed memory of `size` bytes, for `write_direct`."""
    return mmap.mmap(-1, size)


class Disk(Protocol):
    blocking: bool
    direct_alignment: int       # 0: no direct writes (write_direct is then a plain write)

    def list_files(self) -> list[str]: ...
    def create(self, name: str) -> None: ...
    def remove(self, name: str) -> None: ...
    def size(self, name: str) -> int: ...
    def write(self, name: str, offset: int, data: bytes | memoryview) -> None: ...
    def write_direct(self, name: str, offset: int, data: memoryview | mmap.mmap) -> None: ...
    def read(self, name: str, offset: int, length: int) -> bytes: ...
    def read_direct(self, name: str, offset: int, length: int) -> bytes: ...
    def read_cached(self, name: str, offset: int, length: int) -> bytes | bytearray | None: ...
    def sync(self, name: str) -> None: ...
    def truncate(self, name: str, length: int) -> None: ...
    def capacity_bytes(self) -> int: ...
    def free_bytes(self) -> int: ...
    def close(self) -> None: ...


class RealDisk:
    """Extent files in `directory`, one open descriptor per file."""

    blocking = True

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._fds: dict[str, int] = {}
        self._direct_fds: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        self._read_buffers = threading.local()     # each reading thread's page-aligned buffer
        self._open_lock = threading.Lock()
        self.direct_alignment = DIRECT_ALIGNMENT_BYTES if self._direct_works() else 0
        self._nowait_reads = hasattr(os, "RWF_NOWAIT")    # until the filesystem refuses one

    def _direct_works(self) -> bool:
        """Whether this filesystem takes an aligned O_DIRECT write (tmpfs may refuse:
        EINVAL at open on older kernels)."""
        if not hasattr(os, "O_DIRECT"):
            return False
        path = os.path.join(self.directory, _DIRECT_PROBE)
        buffer = aligned_buffer(DIRECT_ALIGNMENT_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
            try:
                os.pwrite(fd, buffer, 0)
            finally:
                os.close(fd)
            return True
        except OSError as error:
            if error.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            return False
        finally:
            buffer.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _path(self, name: str) -> str:
        invariant("/" not in name and name not in ("", ".", ".."), f"bad file name {name!r}")
        return os.path.join(self.directory, name)

    def _fd(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is None:
            fd = os.open(self._path(name), os.O_RDWR)
            self._fds[name] = fd
            self._sizes[name] = os.fstat(fd).st_size
        return fd

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def list_files(self) -> list[str]:
        return sorted(entry for entry in os.listdir(self.directory) if not entry.startswith("."))

    def create(self, name: str) -> None:
        fd = os.open(self._path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        os.fsync(fd)
        self._fds[name] = fd
        self._sizes[name] = 0
        self._sync_directory()

    def remove(self, name: str) -> None:
        for fds in (self._fds, self._direct_fds):
            fd = fds.pop(name, None)
            if fd is not None:
                os.close(fd)
        self._sizes.pop(name, None)
        os.unlink(self._path(name))
        self._sync_directory()

    def size(self, name: str) -> int:
        self._fd(name)
        return self._sizes[name]

    def write(self, name: str, offset: int, data: bytes | memoryview) -> None:
        fd = self._fd(name)
        invariant(offset <= self._sizes[name], "write would leave a hole")
        view = memoryview(data)
        written = 0
        try:
            while written < len(view):
                written += os.pwrite(fd, view[written:], offset + written)
        except OSError as error:
            if error.errno == errno.ENOSPC:     # contract 5: leave nothing behind
                os.ftruncate(fd, self._sizes[name])
            raise
        self._sizes[name] = max(self._sizes[name], offset + len(view))

    def write_direct(self, name: str, offset: int, data: memoryview | mmap.mmap) -> None:
        alignment = self.direct_alignment
        if not alignment:
            return self.write(name, offset, data)
        invariant(offset % alignment == 0 and len(data) % alignment == 0, "unaligned direct write")
        self._fd(name)
        invariant(offset <= self._sizes[name], "write would leave a hole")
        fd = self._direct_fds.get(name)
        try:
            if fd is None:
                fd = self._direct_fd(name)
            view = memoryview(data)
            written = 0
            while written < len(view):
                written += os.pwrite(fd, view[written:], offset + written)
        except OSError as error:
            if error.errno == errno.ENOSPC:     # contract 5: leave nothing behind
                os.ftruncate(self._fds[name], self._sizes[name])
                raise
            if error.errno != errno.EINVAL:
                raise
            # Refused after all (an odd filesystem or device): buffered from now on.
            self.direct_alignment = 0
            return self.write(name, offset, data)
        self._sizes[name] = max(self._sizes[name], offset + len(data))

    def _direct_fd(self, name: str) -> int:
        fd = self._direct_fds.get(name)
        if fd is None:
            with self._open_lock:          # reading threads race here: open once, leak none
                fd = self._direct_fds.get(name)
                if fd is None:
                    fd = self._direct_fds[name] = os.open(self._path(name), os.O_RDWR | os.O_DIRECT)
        return fd

    def read(self, name: str, offset: int, length: int) -> bytes:
        return os.pread(self._fd(name), length, offset)

    def read_cached(self, name: str, offset: int, length: int) -> bytearray | None:
        """The bytes a `read` returns if every one is in the page cache, else None, never
        waiting for the disk (RWF_NOWAIT): cheap enough to make on the event loop, which
        spares a hot read its hand-off to a thread and back."""
        if not self._nowait_reads:
            return None
        buffer = bytearray(length)
        try:
            got = os.preadv(self._fd(name), [buffer], offset, os.RWF_NOWAIT)
        except BlockingIOError:                 # EAGAIN: not every byte is cached
            return None
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            self._nowait_reads = False          # this filesystem has no such read: stop asking
            return None
        return buffer if got == length else None

    def read_direct(self, name: str, offset: int, length: int) -> bytes:
        """The bytes a `read` returns, read with O_DIRECT: the aligned pages around
        them into this thread's page-aligned buffer, then copied out."""
        alignment = self.direct_alignment
        if not alignment or length == 0:
            return self.read(name, offset, length)
        first = offset - offset % alignment
        span = -(-(offset + length) // alignment) * alignment - first
        buffer = getattr(self._read_buffers, "buffer", None)
        if buffer is None or len(buffer) < span:
            buffer = self._read_buffers.buffer = aligned_buffer(max(span, 1 << 20))
        try:
            with memoryview(buffer) as whole, whole[:span] as view:
                got = os.preadv(self._direct_fd(name), [view], first)
                return bytes(view[offset - first:min(got, offset - first + length)])
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            self.direct_alignment = 0           # refused after all: buffered from now on
            return self.read(name, offset, length)

    def sync(self, name: str) -> None:
        os.fdatasync(self._fd(name))

    def truncate(self, name: str, length: int) -> None:
        fd = self._fd(name)
        os.ftruncate(fd, length)
        os.fsync(fd)
        self._sizes[name] = length

    def capacity_bytes(self) -> int:
        stats = os.statvfs(self.directory)
        return stats.f_blocks * stats.f_frsize

    def free_bytes(self) -> int:
        stats = os.statvfs(self.directory)
        return stats.f_bavail * stats.f_frsize

    def close(self) -> None:
        for fds in (self._fds, self._direct_fds):
            for fd in fds.values():
                os.close(fd)
            fds.clear()
        self._sizes.clear()


@dataclass
class _SimFile:
    data: bytearray = field(default_factory=bytearray)
    durable_length: int = 0
    durable: bytes = b""            # the content of the durable prefix as of the last sync


class SimDisk:
    """An in-memory disk that loses unsynced writes at `crash()` and may tear the last one.

    Invariant: `durable` of each file is exactly what a crash right now keeps, before
    the torn part; bytes written after the last sync (including overwrites below the
    durable length) are lost or torn.
    """

    blocking = False

    def __init__(self, capacity_bytes: int = 1 << 40, direct_alignment: int = 512) -> None:
        """`direct_alignment` 0 models a filesystem refusing O_DIRECT; the default is
        small so that tests with shrunk write steps still cut direct writes."""
        self.files: dict[str, _SimFile] = {}
        self._capacity_bytes = capacity_bytes
        self.direct_alignment = direct_alignment
        self.syncs = 0
        self.direct_writes = 0

    def list_files(self) -> list[str]:
        return sorted(self.files)

    def create(self, name: str) -> None:
        invariant(name not in self.files, f"{name} exists")
        self.files[name] = _SimFile()

    def remove(self, name: str) -> None:
        del self.files[name]

    def size(self, name: str) -> int:
        return len(self.files[name].data)

    def _used(self) -> int:
        return sum(len(file.data) for file in self.files.values())

    def write(self, name: str, offset: int, data: bytes | memoryview) -> None:
        file = self.files[name]
        invariant(offset <= len(file.data), "write would leave a hole")
        growth = max(0, offset + len(data) - len(file.data))
        if self._used() + growth > self._capacity_bytes:
            raise OSError(errno.ENOSPC, "simulated disk full")
        file.data[offset:offset + len(data)] = data

    def write_direct(self, name: str, offset: int, data: memoryview | mmap.mmap) -> None:
        """A write, after checking what a real O_DIRECT write needs: same crash semantics."""
        if not self.direct_alignment:
            return self.write(name, offset, data)
        invariant(offset % self.direct_alignment == 0 and len(data) % self.direct_alignment == 0,
                  "unaligned direct write")
        self.write(name, offset, data)
        self.direct_writes += 1

    def read(self, name: str, offset: int, length: int) -> bytes:
        return bytes(self.files[name].data[offset:offset + length])

    def read_direct(self, name: str, offset: int, length: int) -> bytes:
        return self.read(name, offset, length)

    def read_cached(self, name: str, offset: int, length: int) -> bytes | None:
        return self.read(name, offset, length)

    def sync(self, name: str) -> None:
        file = self.files[name]
        file.durable = bytes(file.data)
        file.durable_length = len(file.data)
        self.syncs += 1

    def truncate(self, name: str, length: int) -> None:
        file = self.files[name]
        del file.data[length:]
        file.durable = file.durable[:length]
        file.durable_length = min(file.durable_length, length)

    def capacity_bytes(self) -> int:
        return self._capacity_bytes

    def free_bytes(self) -> int:
        return self._capacity_bytes - self._used()

    def close(self) -> None:
        pass

    # ------------------------------------------------------------ faults

    def crash(self, rng: random.Random, tear: bool = True) -> None:
        """Lose every unsynced write; with `tear`, keep a random prefix of the unsynced tail."""
        for file in self.files.values():
            kept = file.durable
            unsynced = bytes(file.data[file.durable_length:])
            if tear and unsynced:
                kept += unsynced[:rng.randrange(len(unsynced) + 1)]
            file.data = bytearray(kept)
            file.durable = file.durable[:file.durable_length]

    def flip_byte(self, name: str, offset: int) -> None:
        """Bit rot: invert one byte, durably."""
        file = self.files[name]
        file.data[offset] ^= 0xFF
        if offset < file.durable_length:
            durable = bytearray(file.durable)
            durable[offset] ^= 0xFF
            file.durable = bytes(durable)
