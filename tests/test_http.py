"""The dashboard's HTTP side on a real swarm: page, static files, /metrics, /healthz, /config.json."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from swarmkit import swarm_config

from shoal.actors.http import HttpActor, dashboard_url, load_static
from shoal.protocols.config import HttpConfig
from shoal.protocols.errors import ValidationError

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "actors" / "static"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    from shoal.actors.tree import open_swarm

    config = swarm_config(tmp_path, http={"enabled": True, "port": 0}, gateway={"enabled": True, "port": 0})
    async with open_swarm(config) as swarm:
        assert swarm.http_url is not None
        async with httpx.AsyncClient(base_url=swarm.http_url, trust_env=False) as client:
            yield swarm, client


async def test_page_is_served_without_the_token_and_with_a_strict_policy(
    served: tuple[Any, httpx.AsyncClient],
) -> None:
    swarm, client = served
    r = await client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script type="module" src="/static/app.js">' in r.text
    assert swarm.token not in r.text
    csp = r.headers["content-security-policy"]
    gateway_origin = swarm.gateway_url.rstrip("/")
    assert f"connect-src 'self' {gateway_origin}" in csp
    assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"


async def test_config_json_names_the_gateway_and_no_secret(served: tuple[Any, httpx.AsyncClient]) -> None:
    swarm, client = served
    r = await client.get("/config.json")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    doc = r.json()
    assert doc["gateway_url"] == swarm.gateway_url
    assert swarm.token not in r.text


async def test_static_files_have_types_etags_and_gzip(served: tuple[Any, httpx.AsyncClient]) -> None:
    _, client = served
    r = await client.get("/static/vendor/xterm/xterm.mjs", headers={"accept-encoding": "gzip"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    assert r.headers["content-encoding"] == "gzip"
    assert r.content == (STATIC / "vendor" / "xterm" / "xterm.mjs").read_bytes()  # httpx decoded it
    etag = r.headers["etag"]
    again = await client.get("/static/vendor/xterm/xterm.mjs", headers={"if-none-match": etag})
    assert again.status_code == 304 and again.content == b""
    raw = await client.get("/static/app.css", headers={"accept-encoding": "identity"})
    assert raw.headers["content-type"] == "text/css; charset=utf-8"
    assert "content-encoding" not in raw.headers
    assert raw.content == (STATIC / "app.css").read_bytes()
    head = await client.head("/static/app.js", headers={"accept-encoding": "identity"})
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len((STATIC / "app.js").read_bytes())


async def test_bad_paths_and_methods(served: tuple[Any, httpx.AsyncClient]) -> None:
    _, client = served
    for path in ("/static/../http.py", "/static/%2e%2e/http.py", "/static/", "/nope", "/static/vendor/"):
        r = await client.get(path)
        assert r.status_code == 404, path
    r = await client.post("/metrics", content=b"x")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"


async def test_metrics_parse_as_prometheus_text(served: tuple[Any, httpx.AsyncClient]) -> None:
    swarm, client = served
    await swarm.submit({"prompt": "count me", "id": "m1"})
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert {"shoal_tasks_submitted", "shoal_queue_depth", "shoal_workers", "shoal_breaker_state"} <= set(
        families
    )
    submitted = sum(s.value for s in families["shoal_tasks_submitted"].samples if s.name.endswith("_total"))
    assert submitted >= 1


async def test_grafana_example_uses_only_exposed_metrics(served: tuple[Any, httpx.AsyncClient]) -> None:
    _, client = served
    text = (await client.get("/metrics")).text
    exposed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    names: set[str] = set()
    for family in exposed:  # a histogram `x` is queried as x_bucket / x_sum / x_count
        names |= {family, f"{family}_bucket", f"{family}_sum", f"{family}_count"}
    dashboard = json.loads((ROOT / "examples" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    used = {m for e in exprs for m in re.findall(r"\bshoal_[a-z_]+", e)}
    assert used and used <= names, sorted(used - names)


async def test_healthz_follows_the_swarm_state(served: tuple[Any, httpx.AsyncClient]) -> None:
    swarm, client = served
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json()["state"] == "running" and r.json()["ok"] is True
    await swarm.halt("operator test")
    r = await client.get("/healthz")
    assert r.status_code == 503
    assert r.json()["state"] == "halted" and r.json()["reason"] == "operator test"
    await swarm.resume()
    assert (await client.get("/healthz")).status_code == 200


def test_dashboard_url_carries_the_token_in_the_fragment() -> None:
    assert dashboard_url("127.0.0.1", 8766, "a/b+c") == "http://127.0.0.1:8766/#token=a%2Fb%2Bc"
    assert dashboard_url("0.0.0.0", 1, "t") == "http://127.0.0.1:1/#token=t"
    assert dashboard_url("::1", 2, "t") == "http://[::1]:2/#token=t"
    assert dashboard_url("::", 3, "t", scheme="https") == "https://[::1]:3/#token=t"
    assert HttpActor.dashboard_url("localhost", 4, "t") == "http://localhost:4/#token=t"


async def test_a_non_loopback_bind_is_refused_unless_allowed(served: tuple[Any, httpx.AsyncClient]) -> None:
    swarm, _ = served
    actor = HttpActor(swarm, HttpConfig(host="0.0.0.0", port=0), swarm.metrics, lambda: None, "t")
    with pytest.raises(ValidationError) as info:
        await actor.run()  # refused before binding anything
    assert info.value.field == "http.host"


async def test_a_second_actor_binds_its_own_port_and_stops_cleanly(
    served: tuple[Any, httpx.AsyncClient],
) -> None:
    swarm, _ = served
    actor = HttpActor(swarm, HttpConfig(port=0), swarm.metrics, lambda: swarm.gateway_url, "tok")
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(actor.run)
        assert actor.login_url() == f"http://127.0.0.1:{port}/#token=tok" and host == "127.0.0.1"
        async with httpx.AsyncClient(trust_env=False) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        actor.stop()  # graceful: run() returns by itself
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(trust_env=False) as client:
            await client.get(f"http://127.0.0.1:{port}/healthz")


# ---- the page's files ---------------------------------------------------------------------------------


def test_every_file_the_page_loads_is_shipped_and_local() -> None:
    """Offline: each script, style and module import resolves to a file in the package, none remote."""
    files = load_static()
    html = files["index.html"].body.decode()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert not [r for r in refs if re.match(r"(?i)(https?:)?//", r)], refs
    todo = [r.removeprefix("/static/") for r in refs if r.startswith("/static/")]
    seen: set[str] = set()
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        assert rel in files, f"{rel} is referenced but not shipped"
        if rel.endswith((".js", ".mjs")):
            text = files[rel].body.decode()
            for spec in re.findall(r'^\s*(?:import|export)\b[^;]*?from\s*"([^"]+)"', text, re.M):
                assert spec.startswith("./"), (
                    f"{rel} imports {spec!r}: only relative module paths work offline"
                )
                base = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
                todo.append(str(Path(base + spec[2:])))
    assert {"app.js", "vendor/xterm/xterm.mjs", "vendor/uplot/uPlot.esm.js", "vendor/xterm/xterm.css"} <= seen


def test_vendored_libraries_keep_their_licences() -> None:
    vendor = STATIC / "vendor"
    readme = (vendor / "README.md").read_text()
    for folder in sorted(p for p in vendor.iterdir() if p.is_dir()):
        assert (folder / "LICENSE").read_text().strip(), folder
        assert f"`{folder.name}/`" in readme, f"{folder.name} missing from vendor/README.md"


def test_static_files_are_compressed_only_when_it_helps() -> None:
    files = load_static()
    big = files["vendor/xterm/xterm.mjs"]
    assert big.gzipped is not None and gzip.decompress(big.gzipped) == big.body
    assert big.etag.startswith('"') and len(big.etag) == 34
    assert files["vendor/xterm/LICENSE"].content_type == "text/plain; charset=utf-8"


async def test_leaving_the_swarm_closes_the_listener_and_connections(tmp_path: Path, no_leaks: None) -> None:
    from shoal.actors.tree import open_swarm

    config = swarm_config(tmp_path, http={"enabled": True, "port": 0}, gateway={"enabled": True, "port": 0})
    async with httpx.AsyncClient(trust_env=False) as client:
        async with open_swarm(config) as swarm:
            url = swarm.http_url
            for path in ("/", "/static/app.js", "/metrics", "/healthz"):
                assert (await client.get(url + path.lstrip("/"))).status_code == 200
        with pytest.raises(httpx.TransportError):  # the kept-alive connection was closed too
            await client.get(url + "healthz")
