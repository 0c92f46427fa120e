"""``python -m tests.demo_api --port 8070 [--members N] [--bulk N]``: the demo API alone."""

from __future__ import annotations

import argparse
import asyncio
import signal

from tests.demo_api.app import running
from tests.demo_api.state import CAMPAIGN_ID, LIST_ID, DemoState


async def _serve(args: argparse.Namespace) -> None:
    state = DemoState.sample(members=args.members, users=args.users, bulk=args.bulk)
    if args.api_key:
        state.api_key = args.api_key
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running(state, args.host, args.port) as server:
        print(f"demo API listening on {server.url}", flush=True)
        print(
            f"  Mailchimp list {LIST_ID} ({args.members} members), campaign {CAMPAIGN_ID}, "
            f"API key {state.api_key}; {args.bulk} bulk records",
            flush=True,
        )
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.demo_api", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8070, help="0: a free port")
    parser.add_argument("--members", type=int, default=25, help="Mailchimp list members")
    parser.add_argument("--users", type=int, default=25, help="Zendesk users")
    parser.add_argument("--bulk", type=int, default=0, help="records of /bulk/items")
    parser.add_argument("--api-key", default="", help="the Mailchimp API key to require")
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
