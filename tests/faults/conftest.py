"""Fixtures of the fault suite: a PostgreSQL data dir initialised once per session (copied
for each test) and, per test, private Redis + PostgreSQL servers (:class:`FaultEnv`).

Results (one row per scenario: what producers saw, lost, doubled, recovery time) are
printed at the end of the run and written to ``<pytest basetemp>/fault-results.jsonl``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import FaultEnv, table_line
from tests.faults.servers import PrivatePostgres

RESULTS: list[dict[str, Any]] = []
RESULTS_FILE: list[Path] = []


@pytest.fixture(scope="session")
def pg_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An initdb'd data dir, copied by every test (initdb once: ~1 s saved per test)."""
    template = PrivatePostgres(tmp_path_factory.mktemp("pg-template") / "data")
    template.initdb()
    yield template.folder
    template.remove()


@pytest.fixture
def fault_env_with(
    tmp_path: Path, pg_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., FaultEnv]]:
    """``fault_env_with(appendfsync=..., durability=...)``: the private servers of one
    test, with the given Redis fsync policy and durability mode (at most one per test)."""
    envs: list[FaultEnv] = []

    def start(**kw: Any) -> FaultEnv:
        assert not envs, "one fault environment per test"
        envs.append(FaultEnv.start(tmp_path, pg_template, **kw))
        return envs[0]

    try:
        yield start
    finally:
        for env in envs:
            env.stop()
            out = tmp_path_factory.getbasetemp() / "fault-results.jsonl"
            with out.open("a") as f:
                for r in env.results:
                    f.write(json.dumps(r) + "\n")
            RESULTS.extend(env.results)
            if not RESULTS_FILE:
                RESULTS_FILE.append(out)


@pytest.fixture
def fault_env(fault_env_with: Callable[..., FaultEnv]) -> FaultEnv:
    return fault_env_with()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    terminalreporter.section("fault scenarios")
    for r in RESULTS:
        terminalreporter.write_line(table_line(r))
    terminalreporter.write_line(f"(JSON lines: {RESULTS_FILE[0]})")
