"""The README's `python3 examples/demo.py`, run as written: by a Python that has no Shoal installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent


def python_without_shoal() -> str | None:
    """A Python interpreter outside the virtualenv (the one a user types `python3` for)."""
    candidates = [
        os.path.join(sys.base_prefix, "bin", "python3"),
        shutil.which("python3", path=os.defpath),
        "/usr/bin/python3",
    ]
    for candidate in candidates:
        if not candidate or not os.path.exists(candidate):
            continue
        probe = subprocess.run([candidate, "-c", "import trio"], capture_output=True, check=False)
        if probe.returncode != 0:
            return candidate
    return None


@pytest.mark.slow
async def test_demo_runs_from_a_python_without_shoal() -> None:
    python = python_without_shoal()
    if python is None:
        pytest.skip("every python3 here has trio installed")
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv in this checkout (the demo would create one, over the network)")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "SHOAL_VENV")}
    with trio.fail_after(180):
        done = await trio.run_process(
            [python, "examples/demo.py"],
            cwd=ROOT,
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, err[-3000:]
    assert "ModuleNotFoundError" not in err
    assert "release done" in out and "running again on" in out  # the whole tour ran
    assert "'done': 18" in out
