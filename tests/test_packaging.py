"""Packaging: the build must not warn (users see the warnings on every install)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent


def test_license_is_an_spdx_string_and_the_backend_accepts_it() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"  # a table is deprecated by setuptools >= 77
    # the SPDX string needs setuptools 77 (PEP 639): an older floor would let a build fail
    assert "setuptools>=77" in meta["build-system"]["requires"]


@pytest.mark.slow
async def test_building_the_wheel_prints_no_setuptools_warning(tmp_path: Path) -> None:
    """A real isolated build, as `pip install` does it, from the tracked files."""
    listed = await trio.run_process(["git", "ls-files", "-z"], cwd=ROOT, capture_stdout=True, check=False)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    src = tmp_path / "src"
    for name in listed.stdout.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    with trio.fail_after(600):
        built = await trio.run_process(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "-v",
                "-w",
                str(tmp_path / "wheel"),
                str(src),
            ],
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
        )
    out = built.stdout.decode(errors="replace")
    if built.returncode != 0 and "setuptools" in out and "No matching distribution" in out:
        pytest.skip("no package index to fetch setuptools from")
    assert built.returncode == 0, out[-3000:]
    assert "BuildBackendWarning" not in out and "SetuptoolsDeprecationWarning" not in out, out[-3000:]
    assert list((tmp_path / "wheel").glob("shoal-*.whl"))
