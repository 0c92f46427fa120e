"""What every figure shares: the run's context, sizes, payloads and the figure record."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from shared.config import Settings
from tests.bench.env import Servers


@dataclass(frozen=True)
class Sizes:
    rounds: int  # alternating floor/system rounds for figure 1 and 2
    duration: float  # seconds measured per load run
    warmup: float
    backlog: int  # figure 3 / 6 events
    latency_duration: float  # figure 5 seconds of fixed-rate load
    snapshot: int  # figure 4 resources
    bulk_items: int  # resources per bulk request in figure 2
    pull_records: int  # figure 8: records the demo API serves to one full source run
    live_duration: float = 10  # figures 15 and 16: seconds of live load per run
    live_rounds: int = 2  # figure 15: alternating ingestd / peer pairs per workload


FULL = Sizes(
    rounds=5,
    duration=4,
    warmup=1,
    backlog=20_000,
    latency_duration=10,
    snapshot=200_000,
    bulk_items=1000,
    pull_records=200_000,
)
QUICK = Sizes(
    rounds=1,
    duration=2,
    warmup=1,
    backlog=3_000,
    latency_duration=3,
    snapshot=10_000,
    bulk_items=200,
    pull_records=20_000,
    live_duration=3,
    live_rounds=1,
)


@dataclass
class Figure:
    id: int
    title: str
    unit: str = ""
    value: float | None = None
    floor: float | None = None
    floor_title: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    status: str = "measured"  # measured | pending | error | skipped
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class Bench:
    settings: Settings
    servers: Servers
    sizes: Sizes
    generator: str
    workdir: Path
    profile_dir: Path | None
    connections: int = 32
    figures: dict[int, Figure] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)


def employee(n: int | str, team: str = "") -> dict[str, Any]:
    return {
        "employeeId": f"e-{team}{n}",
        "active": True,
        "employee": {
            "username": f"user{n}",
            "email": f"user{n}@example.com",
            "age": 20 + zlib.crc32(str(n).encode()) % 40,
        },
    }


def single_body(template: bool = False) -> bytes:
    """A resource-shaped single-event body; ``template`` leaves ``@N@`` for the generator."""
    if template:
        return orjson.dumps(employee("@N@"))
    return orjson.dumps(employee(1))


def cpus() -> int:
    return os.cpu_count() or 1
