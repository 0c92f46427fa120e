"""Hotspots from ``py-spy record --format raw`` output (collapsed stacks).

``python -m tests.bench.profile FILE [--top N]`` prints, per function, the share
of on-CPU samples spent in the function itself (self) and below it (total).
py-spy leaves out idle threads, so waiting in the event loop does not count.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _short(file: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3."):
        i = file.find(marker)
        if i >= 0:
            rest = file[i + len(marker) :]
            return rest.split("/", 1)[1] if marker == "lib/python3." and "/" in rest else rest
    return file


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{m['func']} ({_short(m['file'])})"


# frames every sample shares (entry points, the event loop) say nothing about where time goes
_PLUMBING = ("click/", "asyncio/", "<frozen", "(ingestd)", "cli.py", "selectors.py")


def _plumbing(frame: str) -> bool:
    return any(p in frame for p in _PLUMBING)


def hotspots(path: Path, top: int = 15) -> dict[str, Any]:
    self_t: Counter[str] = Counter()
    total_t: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_name(f) for f in stack.split(";")]
        # py-spy puts the thread/process name first; functions follow outermost first
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += n
        self_t[frames[-1]] += n
        for f in set(frames):
            total_t[f] += n

    def pct(c: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * v / samples, 1)) for f, v in c.most_common(top)]

    inclusive = Counter({f: v for f, v in total_t.items() if not _plumbing(f)})
    return {"samples": samples, "self": pct(self_t), "total": pct(inclusive)}


def format_hotspots(name: str, h: dict[str, Any]) -> str:
    out = [f"{name}: {h['samples']} on-CPU samples"]
    out.append("  self%  function")
    out += [f"  {p:5.1f}  {f}" for f, p in h["self"]]
    out.append("  total% function (inclusive; entry points and event loop left out)")
    out += [f"  {p:5.1f}  {f}" for f, p in h["total"]]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.profile")
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    for f in args.files:
        print(format_hotspots(f.name, hotspots(f, args.top)))


if __name__ == "__main__":
    main()
