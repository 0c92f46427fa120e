"""`ingestd dev` refusing to start ends in exit 2 and one line, never a traceback, and
before it starts anything: the gateway's port held by another program, a data folder
that is a file, an embedded PostgreSQL that cannot start."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from shared.embedded import free_port
from tests.e2e.devproc import user_env
from tests.e2e.procs import INGESTD


def dev(data_dir: Path, port: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INGESTD, "dev"],
        env=user_env(data_dir, port),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_taken_port_is_a_clean_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = dev(tmp_path / "data", port, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (
        f"cannot start: 127.0.0.1:{port} is in use by another program (Address already in "
        "use): stop it, or set INGESTD_HTTP_PORT to a free port"
    )
    assert not done.stdout


def test_a_data_folder_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a folder")
    done = dev(tmp_path / "data", free_port(), tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(
        f"configuration error: INGESTD_DATA_DIR {tmp_path / 'data'} cannot be used"
    )


def test_an_embedded_postgresql_that_cannot_start(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "postgres").write_text("in the way")
    done = dev(tmp_path / "data", free_port(), tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("cannot start: the embedded PostgreSQL did not start"), done.stderr
