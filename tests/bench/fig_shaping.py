"""Figure 9: figure 4's unchanged snapshot through a schema that shapes data (issue 14).

The same ``snapshot``-resource session (figure 4's employees, plus a ``hired``
date-time and a ``site`` URI on every resource) is applied once and then uploaded
again unchanged, first under a schema that only validates (the floor), then under one
that normalises three formats (``employee.email`` email, ``hired`` date-time, ``site``
uri) and fills two defaults (``status`` at the root, ``employee.level`` one level down)
that no resource carries. Both run in the same stages, one after the other, each on a
scope of its own; the value is the shaped rate, the ratio shaped / plain.

The values are sent in their stored forms, as a system that resends what it sent
before does. A worker answers an item it has shaped before, byte for byte under the
same schema version, from its cache (shared/bulk.py), so the measured rounds are
resends; ``details.cold_s`` / ``cold_ratio`` is one more unchanged round through a new
worker, where every item is shaped and validated (each normaliser's fast path for an
already-canonical value runs). The non-canonical rounds (another 200,000 forms) overflow
the cache's 262,144 entries, so they are mostly cold too. ``details.slow_path_us``
adds, measured in this process, what each normaliser costs per value for a
non-canonical form (``Ann@EXAMPLE.com``, an RFC 3339 time with an offset, a URI with
a default port and dot segments).
"""

from __future__ import annotations

import asyncio
import copy
import statistics
import time
from typing import Any

import aiohttp
import orjson

from shared import formats
from tests.bench.core import Bench, Figure, employee
from tests.bench.env import ADMIN_TOKEN, TABLE, fresh, procs
from tests.bench.fig_bulk import PART_ITEMS, bulk_built, pending, upload_session, wait_receipt
from tests.bench.fig_pipeline import wait_leases
from tests.conftest import EMPLOYEE_SCHEMA

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ROUNDS = 3  # unchanged uploads per schema; the median counts


def resource(n: int) -> dict[str, Any]:
    out = employee(n)
    out["hired"] = f"20{n % 20:02d}-{1 + n % 12:02d}-{1 + n % 28:02d} {n % 24:02d}:{n % 60:02d}:00"
    out["site"] = f"https://example.com/people/{n}"
    return out


def raw_resource(n: int) -> dict[str, Any]:
    """:func:`resource` as a producer might send it: every normalised value in another
    form that normalises to the same stored value (so the snapshot is still unchanged)."""
    out = resource(n)
    date, clock = out["hired"].split(" ")
    out["hired"] = f"{date}T{clock}Z"
    out["site"] = out["site"].replace("https://example.com", "HTTPS://Example.COM:443")
    out["employee"]["email"] = out["employee"]["email"].replace("example.com", "EXAMPLE.com")
    return out


def schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    plain = copy.deepcopy(EMPLOYEE_SCHEMA)
    props = plain["properties"]
    props["hired"] = {"type": "string"}
    props["site"] = {"type": "string"}
    props["status"] = {"type": "string"}
    props["employee"]["properties"]["level"] = {"type": "integer"}
    shaped = copy.deepcopy(plain)
    props = shaped["properties"]
    props["hired"]["format"] = "date-time"
    props["site"]["format"] = "uri"
    props["employee"]["properties"]["email"]["format"] = "email"
    props["status"]["default"] = "active"
    props["employee"]["properties"]["level"]["default"] = 1
    return plain, shaped


async def _put_schema(c: aiohttp.ClientSession, body: dict[str, Any]) -> None:
    r = await c.get("/admin/v1/schema-groups", headers=ADMIN)
    gid = (await r.json())["items"][0]["id"]
    r = await c.put(
        f"/admin/v1/schema-groups/{gid}/schemas/{TABLE}", json={"schema": body}, headers=ADMIN
    )
    if r.status != 200:
        raise RuntimeError(f"schema update: {r.status} {await r.text()}")


async def _wait_schema(c: aiohttp.ClientSession, seeded: Any, probe: dict[str, Any]) -> None:
    """Until the worker holds the new version: a single event that only it accepts is
    applied (the registry reaches the worker within a refresh interval)."""
    deadline = time.monotonic() + 60
    n = 0
    while time.monotonic() < deadline:
        n += 1
        r = await c.post(
            "/integration/custom-data/event/employee",
            params={"groupKey": f"probe-{n}"},
            json=probe,
            headers={"X-Ingest-Key": seeded.key},
        )
        eid = (await r.json())["eventId"]
        if (await wait_receipt(c, seeded, eid, 30)).get("status") == "applied":
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("the worker did not take the new schema version within 60 s")


async def _rounds(
    c: aiohttp.ClientSession, seeded: Any, parts: list[bytes], scope: str, n: int, within: float,
    created: bool = True, rounds: int = ROUNDS,
) -> list[float]:  # fmt: skip
    if created:
        first = await wait_receipt(c, seeded, await upload_session(c, seeded, parts, scope), within)
        if first.get("status") != "applied" or first.get("created") != n:
            raise RuntimeError(f"initial snapshot ({scope}): {first}")
    times = []
    for _ in range(rounds):
        t0 = time.monotonic()
        rec = await wait_receipt(c, seeded, await upload_session(c, seeded, parts, scope), within)
        times.append(time.monotonic() - t0)
        if rec.get("status") != "applied" or rec.get("unchanged") != n:
            raise RuntimeError(f"unchanged snapshot ({scope}): {rec}")
    return times


def slow_paths() -> dict[str, float]:
    """µs per value of each normaliser on a non-canonical form (this process)."""
    cases = {
        "email": ("Ann@EXAMPLE.com", formats.normalise_email),
        "date-time": ("2000-01-01T01:00:00+01:00", formats.normalise_date_time),
        "uri": ("HTTPS://Example.com:443/a/../b", formats.normalise_uri),
        "phone": ("+1 (555) 123-4567", formats.normalise_phone),
    }
    out = {}
    for name, (value, fn) in cases.items():
        t0 = time.perf_counter()
        for _ in range(20_000):
            fn(value)
        out[name] = round((time.perf_counter() - t0) / 20_000 * 1e6, 2)
    return out


async def figure9(bench: Bench) -> Figure:
    n = bench.sizes.snapshot
    fig = Figure(
        9,
        f"unchanged {n:,}-resource snapshot, schema normalising 3 formats + 2 defaults, res/s",
        unit="res/s",
        floor_title="the same snapshot, plain validation, same run",
        target="ratio >= 0.7",
    )
    if not bulk_built():
        return pending(fig)
    body = [resource(i) for i in range(n)]
    parts = [orjson.dumps(body[o : o + PART_ITEMS]) for o in range(0, n, PART_ITEMS)]
    raw = [raw_resource(i) for i in range(n)]
    raw_parts = [orjson.dumps(raw[o : o + PART_ITEMS]) for o in range(0, n, PART_ITEMS)]
    del body, raw
    plain, shaped = schemas()
    seeded = await fresh(bench.settings)
    within = max(300.0, n / 200)
    with procs(bench.settings, bench.workdir) as ps:
        _, port = ps.stage("gateway")
        ps.stage("projector")
        worker, _ = ps.stage("worker")
        await wait_leases(bench)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as c:
            await _put_schema(c, plain)
            await _wait_schema(c, seeded, {"employeeId": "p", "hired": "not a date"})
            plain_s = await _rounds(c, seeded, parts, "plain", n, within)
            await _put_schema(c, shaped)
            await _wait_schema(c, seeded, {"employeeId": "p", "hired": 946684800})
            shaped_s = await _rounds(c, seeded, parts, "shaped", n, within)
            # cold: a new worker has shaped nothing yet (shared/bulk.py's cache is empty)
            ps.stop(worker)
            ps.stage("worker")
            await _wait_schema(c, seeded, {"employeeId": "p", "hired": 946684800})
            cold_s = await _rounds(c, seeded, parts, "shaped", n, within, created=False, rounds=1)
            # the same scope again, every normalised value in a non-canonical form
            raw_s = await _rounds(c, seeded, raw_parts, "shaped", n, within, created=False)
    t_plain, t_shaped = statistics.median(plain_s), statistics.median(shaped_s)
    t_raw, t_cold = statistics.median(raw_s), cold_s[0]
    fig.value = n / t_shaped
    fig.floor = n / t_plain
    fig.ratio = t_plain / t_shaped
    fig.met = fig.ratio >= 0.7
    fig.details = {
        "resources": n,
        "parts": len(parts),
        "plain_s": plain_s,
        "shaped_s": shaped_s,
        "cold_s": cold_s,
        "cold_ratio": round(t_plain / t_cold, 3),
        "non_canonical_s": raw_s,
        "non_canonical_ratio": round(t_plain / t_raw, 3),
        "slow_path_us": slow_paths(),
    }
    fig.note = (
        f"unchanged session {t_shaped:.2f}s shaped vs {t_plain:.2f}s plain (median of "
        f"{ROUNDS}; a resent item is answered from the worker's cache of what shaping gave); "
        f"cold (a new worker, every item shaped and validated) {t_cold:.2f}s, ratio "
        f"{t_plain / t_cold:.2f}; with all 3 values non-canonical (normalised to the same "
        "stored values) "
        f"{t_raw:.2f}s, ratio {t_plain / t_raw:.2f}; a non-canonical value costs "
        f"{fig.details['slow_path_us']} µs"
    )
    return fig
