"""What the deploy tests read: the paths of deploy/, its YAML documents and the Dockerfile parsed
into instructions (ARG defaults, ENV, apt and pip installs)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
IMAGE_ROOT = "/home/ray/jntk_dist"  # WORKDIR of deploy/Dockerfile


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def is_cuda_image(image: str) -> bool:
    return bool(re.search(r":[^:]*-cu\d+$", image))


def dockerfile() -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(ARG defaults, [(instruction, argument)]) with line continuations joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, arg = line.partition(" ")
            steps.append((op.upper(), arg.strip()))
    args = {}
    for op, arg in steps:
        if op == "ARG" and "=" in arg:
            k, v = arg.split("=", 1)
            args[k] = v
    return args, steps


def dockerfile_env(steps: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for op, arg in steps:
        if op == "ENV":
            for word in shlex.split(arg):
                k, _, v = word.partition("=")
                env[k] = v
    return env


def apt_packages(steps: list[tuple[str, str]]) -> set[str]:
    out = set()
    for op, arg in steps:
        if op == "RUN":
            for part in arg.split("&&"):
                words = part.split()
                if "apt-get" in words and "install" in words:
                    out |= {w for w in words[words.index("install") + 1:] if not w.startswith("-")}
    return out


def image_requirements() -> list[str]:
    """What the Dockerfile's dependency layer installs: its own one-liner, run on pyproject.toml."""
    _, steps = dockerfile()
    run = next(a for op, a in steps if op == "RUN" and "tomllib" in a)
    words = shlex.split(run)
    code = words[words.index("-c") + 1]
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    return out.split()

