"""Running a load generator process against a URL: ``wrk`` when installed, else
``python -m tests.bench.load``. Both report 2xx/s over a measured window that
follows a warm-up, and the CPU the generator and the server used in it.

A body with ``@N@`` gets a number unique across the run in every request: the Python
generator counts, and wrk's Lua ``request()`` replaces it with a prefix unique to the
wrk invocation and its thread, then a per-thread counter (``<run>t<thread>n<count>``),
so the warm-up and the measured run never send the same id. Fixed-rate load (``rate``):
the Python generator's open-loop schedule, or wrk (one thread) with a Lua ``delay()``
that holds each request to the next slot of a fixed schedule (``1/rate`` apart, a
monotonic clock through LuaJIT's ffi; wrk rounds delays down to whole milliseconds,
so a request may leave up to 1 ms early, and the schedule never runs more than 100 ms
behind: a server slower than the rate gets no burst). wrk's latency is then from send,
not from the scheduled start (figure 5's Python run keeps the open-loop one)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tests.bench.env import CpuMeter


@dataclass(frozen=True)
class Load:
    url: str
    headers: tuple[str, ...]
    body: bytes
    connections: int = 32
    duration: float = 5.0
    warmup: float = 1.0
    rate: float = 0.0  # 0 = closed loop (as fast as the server answers)
    method: str = "POST"


def pick_generator(choice: str) -> str:
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if choice == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--generator wrk: wrk is not installed (apt-get install wrk)")
    return choice


Window = AbstractContextManager[Any]


async def run_load(
    load: Load,
    generator: str,
    server: psutil.Process | None,
    workdir: Path,
    window: Window | None = None,
) -> dict[str, Any]:
    """``window``: a context entered and exited around the measured phase only (after
    the warm-up), e.g. more CPU meters."""
    if generator == "wrk":
        return await _run_wrk(load, server, workdir, window)
    return await _run_python(load, server, workdir, window)


async def _run_python(
    load: Load, server: psutil.Process | None, workdir: Path, window: Window | None = None
) -> dict[str, Any]:
    body = _body_file(load.body, workdir)
    argv = [sys.executable, "-m", "tests.bench.load", "--url", load.url, "--body-file", body]
    for h in load.headers:
        argv += ["--header", h]
    argv += ["--connections", str(load.connections), "--duration", str(load.duration)]
    argv += ["--warmup", str(load.warmup), "--rate", str(load.rate), "--method", load.method]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    await asyncio.sleep(load.warmup)
    meters = {"server": server} if server else {}
    with CpuMeter(**meters) as m, window or nullcontext():
        out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    result["cpu_pct"] = m.result
    result["cpu_pct"]["generator"] = round(100 * result["cpu_s"] / result["elapsed_s"], 1)
    _per_request(result, m)
    return result


def _per_request(result: dict[str, Any], m: CpuMeter) -> None:
    """Server CPU microseconds per answered request: steadier than req/s on a shared box."""
    if "server" in m.seconds and result["ok"]:
        result["server_cpu_us_per_req"] = round(1e6 * m.seconds["server"] / result["ok"], 1)


def _body_file(body: bytes, workdir: Path) -> str:
    f = tempfile.NamedTemporaryFile(dir=workdir, suffix=".body", delete=False)
    with f:
        f.write(body)
    return f.name


_RUNS = itertools.count()

#: every wrk thread gets its number from ``setup`` (run in wrk's main Lua state); each
#: request replaces ``@N@`` in the body with ``<run prefix>t<thread>n<counter>``
_TEMPLATE_LUA = """
local template = wrk.body
tid = tid or 0  -- a global: thread:set() assigns it
local nthreads = 0
function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
end
local n = 0
function request()
  n = n + 1
  local id = PREFIX .. "t" .. tostring(tid) .. "n" .. tostring(n)
  local body = template:gsub("@N@", id)
  return wrk.format(nil, nil, nil, body)
end
"""


_RATE_LUA = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int, bench_timespec *);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local slot = nil
function delay()
  local t = now_ms()
  if slot == nil then slot = t end
  slot = slot + INTERVAL_MS
  if slot < t - 100 then slot = t - 100 end
  local d = slot - t
  if d < 0 then return 0 end
  return d
end
"""


def _lua(load: Load, body_path: str) -> str:
    lines = [f"wrk.method = {json.dumps(load.method)}", f'local f = io.open("{body_path}", "rb")']
    lines += ["wrk.body = f:read('*a')", "f:close()"]
    for h in load.headers:
        name, _, value = h.partition(":")
        lines.append(f"wrk.headers[{json.dumps(name.strip())}] = {json.dumps(value.strip())}")
    if b"@N@" in load.body:
        # unique per wrk invocation (warm-up and measured run included), per bench process
        prefix = f"{os.getpid():x}r{next(_RUNS)}"
        lines.append(f"PREFIX = {json.dumps(prefix)}")
        lines.append(_TEMPLATE_LUA)
    if load.rate > 0:  # one wrk thread: its schedule is the whole rate
        lines.append(f"INTERVAL_MS = {1000.0 / load.rate!r}")
        lines.append(_RATE_LUA)
    return "\n".join(lines) + "\n"


def _wrk_script(load: Load, workdir: Path) -> Path:
    body = _body_file(load.body, workdir)
    script = Path(body + ".lua")
    script.write_text(_lua(load, body))
    return script


async def _run_wrk(
    load: Load, server: psutil.Process | None, workdir: Path, window: Window | None = None
) -> dict[str, Any]:
    def base() -> list[str]:  # a script per invocation: its own id prefix
        script = _wrk_script(load, workdir)
        return ["wrk", "-t1", f"-c{load.connections}", "--latency", "-s", str(script)]

    if load.warmup > 0:
        warm = await asyncio.create_subprocess_exec(
            *base(), f"-d{max(1, round(load.warmup))}s", load.url, stdout=subprocess.DEVNULL
        )
        await warm.wait()
    proc = await asyncio.create_subprocess_exec(
        *base(),
        f"-d{max(1, round(load.duration))}s",
        load.url,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    meters = {"server": server} if server else {}
    t0 = time.monotonic()
    children0 = _children_cpu()
    with CpuMeter(**meters) as m, window or nullcontext():
        out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {err.decode()[-2000:]}")
    result = parse_wrk(out.decode(), len(load.body))
    wall = time.monotonic() - t0
    result["cpu_pct"] = m.result
    # wrk has exited: its CPU time is in this process's reaped-children usage
    result["cpu_pct"]["generator"] = round(100 * (_children_cpu() - children0) / wall, 1)
    _per_request(result, m)
    return result


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(value: str, unit: str) -> float:
    return round(float(value) * _UNITS[unit], 3)


def parse_wrk(text: str, body_size: int) -> dict[str, Any]:
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", text)
    if not m:
        raise RuntimeError(f"cannot parse wrk output:\n{text}")
    total = int(m.group(1))
    elapsed = _ms(m.group(2), m.group(3)) / 1000
    non2xx = (
        int(re.search(r"Non-2xx or 3xx responses: (\d+)", text).group(1))
        if ("Non-2xx" in text)
        else 0
    )
    errors = 0
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if se:
        errors = sum(int(g) for g in se.groups())
    lat = {
        f"p{q}": _ms(v, u)
        for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    }
    mx = re.search(r"Latency\s+[\d.]+\w+\s+[\d.]+\w+\s+([\d.]+)(us|ms|s|m)", text)
    if mx:
        lat["max"] = _ms(mx.group(1), mx.group(2))
    ok = total - non2xx
    return {
        "generator": "wrk",
        "requests": total,
        "ok": ok,
        "non_2xx": non2xx,
        "errors": errors,
        "elapsed_s": elapsed,
        "rps": ok / elapsed,
        "mb_per_s": ok * body_size / elapsed / 1e6,
        "latency_ms": lat,
    }
