"""`shoal nodes`: every node of the cluster, through any node's gateway (`nodes.list`), or with
`--store URL` straight from the database, for when no node is running to ask."""

from __future__ import annotations

import argparse
from typing import Any

from ...protocols.errors import StoreError
from ..client import Client
from .connection import run_with_client
from .db import resolve_store
from .errors import EXIT_OK, EXIT_UNREACHABLE, CliError
from .output import make_console, nodes_table, print_json


def _show(args: argparse.Namespace, reply: dict[str, Any]) -> int:
    if args.json:
        print_json(reply)
    elif not reply["nodes"]:
        make_console().print("no nodes yet (none has sent a heartbeat)")
    else:
        make_console().print(nodes_table(reply["nodes"]))
    return EXIT_OK


def cmd_nodes(args: argparse.Namespace) -> int:
    if args.store:
        from ..clusterview import node_entry  # psycopg: clusters only
        from ..pgschema import open_nodes

        url = resolve_store(args)
        try:
            rows = open_nodes(url)
        except StoreError as exc:  # names the host and the reason, never the password
            raise CliError(str(exc), EXIT_UNREACHABLE) from None
        return _show(args, {"node_id": None, "cluster": True, "nodes": [node_entry(r, None) for r in rows]})

    async def go(c: Client) -> int:
        return _show(args, await c.nodes())

    return run_with_client(args, go)


__all__ = ["cmd_nodes"]
