"""The rooms of the package import only downward: `lint-imports` keeps the layers contract of
pyproject.toml (CI runs it through this test), and the contract names every room."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_lint_imports_keeps_the_layers_contract() -> None:
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c",
                                           "from importlinter.cli import lint_imports_command; "
                                           "lint_imports_command()"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rooms import only downward KEPT" in proc.stdout


def test_every_room_is_in_the_contract() -> None:
    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = contract["contracts"][0]["layers"]
    named = {room.strip() for layer in layers for room in layer.split("|")}
    rooms = {p.name for p in (REPO / "jntk_dist").iterdir()
             if p.is_dir() and (p / "__init__.py").exists()}
    assert rooms <= named, f"rooms missing from the layers contract: {rooms - named}"
