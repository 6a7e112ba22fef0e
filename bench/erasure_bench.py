"""Erasure coding benchmark: encode and decode MiB of data per CPU-second, per path.

For RS k+m (default 4+2) with chunks of CHUNK_MIB (default 1 MiB), on every path this
process can load ("isal", "numpy"): encode one stripe at a time (k data chunks in, m
parity out), and decode with the first `m` data chunks missing (the worst case: that
many rows rebuilt from the remaining data and all parity), plus with one data chunk
missing. Figures are MiB of stripe data (k × chunk) per CPU-second of this process
(`time.process_time`; the paths are single-threaded), and per wall second beside them.
Prints the machine (CPU model, cores, SIMD flags ISA-L dispatches on, load) and the
library each path uses.

    .venv/bin/python -m bench.erasure_bench [--k 4] [--m 2] [--chunk-mib 1] [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from common import erasure

MiB = 1 << 20


def machine() -> str:
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = " ".join(flag for flag in ("sse4_1", "avx", "avx2", "avx512f", "avx512bw", "gfni") if flag in flags)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"{model}, {os.cpu_count()} cores, SIMD: {simd or 'unknown'}, load average {load} at start; "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def measure(operation, data_bytes: int, seconds: float) -> tuple[float, float]:
    """(MiB per CPU-second, MiB per wall second) of running `operation` for about `seconds`."""
    operation()  # warm: decode matrices, page faults
    runs = 0
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    while True:
        operation()
        runs += 1
        cpu, wall = time.process_time() - cpu_start, time.perf_counter() - wall_start
        if wall >= seconds and runs >= 3:
            break
    mib = runs * data_bytes / MiB
    return mib / max(cpu, 1e-9), mib / wall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=4, help="data shards (default 4)")
    parser.add_argument("--m", type=int, default=2, help="parity shards (default 2)")
    parser.add_argument("--chunk-mib", type=float, default=1.0, help="chunk size in MiB (default 1)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement (default 2)")
    parser.add_argument("--paths", nargs="*", default=None,
                        help=f"paths to run (default: every available one of {erasure.PATH_ISAL}, {erasure.PATH_NUMPY})")
    args = parser.parse_args(argv)

    k, m = args.k, args.m
    chunk_bytes = int(args.chunk_mib * MiB)
    paths = args.paths or erasure.available_paths()
    print(f"machine: {machine()}")
    print(f"code: RS {k}+{m}, {erasure.code_id(k, m)}; chunk {chunk_bytes} bytes, stripe {k * chunk_bytes} bytes")
    data = [os.urandom(chunk_bytes) for _ in range(k)]
    lost_worst = set(range(min(m, k)))
    print(f"{'path':6} {'operation':34} {'MiB/CPU-s':>10} {'MiB/s':>10}")
    for path in paths:
        code = erasure.Code(k, m, path=path)
        print(f"{path:6} library: {code.library}")
        parity = code.encode(data)
        shards = dict(enumerate(data + parity))
        worst = {index: shard for index, shard in shards.items() if index not in lost_worst}
        one = {index: shard for index, shard in shards.items() if index != 0}
        if code.decode(worst, chunk_bytes) != data or code.decode(one, chunk_bytes) != data:
            raise SystemExit(f"{path}: decode returned wrong data")
        for label, operation in (
            ("encode", lambda: code.encode(data)),
            (f"decode, data {sorted(lost_worst)} lost", lambda: code.decode(worst, chunk_bytes)),
            ("decode, data [0] lost", lambda: code.decode(one, chunk_bytes)),
        ):
            per_cpu, per_wall = measure(operation, k * chunk_bytes, args.seconds)
            print(f"{path:6} {label:34} {per_cpu:10,.0f} {per_wall:10,.0f}")


if __name__ == "__main__":
    main()
