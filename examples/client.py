#!/usr/bin/env python3
"""A websocket client of Shoal's gateway, in a trio program (see docs/protocol.md).

    shoal serve &                                   # in another terminal
    python examples/client.py "write a haiku about trio" "and one about asyncio"
    python examples/client.py --embedded "hello"    # starts its own swarm (fake agents) first

It submits the prompts as tasks, follows their events live, prints each result, and exits non-zero
if any task did not finish `done`. The URL and token come from --url/--token, $SHOAL_URL/$SHOAL_TOKEN,
or the running server's state directory, as for the `shoal` command.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import AsyncExitStack

import trio

from shoal.actors.auth import DEFAULT_URL, read_endpoint, read_token, resolve_state_dir, token_path
from shoal.actors.client import Gap, Overflow
from shoal.protocols.config import config_from_dict
from shoal.protocols.tasks import TERMINAL_STATES
from shoal.runtime import Event, connect, open_swarm


async def run(prompts: list[str], url: str | None, token: str | None, embedded: bool) -> int:
    async with AsyncExitStack() as stack:
        if embedded:
            config = config_from_dict(
                {
                    "state_dir": stack.enter_context(tempfile.TemporaryDirectory()),
                    "gateway": {"enabled": True, "port": 0},
                    "scaling": {"max_workers": 2},
                }
            )
            swarm = await stack.enter_async_context(open_swarm(config))
            url, token = swarm.gateway_url, swarm.token
        assert url is not None
        client = await stack.enter_async_context(connect(url, token))
        print(f"connected to {url} (server {(await client.version())['version']})")

        # subscribe first, so no completion can happen unseen between submit and subscribe
        stream = await stack.enter_async_context(client.events(["task.*"]))
        tasks = await client.submit_many([{"prompt": p} for p in prompts])
        waiting = {t.id for t in tasks if t.state not in TERMINAL_STATES}
        for t in tasks:
            print(f"submitted {t.id}: {t.prompt!r} ({t.state})")

        async for item in stream:
            if isinstance(item, Gap | Overflow):  # events were lost: ask for the current state
                for tid in list(waiting):
                    if (await client.get(tid)).state in TERMINAL_STATES:
                        waiting.discard(tid)
            elif isinstance(item, Event) and item.data.get("task_id") in waiting:
                print(f"  [{item.seq}] {item.topic} {item.data['task_id']}")
                if item.topic in ("task.done", "task.dead", "task.cancelled", "task.skipped"):
                    waiting.discard(item.data["task_id"])
            if not waiting:
                break

        failed = 0
        for t in tasks:
            final = await client.get(t.id)
            print(f"{final.id}: {final.state} - {final.result or final.reason}")
            failed += final.state != "done"
        return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prompts", nargs="+")
    parser.add_argument("--url", default=os.environ.get("SHOAL_URL"))
    parser.add_argument("--token", default=os.environ.get("SHOAL_TOKEN"))
    parser.add_argument("--embedded", action="store_true", help="start a swarm in this process first")
    args = parser.parse_args()
    url, token = args.url, args.token
    if not args.embedded:
        state_dir = resolve_state_dir(None)
        url = url or read_endpoint(state_dir) or DEFAULT_URL
        token = token or read_token(token_path(state_dir))
    return trio.run(run, args.prompts, url, token, args.embedded)


if __name__ == "__main__":
    sys.exit(main())
