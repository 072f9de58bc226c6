"""`shoal serve`: the configuration from file, environment and flags, then the swarm as a service."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import trio

from ...protocols.config import SwarmConfig, load_config, patch_config
from ..auth import check_bind
from .errors import EXIT_OK
from .values import nest, parse_assignment

ENV_CONFIG = "SHOAL_CONFIG"
ENV_PREFIX = "SHOAL__"  # SHOAL__scaling__max_workers=4 sets scaling.max_workers for `shoal serve`


def env_overrides(environ: dict[str, str] | os._Environ[str] | None = None) -> list[tuple[str, Any]]:
    """SHOAL__section__key=value variables as (dotted key, value) pairs."""
    env = os.environ if environ is None else environ
    pairs = []
    for name, raw in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            key = ".".join(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
            pairs.append(parse_assignment(f"{key}={raw}"))
    return pairs


def build_serve_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> SwarmConfig:
    """Defaults < --config FILE ($SHOAL_CONFIG) < SHOAL__* variables < flags (--set last)."""
    env = os.environ if environ is None else environ
    path = args.config or env.get(ENV_CONFIG)
    config = load_config(path) if path else SwarmConfig()
    pairs: list[tuple[str, Any]] = env_overrides(env)
    if env.get("SHOAL_STATE_DIR") and not args.state_dir and not config.state_dir:
        pairs.append(("state_dir", env["SHOAL_STATE_DIR"]))
    flags: list[tuple[str, Any]] = [
        ("state_dir", args.state_dir),
        ("gateway.host", args.host),
        ("gateway.port", args.port),
        ("http.host", args.http_host),
        ("http.port", args.http_port),
        ("workers.profile", args.profile),
        ("scaling.min_workers", args.min_workers),
        ("scaling.max_workers", args.max_workers),
        ("gateway.token_file", args.token_file),
        ("store.url", getattr(args, "store", None)),
        ("node.id", getattr(args, "node_id", None)),
    ]
    pairs += [(k, v) for k, v in flags if v is not None]
    if args.allow_remote:
        pairs += [("gateway.allow_remote", True)]
    if args.no_dashboard:
        pairs.append(("http.enabled", False))
    if args.log_format:
        pairs.append(("log.format", args.log_format))
    pairs += [parse_assignment(item, "--set") for item in args.set or ()]
    if pairs:
        config = patch_config(config, nest(pairs))
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    config = build_serve_config(args)
    warning = check_bind(config.gateway.host, config.gateway.allow_remote, "gateway")
    http_warning = check_bind(config.http.host, config.gateway.allow_remote, "http")
    for text in (warning, http_warning):
        if text:
            sys.stderr.write(text + "\n")
    from functools import partial

    from ..service import serve

    trio.run(partial(serve, config, drain=args.drain, restore_signals=False))
    return EXIT_OK
