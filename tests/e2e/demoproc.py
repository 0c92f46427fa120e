"""The demo REST API (tests/demo_api) as a process, started as the README starts it
(`python -m tests.demo_api --port N`), for the process-level tests of pull sources."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shared.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"^demo API listening on (http://\S+)$", re.M)
START_TIMEOUT = 30.0


@dataclass
class DemoProc:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def demo_api(tmp_path: Path, *args: str) -> Iterator[DemoProc]:
    """The demo API on a free port (``args``: more of its options, e.g. ``--members``)."""
    log_path = tmp_path / f"demo-api-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.demo_api", "--port", str(free_port()), *args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while (m := LISTENING.search(log_path.read_text())) is None:
            assert proc.poll() is None, f"the demo API exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"the demo API did not start:\n{log_path}"
            time.sleep(0.05)
        yield DemoProc(proc, m.group(1), log_path)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
