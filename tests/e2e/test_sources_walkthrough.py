"""The README's pull-source walkthrough (the seed's Mailchimp members example) run as a
new user runs it: `ingestd dev` with embedded servers and the demo API as a process (the
README's command, on a free port), then `examples/sources-walkthrough.sh` twice in a row
(executed, then sourced); each output is compared with what the README shows, and the
spec it posted (the seed's), the run records and the resources are checked through the
API.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.demo_api import LIST_ID, member_id
from tests.e2e.demoproc import DemoProc, demo_api
from tests.e2e.devproc import READY, TOKEN, Dev, data_folder, running_dev, stop_cleanly
from tests.e2e.procs import unconfigured_env
from tests.e2e.readme import ROOT, block, output_matches
from tests.sources_helpers import mailchimp_members

pytestmark = pytest.mark.slow  # `ingestd dev` and the demo API as processes

SCRIPT = ROOT / "examples" / "sources-walkthrough.sh"
RT = "_mailchimp_member"


def shell(dev: Dev, demo: DemoProc, script: str) -> str:
    """``script`` run by bash in the checkout, as the user's shell with `make run` and the
    demo API going."""
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env={
            **unconfigured_env(),
            "INGESTD_DATA_DIR": str(dev.data_dir),
            "INGESTD_HTTP_PORT": str(dev.port),
            "DEMO": demo.url,
        },
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0 and not done.stderr, done.stdout + done.stderr
    return done.stdout


@dataclass
class Walked:
    dev: Dev
    token: str
    demo: DemoProc
    first: str
    second: str


@pytest.fixture(scope="module")
def walked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walked]:
    tmp = tmp_path_factory.mktemp("sources-walkthrough")
    with data_folder() as data_dir, running_dev(tmp, data_dir) as dev, demo_api(tmp) as demo:
        token = dev.wait_for(TOKEN)
        dev.wait_for(READY)
        first = shell(dev, demo, "bash examples/sources-walkthrough.sh")
        second = shell(dev, demo, ". examples/sources-walkthrough.sh")
        yield Walked(dev, token, demo, first, second)
        stop_cleanly(dev)


def test_the_readme_shows_the_script_and_the_commands() -> None:
    assert block("sh", before="This is\n`examples/sources-walkthrough.sh`:") == SCRIPT.read_text()
    assert block("sh", before="start the demo API in\na second terminal") == (
        ".venv/bin/python -m tests.demo_api --port 8070\n"  # what demo_api() starts
    )
    assert block("sh", before="run the pull walkthrough") == (
        "bash examples/sources-walkthrough.sh\n"
    )


def test_it_runs_twice_and_prints_what_the_readme_shows(walked: Walked) -> None:
    output_matches(block("text", before="Its first run prints"), walked.first)
    output_matches(block("text", before="Run again, the script finds"), walked.second)


def test_both_runs_succeeded_and_the_members_are_resources(walked: Walked) -> None:
    def call(path: str) -> dict[str, object]:
        return dict(walked.dev.call("GET", path, walked.token))

    runs = call("/admin/v1/sources/members/runs")["items"]
    assert isinstance(runs, list)
    assert [(r["status"], r["kind"], r["records"], r["pending"]) for r in runs] == [
        ("succeeded", "backfill", 25, 0),
        ("succeeded", "backfill", 25, 0),
    ]
    assert [(r["created"], r["unchanged"]) for r in runs] == [(0, 25), (25, 0)]
    # the spec the script posted is the seed's (parsed from the seed's own text), with the
    # host and the API key as the README says
    spec = call("/admin/v1/source-specs/mailchimp-members")
    assert (spec["revision"], spec["sourceSpec"]) == (1, mailchimp_members(walked.demo.url))
    source = call("/admin/v1/sources/members")
    assert source["params"] == {"listId": LIST_ID, "apiKey": "******"}
    items = call(f"/api/v1/resources/{RT}?limit=1000")["items"]
    assert isinstance(items, list) and len(items) == 25
    one = call(f"/api/v1/resources/{RT}/{member_id('member00003@example.com')}")
    assert one["name"] == "member00003@example.com"
    data = one["data"]
    assert isinstance(data, dict) and set(data) == {"member"}
    assert not {"_links", "list_id"} & set(data["member"])  # the spec's skipAttributes
