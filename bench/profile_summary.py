"""Summarise a py-spy `--format raw` (collapsed stacks) profile: where the CPU went.

py-spy samples only threads that are running (without --idle), so the sample
share of a frame is its share of the process's CPU time.

    .venv/bin/python -m bench.profile_summary PROFILE.txt [--top 20]

Prints the top functions by self time (the frame on top of the stack: that code,
or the C call it made, was running) and by inclusive time (the frame anywhere on
the stack), plus the share per thread when the profile was recorded with --threads.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file.py)`: aggregate per function."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    parts = path.replace("\\", "/").split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1:]
    elif len(parts) > 2:
        parts = parts[-2:]
    return f"{match.group('func')} ({'/'.join(parts)})"


def summarise(path: str, top: int = 20) -> str:
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    thread_counts: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for raw in handle:
            raw = raw.rstrip("\n")
            match = _LINE.match(raw)
            if not match:
                continue
            stack, count = match.group(1), int(match.group(2))
            frames = stack.split(";")
            if frames and (frames[0].startswith("thread (") or frames[0].startswith("process ")):
                root = frames[0]
                while frames and (frames[0].startswith("thread (") or frames[0].startswith("process ")):
                    if frames[0].startswith("thread ("):
                        root = frames[0]
                    frames = frames[1:]
                thread_counts[root] += count
            if not frames:
                continue
            total += count
            self_counts[_short(frames[-1])] += count
            for name in {_short(frame) for frame in frames}:
                incl_counts[name] += count
    if not total:
        return f"{path}: no samples"
    lines = [f"{path}: {total} samples"]
    if len(thread_counts) > 1:
        lines.append("  by thread: " + ", ".join(
            f"{name} {count / total:.0%}" for name, count in thread_counts.most_common(4)))
    lines.append("  self time:")
    for name, count in self_counts.most_common(top):
        lines.append(f"    {count / total:6.1%}  {name}")
    lines.append("  inclusive time:")
    for name, count in incl_counts.most_common(top + 10):
        lines.append(f"    {count / total:6.1%}  {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profiles", nargs="+")
    parser.add_argument("--top", type=int, default=20)
    arguments = parser.parse_args(argv)
    for path in arguments.profiles:
        print(summarise(path, arguments.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
