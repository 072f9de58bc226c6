"""The docs keep up with the code: every config key and every gateway method is documented."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import attrs

from shoal.protocols.config import SwarmConfig

ROOT = Path(__file__).resolve().parent.parent


def _keys(cls: type, prefix: str = "") -> Iterator[str]:
    for field in attrs.fields(cls):
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        if attrs.has(type(default)):
            yield from _keys(type(default), f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}"


def test_every_config_key_is_in_configuration_md() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    spans = re.findall(r"`([^`]+)`", text)

    def documented(key: str) -> bool:
        last = key.rsplit(".", 1)[-1]
        return any(re.search(rf"(^|[.\s/\[]){re.escape(last)}\b", span) for span in spans)

    missing = [key for key in _keys(SwarmConfig) if not documented(key)]
    assert not missing, f"undocumented config keys: {missing}"


def test_every_gateway_method_is_in_protocol_md() -> None:
    from shoal.protocols.api import METHODS

    text = (ROOT / "docs" / "protocol.md").read_text()
    missing = [name for name in METHODS if name not in text]
    assert not missing, f"undocumented methods: {missing}"


def test_the_example_config_loads() -> None:
    from shoal.protocols.config import load_config

    config = load_config(ROOT / "examples" / "shoal.toml")
    assert config.models.weights == {"haiku": 0.3, "sonnet": 0.5, "opus": 0.2}
    assert "my-shell" in config.workers.profiles


def test_every_toml_block_in_the_readme_loads(tmp_path: Path) -> None:
    """The README's configuration examples are what a new user pastes: each must be a valid config."""
    from shoal.protocols.config import load_config

    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        path = tmp_path / f"readme-{i}.toml"
        path.write_text(block)
        load_config(path)  # raises ValidationError naming the key and line when one is wrong
