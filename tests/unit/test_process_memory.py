"""common/memory.py: the allocator tuning every byte-moving process applies at start."""

import ctypes
import subprocess
import sys

from common import memory


def test_glibc_takes_the_thresholds_and_a_freed_buffer_is_reused():
    # In a fresh interpreter: the setting is process-wide, and the check is that a freed
    # MiB comes back at the same address (heap reuse) instead of a fresh mapping.
    script = (
        "import ctypes, sys\n"
        "from common.memory import keep_freed_memory\n"
        "assert keep_freed_memory()\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "libc.malloc.argtypes = [ctypes.c_size_t]\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "keep = libc.malloc(64)\n"
        "first = libc.malloc(1 << 20); libc.free(first)\n"
        "again = libc.malloc(1 << 20)\n"
        "print(first == again)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"


def test_no_mallopt_means_no_tuning(monkeypatch):
    class NoMallopt:
        def __init__(self, name):
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoMallopt)
    assert memory.keep_freed_memory() is False
