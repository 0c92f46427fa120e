"""One fault scenario: private servers, the stages as processes, a retrying producer, the
fault, and THE check every scenario ends with (:meth:`Run.check`).

A scenario reads::

    async with Run(env, "redis kill -9") as run:
        await run.traffic()              # producers running, some events accepted
        run.fault_began(); ...; run.fault_ended()   # inject, then lift, the fault only
        await run.flowing()              # producers get 202s again after the fault
        await run.finish()               # stop producers, wait (bounded), check

Nothing restarts a stage by hand: a stage process that exits is a failure, named
with its exit code and the end of its log (a killed stage restarted by the
scenario, as a supervisor does, is the fault being lifted). Every wait is bounded
and, when it runs out, says what is stuck: per partition, which stream holds the
missing events and the last errors in the stage logs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import psutil
from redis.asyncio import Redis

from shared.config import Settings
from shared.redis import keyspace as ks
from tests.conftest import ADMIN, ADMIN_TOKEN, seed_directory
from tests.e2e.helpers import PREFIX, RT, SEQ_SCHEMA, TABLE, connector, pending_by_consumer
from tests.e2e.procs import INGESTD, Stage, port, stage_env, stages
from tests.faults.producer import Accepted, Producer, doc
from tests.faults.servers import PrivatePostgres, PrivateRedis
from tests.helpers import receipt, wait_key_known

PARTITIONS = 8
PIPELINE = ("gateway", "worker", "projector")
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


def scopes_covering(partitions: int, per: int = 2, rt: str = RT) -> list[str]:
    """groupKeys ``g0, g1, …`` chosen so that every partition has ``per`` of them."""
    out: list[str] = []
    have: Counter[int] = Counter()
    i = 0
    while any(have[p] < per for p in range(partitions)):
        g = f"g{i}"
        p = ks.partition_of(rt, g, partitions)
        if have[p] < per:
            out.append(g)
            have[p] += 1
        i += 1
    return out


def scope_in(p: int, rt: str, partitions: int = PARTITIONS, prefix: str = "s") -> str:
    """A groupKey whose scope in ``rt`` falls in partition ``p``."""
    i = 0
    while ks.partition_of(rt, f"{prefix}{i}", partitions) != p:
        i += 1
    return f"{prefix}{i}"


@dataclass
class FaultEnv:
    """The private servers of one test and the settings the stages get."""

    tmp: Path
    redis: PrivateRedis
    pg: PrivatePostgres
    settings: Settings
    results: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def start(
        cls, tmp: Path, pg_template: Path, *, appendfsync: str = "everysec",
        durability: str = "default",
    ) -> FaultEnv:  # fmt: skip
        redis = PrivateRedis(tmp / "redis", appendfsync=appendfsync)
        pg = PrivatePostgres(tmp / "pg")
        try:
            pg.copy_from(pg_template)
            pg.start()
            redis.start()
        except BaseException:
            redis.stop()
            pg.remove()
            raise
        settings = Settings(
            database_url=pg.dsn,
            redis_url=redis.url,
            admin_token=ADMIN_TOKEN,
            partitions=PARTITIONS,
            durability=durability,
        )
        env = cls(tmp, redis, pg, settings)
        out = subprocess.run(
            [INGESTD, "migrate"], env=stage_env(settings), capture_output=True, text=True
        )
        assert out.returncode == 0, f"ingestd migrate failed:\n{out.stdout}\n{out.stderr}"
        return env

    def stop(self) -> None:
        self.redis.stop()
        self.pg.remove()


@dataclass
class Expect:
    """An event the scenario sent itself and the status its receipt must end with."""

    eid: str
    status: str
    partition: int
    what: str


class Run:
    def __init__(
        self,
        env: FaultEnv,
        scenario: str,
        names: tuple[str, ...] = PIPELINE,
        *,
        max_backlog: int | None = None,
        senders: int = 16,
        pause: float = 0.1,
        stage_extra: dict[str, str] | None = None,
    ) -> None:
        self.env = env
        self.scenario = scenario
        self.names = names
        self.settings = env.settings
        if max_backlog is not None:
            self.settings = replace(self.settings, max_backlog=max_backlog)
        self.stage_extra = {"INGESTD_REGISTRY_POLL_MS": "100", **(stage_extra or {})}
        self.senders = senders
        self.pause = pause
        self.want = Counter(names)  # processes per stage that must stay up
        self.expects: dict[str, Expect] = {}
        self.allowed_lost: Callable[[Accepted], bool] | None = None
        self.fault_start: float | None = None  # monotonic
        self.fault_end: float | None = None
        self.fault_end_wall: float | None = None
        self.result: dict[str, Any] = {"scenario": scenario, "outcome": "FAIL"}
        self.notes: list[str] = []
        self._stack = ExitStack()
        self._t0 = time.monotonic()

    # ---- set-up and tear-down ---------------------------------------------------------

    async def __aenter__(self) -> Run:
        try:
            return await self._enter()
        except BaseException:
            self._stack.close()
            raise

    async def _enter(self) -> Run:
        self.s = self._stack.enter_context(
            stages(self.settings, self.env.tmp, *self.names, **self.stage_extra)
        )
        self.gateway = self.s["gateway"][0]
        self.base = f"http://127.0.0.1:{port(self.gateway)}"
        self.http = aiohttp.ClientSession(
            self.base, connector=connector(), timeout=aiohttp.ClientTimeout(total=10)
        )
        seeded = await seed_directory(self.http, PREFIX, TABLE, SEQ_SCHEMA)
        self.key, self.group_id = seeded.key, seeded.group_id
        await wait_key_known(self.http, self.key)
        self.producer = Producer(
            self.base,
            self.key,
            scopes_covering(self.settings.partitions),
            senders=self.senders,
            pause=self.pause,
        )
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.resume_all()
        if self.producer.running:
            self.producer.stop()
            with_timeout = asyncio.wait_for(self.producer.finish(5), 6)
            try:
                await with_timeout
            except (AssertionError, TimeoutError):
                pass
        await self.http.close()
        self.result["seconds"] = round(time.monotonic() - self._t0, 1)
        c = self.producer.counts
        self.result.update(
            {
                "accepted_202": c["202"],
                "refused_503": c["503"],
                "refused_429": c["429"],
                "errors": c["error"] + c["other"],
            }
        )
        if self.fault_start is not None and self.fault_end is not None:
            self.result["fault_s"] = round(self.fault_end - self.fault_start, 1)
        if exc is not None:
            self.result["outcome"] = "FAIL"
            self.result["failure"] = " ".join(str(exc).split())[:400] or repr(exc)
        if self.notes:
            self.result["notes"] = "; ".join(self.notes)
        self.env.results.append(self.result)
        (self.env.tmp / "fault-result.json").write_text(json.dumps(self.result, indent=2))
        print("\n" + table_line(self.result))
        self._stack.close()

    def resume_all(self) -> None:
        """SIGCONT everything a scenario may have stopped (harmless otherwise)."""
        self.env.redis.resume()
        for group in self.s.values():
            for st in group:
                if st.proc and st.proc.poll() is None:
                    os.killpg(st.proc.pid, signal.SIGCONT)

    # ---- the phases -------------------------------------------------------------------

    async def traffic(self, warmup: int = 300, within: float = 30) -> None:
        """Start the producers; return once ``warmup`` events were accepted."""
        self.producer.start()
        await self.wait(
            f"{warmup} events accepted before the fault",
            lambda: len(self.producer.accepted) >= warmup,
            within,
        )

    def fault_began(self) -> None:
        self.fault_start = time.monotonic()

    def fault_ended(self) -> None:
        self.fault_end = time.monotonic()
        self.fault_end_wall = time.time()

    async def flowing(self, n: int = 300, within: float = 60) -> None:
        """Producers get through again: ``n`` events accepted after the fault ended."""
        assert self.fault_end is not None
        t = self.fault_end
        await self.wait(
            f"{n} events accepted after the fault ended",
            lambda: self.producer.accepted_after(t) >= n,
            within,
        )

    async def finish(self, within: float = 60, stall: float = 20) -> None:
        await self.producer.finish(60)
        assert not self.producer.gave_up, self.producer.gave_up[:3]
        await self.check(within, stall)

    async def wait(self, what: str, ready: Callable[[], Any], within: float) -> None:
        """Until ``ready()`` (sync or async) is truthy; fails when a stage died, when the
        producers failed, or at the deadline."""
        deadline = time.monotonic() + within
        while True:
            self.assert_alive()
            if self.producer._task is not None and self.producer._task.done():
                self.producer._task.result()  # raises what the producer raised
            got = ready()
            if isinstance(got, Awaitable):
                got = await got
            if got:
                return
            if time.monotonic() > deadline:
                c = self.producer.counts
                raise AssertionError(
                    f"timed out after {within}s waiting for {what}: producers saw {dict(c)}, "
                    f"last refusals {self.producer.last_refusal}\n{self.log_errors()}"
                )
            await asyncio.sleep(0.05)

    # ---- stage processes --------------------------------------------------------------

    def assert_alive(self) -> None:
        """Every stage still runs as many processes as it started with."""
        for name, n in self.want.items():
            group = self.s.get(name, [])
            live = [st for st in group if st.proc and st.proc.poll() is None]
            if len(live) < n:
                dead = [st for st in group if st.proc and st.proc.poll() is not None]
                st = dead[-1]
                assert st.proc is not None
                log = st.log()
                why = next((ln for ln in reversed(log.splitlines()) if ln.strip()), "")
                raise AssertionError(
                    f"the {name} (pid {st.pid}) exited with code {st.proc.returncode} "
                    f"({why.strip()[:200]}) and nothing restarts it: the pipeline does not "
                    f"recover by itself. End of its log:\n{log[-2500:]}"
                )

    def log_errors(self, per_stage: int = 3) -> str:
        """The last distinct WARNING/ERROR records of each stage's log (records that differ
        only in numbers, e.g. the partition, count as one)."""
        out = []
        record = re.compile(r"^\d{4}-\d\d-\d\d \S+ (WARNING|ERROR|CRITICAL) (.*)$")
        for group in self.s.values():
            for st in group:
                seen: dict[str, str] = {}
                for ln in reversed(st.log().splitlines()):
                    m = record.match(ln)
                    if not m:
                        continue
                    text = re.sub(r"^\S+\[\d+\] ", "", m.group(2))[:300]
                    seen.setdefault(re.sub(r"\d+", "N", text), text)
                    if len(seen) >= per_stage:
                        break
                if seen:
                    lines = "\n      ".join(reversed(list(seen.values())))
                    out.append(f"  {st.name} pid {st.pid}: {lines}")
        return "last warnings/errors in the stage logs:\n" + ("\n".join(out) or "  (none)")

    def lease_losses(self) -> Counter[int]:
        """Per partition, how often a worker logged that it lost its drain lease."""
        lost: Counter[int] = Counter()
        for st in self.s.get("worker", []):
            for m in re.finditer(r"partition (\d+): lease lost", st.log()):
                lost[int(m.group(1))] += 1
        return lost

    # ---- PostgreSQL and Redis, as the test reads them ------------------------------------

    async def q(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.env.pg.dsn, timeout=5)
        try:
            return list(await conn.fetch(sql, *args, timeout=30))
        finally:
            await conn.close()

    def redis(self) -> Redis:
        return Redis.from_url(self.env.redis.url, socket_timeout=3, socket_connect_timeout=3)

    async def streams_state(self) -> dict[int, dict[str, Any]]:
        """Per partition: entries and pending entries of both streams, the projector's
        recorded position and the newest change entry's id."""
        r = self.redis()
        out: dict[int, dict[str, Any]] = {}
        try:
            for p in range(self.settings.partitions):
                row: dict[str, Any] = {}
                for name, key, group in (
                    ("ingest", ks.ingest_stream(p), ks.INGEST_GROUP),
                    ("changes", ks.changes_stream(p), ks.PROJECTOR_GROUP),
                ):
                    row[name] = await r.xlen(key)
                    row[f"{name}_oldest"] = None
                    try:
                        row[f"{name}_pending"] = (await r.xpending(key, group))["pending"]
                        if row[f"{name}_pending"]:
                            (o,) = await r.xpending_range(key, group, "-", "+", 1)
                            row[f"{name}_oldest"] = (
                                f"oldest pending {o['message_id'].decode()} delivered "
                                f"{o['times_delivered']}x to {o['consumer'].decode()}, idle "
                                f"{o['time_since_delivered'] / 1000:.0f}s"
                            )
                    except Exception:
                        row[f"{name}_pending"] = 0
                last = await r.xrevrange(ks.changes_stream(p), count=1)
                row["last_change"] = last[0][0].decode() if last else None
                row["drain_lock"] = bool(await r.exists(ks.drain_lock(p)))
                row["project_lock"] = bool(await r.exists(ks.project_lock(p)))
                out[p] = row
        finally:
            await r.aclose()
        return out

    async def stuck(self, missing: dict[str, int]) -> str:
        """What holds the missing events (event id -> partition), per partition, and which
        partitions' streams do not drain."""
        by_p: Counter[int] = Counter(missing.values())
        lines = []
        try:
            state = await self.streams_state()
        except Exception as e:
            state = {}
            lines.append(f"  Redis does not answer: {e!r}")
        try:
            pos = {
                r["partition"]: f"{r['stream_ms']}-{r['stream_seq']}"
                for r in await self.q("SELECT * FROM projector_positions")
            }
        except DB_ERRORS as e:
            pos = {}
            lines.append(f"  PostgreSQL does not answer: {e!r}")
        for p in range(self.settings.partitions):
            n, st = by_p.get(p, 0), state.get(p)
            if st is None:
                if n:
                    lines.append(f"  partition {p}: {n} accepted events not applied")
                continue
            if not (n or st["ingest"] or st["changes"]):
                continue
            head = (
                f"partition {p}: {n} accepted events not applied"
                if n
                else f"partition {p}: its streams do not drain"
            )
            if st["ingest"]:
                where = (
                    f"the WORKER is not draining it: ingest:{{p{p}}} holds {st['ingest']} "
                    f"entries ({st['ingest_pending']} delivered, unacknowledged; drain lease "
                    f"{'held' if st['drain_lock'] else 'free'})"
                )
                if st["ingest_oldest"]:
                    where += f"; {st['ingest_oldest']}"
            elif st["changes"]:
                where = (
                    f"the PROJECTOR is not applying it: changes:{{p{p}}} holds {st['changes']} "
                    f"entries ({st['changes_pending']} delivered, unacknowledged), newest "
                    f"{st['last_change']}, recorded position {pos.get(p)}"
                )
                if st["changes_oldest"]:
                    where += f"; {st['changes_oldest']}"
            else:
                where = "both streams are empty: the events are gone (lost)"
            lines.append(f"  {head}; {where}")
        return "\n".join(lines) + "\n" + await self.cpu() + "\n" + self.log_errors()

    async def cpu(self, over: float = 1.0) -> str:
        """Each live stage process's CPU use over ``over`` seconds: a stage whose log is
        silent but whose CPU is at 100% is stuck computing, one at 0% is waiting."""
        procs = []
        for group in self.s.values():
            for st in group:
                if st.proc and st.proc.poll() is None:
                    try:
                        ps = psutil.Process(st.pid)
                        procs.append((st, ps, sum(ps.cpu_times()[:2])))
                    except psutil.Error:
                        pass
        await asyncio.sleep(over)
        out = []
        for st, ps, before in procs:
            try:
                used = sum(ps.cpu_times()[:2]) - before
                out.append(f"{st.name} pid {st.pid} {100 * used / over:.0f}% ({ps.status()})")
            except psutil.Error:
                out.append(f"{st.name} pid {st.pid} gone")
        return "CPU of the stage processes over the last second: " + ", ".join(out)

    # ---- THE check --------------------------------------------------------------------

    def expect(self, eid: str, status: str, partition: int, what: str) -> None:
        self.expects[eid] = Expect(eid, status, partition, what)

    def _allowed(self, eid: str) -> bool:
        a = self.producer.accepted.get(eid)
        return a is not None and self.allowed_lost is not None and self.allowed_lost(a)

    async def _streams_empty(self) -> bool:
        try:
            state = await self.streams_state()
        except Exception:
            return False
        return not any(
            row["ingest"] or row["changes"] or row["ingest_pending"] or row["changes_pending"]
            for row in state.values()
        )

    async def _wait_accounted(self, within: float, stall: float) -> dict[str, str]:
        """Until every accepted event has its receipt in ``ingest_events`` (events the
        scenario allows to be lost excepted, once both streams are empty); returns the
        statuses. Fails fast when a stage died, and when nothing moved for ``stall``s."""
        parts = {
            eid: ks.partition_of(RT, a.group_key, self.settings.partitions)
            for eid, a in self.producer.accepted.items()
        }
        parts.update({e.eid: e.partition for e in self.expects.values()})
        start = last_move = time.monotonic()
        last_count = -1
        missing: dict[str, int] = dict(parts)
        while True:
            self.assert_alive()
            # streams first, receipts second: empty streams mean every receipt that will
            # ever be written is written, so the query after it sees them all
            drained = await self._streams_empty()
            try:
                rows = await self.q(
                    "SELECT event_id, status FROM ingest_events WHERE event_id = ANY($1)",
                    list(parts),
                )
            except DB_ERRORS:
                rows = None  # PostgreSQL still starting
            if rows is not None:
                seen = {r["event_id"]: r["status"] for r in rows}
                missing = {e: p for e, p in parts.items() if e not in seen}
                hard = {e: p for e, p in missing.items() if not self._allowed(e)}
                if not hard and (not missing or drained):
                    self.result["lost"] = len(missing)
                    return seen
                if len(missing) != last_count:
                    last_count, last_move = len(missing), time.monotonic()
            now = time.monotonic()
            if now - start > within or now - last_move > stall:
                hard = {e: p for e, p in missing.items() if not self._allowed(e)}
                self.result["unapplied"] = len(hard)
                named = [self.expects[e].what for e in hard if e in self.expects]
                took = f"{now - start:.0f}s after the producers stopped (no progress for "
                took += f"{now - last_move:.0f}s)"
                if hard:
                    head = f"{len(hard)} of {len(parts)} accepted events still have no receipt "
                    head += took + (": " + ", ".join(named) if named else "")
                else:
                    head = (
                        f"every accepted event outside the lost window has its receipt "
                        f"({len(missing)} inside it have none), but the streams still do "
                        f"not drain {took}"
                    )
                raise AssertionError(head + "\n" + await self.stuck(hard))
            await asyncio.sleep(0.25)

    async def check(self, within: float = 60, stall: float = 20) -> None:
        """THE end of every scenario.

        1. every 202 accounted for: its receipt is in ``ingest_events``, ``applied`` (or
           the status the scenario expects for events it sent itself), also read back
           through the receipt endpoint for a sample;
        2. no duplicate history row (one row per event id and resource);
        3. versions contiguous per resource (1..n), upserts in ``seq`` order, no payload
           that was never sent;
        4. the final ``data`` of each resource is the last accepted payload for it (or it
           is deleted, when the last accepted event was its delete);
        5. no manual step: every stage still runs the processes it started with.
        Only where ``allowed_lost`` says so may an accepted event have no effect at all.
        """
        statuses = await self._wait_accounted(within, stall)
        await self.wait("both streams to be empty with nothing pending", self._streams_empty, 20)
        p = self.producer
        bad: list[str] = []
        lost = {e for e in p.accepted if e not in statuses}
        self.result["lost"] = len(lost)
        wrong = [(e, s) for e, s in statuses.items() if e in p.accepted and s != "applied"]
        if wrong:
            bad.append(f"{len(wrong)} accepted events not applied, e.g. {wrong[:3]}")
        for e in self.expects.values():
            body = await receipt(self.http, self.key, e.eid)
            if statuses.get(e.eid) != e.status or body["status"] != e.status:
                bad.append(f"{e.what}: receipt {body['status']!r}, expected {e.status!r}")
        for eid in random.sample(sorted(statuses), min(10, len(statuses))):
            body = await receipt(self.http, self.key, eid)
            if body["status"] != statuses[eid]:
                bad.append(f"receipt endpoint says {body['status']} for {eid}")

        extra = await self.q(
            "SELECT event_id, status FROM ingest_events WHERE resource_type = $1"
            " AND NOT (event_id = ANY($2))",
            RT,
            list(p.accepted),
        )
        self.result["extra"] = len(extra)
        if any(r["status"] != "applied" for r in extra):
            bad.append("an unanswered (extra) event was not applied")

        hist = await self.q(
            "SELECT group_key, resource_id, version, op, event_id, (after->>'seq')::int AS seq"
            " FROM resource_changes WHERE resource_type = $1"
            " ORDER BY group_key, resource_id, version",
            RT,
        )
        per_event = Counter((r["event_id"], r["group_key"], r["resource_id"]) for r in hist)
        doubled = {k: n for k, n in per_event.items() if n > 1}
        self.result["doubled"] = len(doubled)
        if doubled:
            bad.append(f"{len(doubled)} events have more than one history row: {list(doubled)[:3]}")
        by_res: dict[tuple[str, str], list[asyncpg.Record]] = defaultdict(list)
        for r in hist:
            by_res[(r["group_key"], r["resource_id"])].append(r)
        gaps, disorder, phantom = [], [], []
        for key, rows in by_res.items():
            versions = [r["version"] for r in rows]
            if versions != list(range(1, len(rows) + 1)):
                gaps.append((key, versions[:12]))
            seqs = [r["seq"] for r in rows if r["op"] != "deleted"]
            if any(b <= a for a, b in itertools.pairwise(seqs)):
                disorder.append((key, seqs[:12]))
            phantom += [(key, s) for s in seqs if (key[0], key[1], s) not in p.attempted]
        if gaps:
            bad.append(f"versions not contiguous for {len(gaps)} resources, e.g. {gaps[:2]}")
        if disorder:
            bad.append(f"history out of seq order for {len(disorder)} resources: {disorder[:2]}")
        if phantom:
            bad.append(f"history rows with payloads never sent: {phantom[:3]}")

        current = {
            (r["group_key"], r["resource_id"]): r
            for r in await self.q(
                "SELECT group_key, resource_id, version, data FROM resources"
                " WHERE resource_type = $1",
                RT,
            )
        }
        expected: dict[tuple[str, str], Accepted] = {}
        for a in p.order:
            if a.eid not in lost:
                expected[(a.group_key, a.rid)] = a
        mismatched = []
        for key, a in expected.items():
            row, h = current.get(key), by_res.get(key, [])
            if a.op == "delete":
                if row is not None or not h or h[-1]["op"] != "deleted":
                    mismatched.append((key, f"deleted by seq {a.seq}", row and row["data"]))
            elif row is None or _json(row["data"]) != doc(a.rid, a.seq):
                mismatched.append((key, doc(a.rid, a.seq), row and _json(row["data"])))
            elif not h or row["version"] != h[-1]["version"]:
                mismatched.append((key, f"version {h[-1]['version'] if h else None}", row))
        strays = set(current) - set(expected)
        if mismatched:
            bad.append(
                f"{len(mismatched)} resources do not hold their last accepted payload: "
                f"{mismatched[:3]}"
            )
        if strays:
            bad.append(f"resources nobody sent: {sorted(strays)[:3]}")
        self.assert_alive()
        await self._recovery()
        if bad:
            raise AssertionError("the outcome is wrong:\n  " + "\n  ".join(bad))
        self.result["outcome"] = "pass"

    async def _recovery(self) -> None:
        """``recover_s``: from the fault's end until every event accepted by then was
        applied; ``last_s``: from the fault's end to the last event applied at all;
        ``first_202_s``: from the fault's end to the producers' first 202."""
        if self.fault_end is None or self.fault_end_wall is None:
            return
        end = self.fault_end
        before = [a.eid for a in self.producer.order if a.mono <= end] + list(self.expects)
        everything = list(self.producer.accepted) + list(self.expects)
        sql = (
            "SELECT extract(epoch FROM max(processed_at))::float8 AS t FROM ingest_events"
            " WHERE event_id = ANY($1)"
        )
        for name, ids in (("recover_s", before), ("last_s", everything)):
            rows = await self.q(sql, ids)
            if rows and rows[0]["t"] is not None:
                self.result[name] = round(max(0.0, rows[0]["t"] - self.fault_end_wall), 1)
        first = self.producer.first_after(end)
        if first is not None:
            self.result["first_202_s"] = round(first.mono - end, 1)

    # ---- helpers for scenarios --------------------------------------------------------

    async def admin_post(self, path: str, body: Any) -> tuple[int, Any]:
        async with self.http.post(path, json=body, headers=ADMIN) as r:
            return r.status, await r.json()

    async def add_table(self, table: str, schema: dict[str, Any]) -> tuple[int, Any]:
        """Another table in the run's schema group (the run's key reaches it)."""
        return await self.admin_post(
            f"/admin/v1/schema-groups/{self.group_id}/schemas", {"table": table, "schema": schema}
        )

    async def post_new_table(
        self, path: str, body: bytes, group_key: str, within: float = 10
    ) -> str:
        """POST to a table created just now: 404 until the gateway's registry poll knows
        it; the event id of the 202."""
        headers = {"X-Ingest-Key": self.key, "Content-Type": "application/json"}
        deadline = time.monotonic() + within
        while True:
            async with self.http.post(
                path, data=body, params={"groupKey": group_key}, headers=headers
            ) as r:
                if r.status == 202:
                    return str((await r.json())["eventId"])
                text = await r.text()
            if r.status != 404 or time.monotonic() > deadline:
                raise AssertionError(f"POST {path} -> {r.status} {text[:300]}")
            await asyncio.sleep(0.05)

    async def stop_mid_batch(self, group: list[Stage], within: float = 20) -> tuple[Stage, int]:
        """SIGSTOP a worker while it holds delivered, unacknowledged ingest entries (seen
        again once it is stopped, so it is frozen inside a batch); returns it and how many
        entries it holds."""
        keys = [ks.ingest_stream(p) for p in range(self.settings.partitions)]
        deadline = time.monotonic() + within
        r = self.redis()
        try:
            while time.monotonic() < deadline:
                alive = {f"{os.uname().nodename}-{st.pid}": st for st in group}
                pending = await pending_by_consumer(r, keys, ks.INGEST_GROUP)
                victim = next((alive[n] for n, k in pending.items() if k and n in alive), None)
                if victim is None:
                    await asyncio.sleep(0.002)
                    continue
                os.killpg(victim.pid, signal.SIGSTOP)
                name = f"{os.uname().nodename}-{victim.pid}"
                held = (await pending_by_consumer(r, keys, ks.INGEST_GROUP)).get(name, 0)
                if held:
                    return victim, held
                os.killpg(victim.pid, signal.SIGCONT)
            raise AssertionError(f"no worker was caught inside a batch in {within}s")
        finally:
            await r.aclose()


def _json(v: Any) -> Any:
    """A jsonb value as the test's plain asyncpg connection returns it (text)."""
    return orjson.loads(v) if isinstance(v, str | bytes) else v


def table_line(r: dict[str, Any]) -> str:
    def f(k: str) -> str:
        v = r.get(k)
        return "-" if v is None else str(v)

    unapplied = f"UNAPPLIED={r['unapplied']} " if "unapplied" in r else ""
    line = (
        f"{r['scenario']:<34} {r['outcome']:<4} {f('seconds'):>6}s  202={f('accepted_202')} "
        f"503={f('refused_503')} 429={f('refused_429')} err={f('errors')} lost={f('lost')} "
        f"{unapplied}doubled={f('doubled')} extra={f('extra')} fault={f('fault_s')}s "
        f"first202={f('first_202_s')}s recover={f('recover_s')}s last={f('last_s')}s"
    )
    if r.get("notes"):
        line += f"  [{r['notes']}]"
    if r.get("failure"):
        line += f"\n    -> {r['failure']}"
    return line
