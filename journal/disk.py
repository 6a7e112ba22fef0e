"""The narrow disk interface of the journal log store, and its two implementations.

- `RealDisk`: files in one directory; appends with `os.write`, `os.fdatasync` on
  `sync`, the directory fsynced after a file is created or removed.
- `MemoryDisk`: in memory, for the simulation. Each file has a durable prefix and
  unsynced bytes past it; `crash(rng)` keeps the durable prefix plus, with `tear`,
  a random prefix of the unsynced bytes (a torn last write), and forgets the rest.

Contract (both):
1. `append` adds bytes at the end of a file; nothing is durable until `sync`.
2. After `sync(name)` returns, every byte appended to that file before it is durable.
3. `create`, `remove` and `truncate` are durable on return.
"""

from __future__ import annotations

import os
import random
from typing import Protocol

from common.errors import invariant


class Disk(Protocol):
    def list_files(self) -> list[str]: ...
    def create(self, name: str) -> None: ...
    def remove(self, name: str) -> None: ...
    def size(self, name: str) -> int: ...
    def append(self, name: str, data: bytes) -> None: ...
    def read(self, name: str, offset: int, length: int) -> bytes: ...
    def sync(self, name: str) -> None: ...
    def truncate(self, name: str, length: int) -> None: ...
    def close(self) -> None: ...


class RealDisk:
    """Log files in `directory`, one open descriptor per file."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._fds: dict[str, int] = {}

    def _path(self, name: str) -> str:
        invariant("/" not in name and name not in ("", ".", ".."), f"bad file name {name!r}")
        return os.path.join(self.directory, name)

    def _fd(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is None:
            fd = os.open(self._path(name), os.O_RDWR | os.O_APPEND)
            self._fds[name] = fd
        return fd

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def list_files(self) -> list[str]:
        return sorted(name for name in os.listdir(self.directory) if not name.startswith("."))

    def create(self, name: str) -> None:
        fd = os.open(self._path(name), os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        self._fds[name] = fd
        self._sync_directory()

    def remove(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)
        os.unlink(self._path(name))
        self._sync_directory()

    def size(self, name: str) -> int:
        return os.fstat(self._fd(name)).st_size

    def append(self, name: str, data: bytes) -> None:
        fd = self._fd(name)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def read(self, name: str, offset: int, length: int) -> bytes:
        return os.pread(self._fd(name), length, offset)

    def sync(self, name: str) -> None:
        os.fdatasync(self._fd(name))

    def truncate(self, name: str, length: int) -> None:
        fd = self._fd(name)
        os.ftruncate(fd, length)
        os.fsync(fd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class MemoryDisk:
    """An in-memory disk that loses unsynced appends at `crash()` and may tear the last."""

    def __init__(self) -> None:
        self.files: dict[str, bytearray] = {}
        self.durable: dict[str, int] = {}       # name -> durable length
        self.syncs = 0

    def list_files(self) -> list[str]:
        return sorted(self.files)

    def create(self, name: str) -> None:
        invariant(name not in self.files, f"{name} exists")
        self.files[name] = bytearray()
        self.durable[name] = 0

    def remove(self, name: str) -> None:
        del self.files[name]
        del self.durable[name]

    def size(self, name: str) -> int:
        return len(self.files[name])

    def append(self, name: str, data: bytes) -> None:
        self.files[name] += data

    def read(self, name: str, offset: int, length: int) -> bytes:
        return bytes(self.files[name][offset:offset + length])

    def sync(self, name: str) -> None:
        self.durable[name] = len(self.files[name])
        self.syncs += 1

    def truncate(self, name: str, length: int) -> None:
        del self.files[name][length:]
        self.durable[name] = min(self.durable[name], length)

    def close(self) -> None:
        pass

    def crash(self, rng: random.Random, tear: bool = True) -> None:
        """Lose every unsynced append; with `tear`, keep a random prefix of the unsynced tail."""
        for name, data in self.files.items():
            keep = self.durable[name]
            if tear and len(data) > keep:
                keep += rng.randrange(len(data) - keep + 1)
            del data[keep:]
            self.durable[name] = len(data) if tear else keep
