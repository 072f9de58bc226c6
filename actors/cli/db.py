"""`shoal db migrate` and `shoal db check`: a cluster's PostgreSQL schema, before any node starts.

A node migrates an empty database by itself as it opens the store; an operator who upgrades Shoal
across a cluster wants to do it once, on purpose, and a deploy script wants to know first whether
this Shoal can use the database at all. Exit codes (actors/cli/errors.py): 0 ready (or migrated),
1 the schema is missing or older (`shoal db migrate` fixes it), 2 no store or not PostgreSQL,
4 the schema is newer than this Shoal (or the database is not Shoal's), 5 cannot connect.
The URL is always printed redacted: its password never reaches a terminal or a log.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ...protocols.config import load_config, parse_store_url
from ...protocols.errors import StoreError
from ..taskstore import ENV_STORE_URL
from .errors import EXIT_CONFLICT, EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, CliError
from .output import print_json
from .serve import ENV_CONFIG


def resolve_store(args: argparse.Namespace, environ: dict[str, str] | None = None) -> str:
    """The PostgreSQL URL a command works on, as `shoal serve` would pick it: --store, else
    --config's ($SHOAL_CONFIG's) store.url, else $SHOAL_STORE_URL. Bad or missing: exit 2."""
    env = os.environ if environ is None else environ
    url: str | None = getattr(args, "store", None)
    source = "--store"
    if not url:
        path = getattr(args, "config", None) or env.get(ENV_CONFIG)
        if path:
            url, source = load_config(path).store.url, f"{path}: store.url"
    if not url and env.get(ENV_STORE_URL):
        url, source = env[ENV_STORE_URL], f"${ENV_STORE_URL}"
    if not url:
        raise CliError(
            f"which database? pass --store postgresql://user@host/db, set ${ENV_STORE_URL}, or give"
            " --config a file with store.url",
            EXIT_USAGE,
        )
    try:
        backend, _ = parse_store_url(url)
    except ValueError as exc:
        raise CliError(f"{source}: {exc}", EXIT_USAGE) from None
    if backend != "postgresql":
        raise CliError(
            f"{source}: `shoal db` works on a cluster's PostgreSQL store (postgresql://…); a SQLite"
            " store migrates itself when Shoal opens it",
            EXIT_USAGE,
        )
    return url


def cmd_db(args: argparse.Namespace) -> int:
    # psycopg loads for this command only: `shoal status` and the others stay quick
    from ..pgschema import SCHEMA_VERSION, connect, db_migrate, redact, schema_version

    url = resolve_store(args)
    shown = redact(url)
    try:
        with connect(url, timeout_s=args.timeout) as conn:
            found = schema_version(conn)
            row = conn.execute("SELECT to_regclass('shoal_meta') IS NOT NULL").fetchone()
            empty = found == 0 and not (row and row[0])  # no Shoal table at all, not a version 0
    except StoreError as exc:  # its text names the host and the reason, never the password
        raise CliError(str(exc), EXIT_UNREACHABLE) from None
    if found is None:
        why = "has a `tasks` table but is not a Shoal store; not touching it"
        raise CliError(f"{shown}: {why}", EXIT_CONFLICT)
    if found > SCHEMA_VERSION:
        raise CliError(
            f"{shown}: schema version {found} is newer than this Shoal understands ({SCHEMA_VERSION});"
            " upgrade Shoal on this machine",
            EXIT_CONFLICT,
        )
    report: dict[str, Any] = {"store": shown, "found": found, "schema": SCHEMA_VERSION, "empty": empty}
    if args.action == "migrate":
        try:
            _, now = db_migrate(url, apply=True)
        except StoreError as exc:
            raise CliError(str(exc), EXIT_FAILED) from None
        report.update(now=now, migrated=now != found, ok=True)
        text = (
            f"{shown}: schema version {found} → {now} (migrated)"
            if now != found
            else f"{shown}: schema version {now}, up to date"
        )
        return _report(args, report, text, EXIT_OK)
    report.update(now=found, migrated=False, ok=found == SCHEMA_VERSION)
    if found == SCHEMA_VERSION:
        return _report(args, report, f"{shown}: schema version {found}, ready", EXIT_OK)
    why = (
        "no Shoal schema (an empty database)"
        if empty
        else f"schema version {found} is older than this Shoal's ({SCHEMA_VERSION})"
    )
    return _report(args, report, f"{shown}: {why}; run `shoal db migrate`", EXIT_FAILED)


def _report(args: argparse.Namespace, report: dict[str, Any], text: str, code: int) -> int:
    if args.json:
        print_json(report)
    if code == EXIT_OK:
        if not args.json:
            sys.stdout.write(text + "\n")
    else:
        sys.stderr.write(f"shoal: {text}\n")
    return code


def add_db_parser(sub: Any) -> None:
    """`shoal db {migrate,check}` (no gateway: it speaks to PostgreSQL)."""
    help_text = "a cluster's PostgreSQL schema: migrate creates or upgrades it, check says if it is ready"
    p = sub.add_parser("db", help=help_text, description=help_text)
    p.set_defaults(handler=cmd_db)
    p.add_argument("action", choices=["migrate", "check"])
    p.add_argument(
        "--store", metavar="URL", help=f"postgresql://user:password@host/db (${ENV_STORE_URL}, store.url)"
    )
    p.add_argument("--config", help=f"read store.url from this TOML file (${ENV_CONFIG})")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the connection")
    p.add_argument("--json", action="store_true", help="print JSON: store, found, now, schema, ok")


__all__ = ["add_db_parser", "cmd_db", "resolve_store"]
